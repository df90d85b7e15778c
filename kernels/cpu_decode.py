"""CPU kernels for bf16 decode steps, in C (kernels/csrc/):

- `gemv_bf16`: y = x W^T + b for 1..8 rows of x (gemv_bf16.c): streams the weights faster
  than torch's bf16 matmul on CPUs without native bf16, and for one or two rows on those with
  it (AMX or AVX-512 BF16, where it runs on AVX-512 BF16 dot products and oneDNN's products
  win from 3 rows on, from 2 on packed weights: `usable()` says);
- `rope_attend_bf16`: one row's RoPE + KV-cache write + grouped-query attention at one new
  position (attention_bf16.c): one call per row instead of ~30 tiny torch ops per layer;
- `pack` / `packed_linear`: on a CPU with AMX, oneDNN's bf16 product on weights packed once
  into its blocked layout (torch's own product repacks them on every call): for a decode
  step of 2 or more rows and a prefill (`packing()` says where).

The sources are compiled on first use with the system's C compiler into a per-user cache and
loaded with ctypes; where that cannot happen (no compiler, no AVX2/FMA, or REALTIME_TORCH_ONLY
set) `available()` is False and callers use torch. The library shares torch's OpenMP runtime
(it links libgomp.so.1 by soname, which torch has already loaded), so torch.set_num_threads
governs both.
"""

import ctypes
import hashlib
import os
import shutil
import subprocess
from functools import cache
from pathlib import Path

import torch
import torch.nn.functional as F

from kernels import TORCH_ONLY_ENV, torch_only  # noqa: F401 (TORCH_ONLY_ENV: re-exported)

SOURCES = [Path(__file__).parent / "csrc" / name for name in ("gemv_bf16.c", "attention_bf16.c")]
HEADER = Path(__file__).parent / "csrc" / "bf16.h"  # included by both
CFLAGS = ("-O3", "-mavx2", "-mfma", "-fopenmp", "-shared", "-fPIC")
# The most rows gemv_bf16 takes on a CPU with native bf16, on its AVX-512 BF16 path and
# without it: on a Xeon with AMX, torch's product is the faster from the next row on, at the
# released shapes (benchmarks/kernels/cpu_decode.py times both).
DPBF16_ROWS = 2
NATIVE_BF16_ROWS = 1
# The rows oneDNN lays packed weights out for: packed for 4, a decode step's products of 1..8
# rows run as fast as packed for 1, and a prefill's faster.
PACK_ROWS = 4


def gemv_bf16_ref(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None):
    """The torch computation this kernel replaces."""
    return F.linear(x, weight, bias)


def available() -> bool:
    return _library() is not None


def max_rows() -> int:
    return _max_rows()


def gemv_bf16(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None):
    """x (..., K) bf16 with at most max_rows() rows, weight (N, K) bf16, bias (N,) bf16 or None
    -> (..., N) bf16. Contiguous CPU tensors only. (Called ~100 times a decode step: lean.)"""
    k, n = x.shape[-1], weight.shape[0]
    rows = x.numel() // k
    x = x.contiguous()
    out = torch.empty(*x.shape[:-1], n, dtype=torch.bfloat16)
    b = None if bias is None else bias.data_ptr()
    status = _loaded().gemv_bf16(weight.data_ptr(), x.data_ptr(), b, out.data_ptr(), rows, n, k)
    if status != 0:
        raise ValueError(f"gemv_bf16 takes 1..{max_rows()} rows, got {rows} (status {status})")
    return out


def usable(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether gemv_bf16 should take this product (else use torch): it can, and it is the
    faster for this many rows on this CPU."""
    most = _max_rows()
    if native_bf16():
        most = min(DPBF16_ROWS if dpbf16() else NATIVE_BF16_ROWS, most)
    return (
        x.dtype == torch.bfloat16 == weight.dtype
        and x.device.type == "cpu" == weight.device.type  # C reads both through host pointers
        and x.numel() // x.shape[-1] <= most
        and weight.is_contiguous()
    )


def dpbf16() -> bool:
    """Whether gemv_bf16 runs on this CPU's AVX-512 BF16 dot products (vdpbf16ps): the CPU has
    them and the compiler built that path. It then beats torch's bf16 products at every row
    count it takes."""
    lib = _library()
    return lib is not None and lib.gemv_bf16_use_dpbf16(-1) == 1


def use_dpbf16(on: bool) -> bool:
    """Take the AVX-512 BF16 path (where dpbf16() could) or the AVX2 one; returns whether the
    first is taken now. On by default; tests and benchmarks switch it to compare the two."""
    lib = _library()
    return lib is not None and lib.gemv_bf16_use_dpbf16(int(on and _avx512_bf16())) == 1


def _avx512_bf16() -> bool:
    return _cpu_probe("_is_avx512_bf16_supported")


def _cpu_probe(name: str) -> bool:
    """One of torch.cpu's private CPU feature probes; False where this torch lacks it."""
    return getattr(torch.cpu, name, lambda: False)()


@cache
def native_bf16() -> bool:
    """Whether this CPU multiplies bf16 itself (AMX tiles or AVX-512 BF16 dot products), so that
    torch's bf16 products (oneDNN) are fast: faster than an fp32 upcast for a prefill's rows,
    and than our GEMV beyond the rows `usable()` gives it. (torch.cpu's probes are private: a torch
    without them counts as a CPU without native bf16, the old behaviour.)"""
    return _cpu_probe("_is_amx_tile_supported") or _avx512_bf16()


@cache
def packing() -> bool:
    """Whether products of a few rows and more run faster on weights packed for oneDNN here:
    on a CPU with AMX, with torch's (private) packing ops present and working."""
    if torch_only() or not _cpu_probe("_is_amx_tile_supported"):
        return False
    try:
        weight, x = torch.randn(48, 32).bfloat16(), torch.randn(3, 32).bfloat16()
        return torch.equal(packed_linear(x, pack(weight)), F.linear(x, weight))
    except (AttributeError, RuntimeError, TypeError):  # no such op here, or not this schema
        return False


def pack(weight: torch.Tensor) -> torch.Tensor:
    """(N, K) bf16 CPU weights -> oneDNN's blocked copy of them, for `packed_linear`."""
    return torch.ops.mkldnn._reorder_linear_weight(weight, PACK_ROWS)


def packed_linear(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None = None):
    """x (..., K) bf16 times weights packed by `pack` (+ bias (N,) bf16) -> (..., N) bf16."""
    rows = x.reshape(-1, x.shape[-1])
    out = torch.ops.mkldnn._linear_pointwise(rows, packed, bias, "none", [], "")
    return out.view(*x.shape[:-1], -1)


def rope_attend_bf16_ref(qkv, cos, sin, k_cache, v_cache, pos: int, q_per_kv: int):
    """The model's torch computation for one row at one position: qkv (groups*(q_per_kv+2)*hs,)
    bf16, cos/sin (hs,) fp32, k_cache/v_cache (groups, max_seq, hs) bf16 (written at pos)
    -> (groups*q_per_kv*hs,) bf16."""
    groups, _, hs = k_cache.shape
    heads = qkv.view(groups, q_per_kv + 2, hs)
    qk = heads[:, : q_per_kv + 1]
    half = hs // 2
    rotated = torch.cat((-qk[..., half:], qk[..., :half]), dim=-1)
    qk = (qk * cos + rotated * sin).to(qkv.dtype)  # rotate-half RoPE in fp32, rounded once
    k_cache[:, pos], v_cache[:, pos] = qk[:, q_per_kv], heads[:, q_per_kv + 1]
    q = qk[:, :q_per_kv].float()  # (groups, q_per_kv, hs)
    scores = (q @ k_cache[:, : pos + 1].float().transpose(-1, -2)) * hs**-0.5
    out = torch.softmax(scores, dim=-1) @ v_cache[:, : pos + 1].float()
    return out.to(qkv.dtype).reshape(-1)


def rope_attend_bf16(qkv, cos, sin, k_cache, v_cache, pos: int, q_per_kv: int):
    """`rope_attend_bf16_ref` in one C call; same arguments, contiguous CPU tensors."""
    groups, max_seq, hs = k_cache.shape
    out = torch.empty(groups * q_per_kv * hs, dtype=torch.bfloat16)
    status = _loaded().rope_attend_bf16(
        qkv.data_ptr(), cos.data_ptr(), sin.data_ptr(), k_cache.data_ptr(), v_cache.data_ptr(),
        max_seq, pos, groups, q_per_kv, hs, out.data_ptr(),
    )  # fmt: skip
    if status != 0:
        raise ValueError(f"rope_attend_bf16 cannot take head size {hs} at position {pos}")
    return out


@cache
def _max_rows() -> int:
    lib = _library()
    return lib.gemv_bf16_max_rows() if lib is not None else 0


def _loaded() -> ctypes.CDLL:
    """The library, where the caller has checked that it is there (`available`, `usable`)."""
    lib = _library()
    assert lib is not None, "the CPU kernels are not available here (cpu_decode.available())"
    return lib


@cache
def _library() -> ctypes.CDLL | None:
    if torch_only():
        return None
    if torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"):
        return None
    try:
        lib = ctypes.CDLL(str(_build()))
    except (OSError, subprocess.CalledProcessError, FileNotFoundError):
        return None
    ptr, i64 = ctypes.c_void_p, ctypes.c_int64
    lib.gemv_bf16.argtypes = [ptr, ptr, ptr, ptr, i64, i64, i64]
    lib.gemv_bf16.restype = ctypes.c_int
    lib.gemv_bf16_max_rows.restype = ctypes.c_int
    lib.gemv_bf16_use_dpbf16.argtypes = [ctypes.c_int]
    lib.gemv_bf16_use_dpbf16.restype = ctypes.c_int
    lib.gemv_bf16_use_dpbf16(int(_avx512_bf16()))
    lib.rope_attend_bf16.argtypes = [ptr] * 5 + [i64] * 5 + [ptr]
    lib.rope_attend_bf16.restype = ctypes.c_int
    return lib


def _build() -> Path:
    """Compile the source once per content hash into the user's cache."""
    source = b"".join(path.read_bytes() for path in (*SOURCES, HEADER))
    digest = hashlib.sha256(source + " ".join(CFLAGS).encode()).hexdigest()[:16]
    cache_dir = Path(os.getenv("XDG_CACHE_HOME", Path.home() / ".cache")) / "realtime"
    target = cache_dir / f"cpu_decode-{digest}.so"
    if target.is_file():
        return target
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise FileNotFoundError("no C compiler")
    cache_dir.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(f".{os.getpid()}.tmp")
    command = [compiler, *CFLAGS, *map(str, SOURCES), "-o", str(partial), "-lm"]
    subprocess.run(command, check=True, capture_output=True)
    partial.replace(target)  # atomic: concurrent first uses never load half a file
    return target

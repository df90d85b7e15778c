"""bf16 GEMV for CPU decode steps: y = x W^T + b for 1..8 rows of x (kernels/csrc/gemv_bf16.c).

The C source is compiled on first use with the system's C compiler into a per-user cache and
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

SOURCE = Path(__file__).parent / "csrc" / "gemv_bf16.c"
CFLAGS = ("-O3", "-mavx2", "-mfma", "-fopenmp", "-shared", "-fPIC")
TORCH_ONLY_ENV = "REALTIME_TORCH_ONLY"  # set to 1: never use our kernels


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
    status = _library().gemv_bf16(weight.data_ptr(), x.data_ptr(), b, out.data_ptr(), rows, n, k)
    if status != 0:
        raise ValueError(f"gemv_bf16 takes 1..{max_rows()} rows, got {rows} (status {status})")
    return out


def usable(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether gemv_bf16 can take this product (else use torch)."""
    return (
        x.dtype == torch.bfloat16 == weight.dtype
        and x.device.type == "cpu"
        and x.numel() // x.shape[-1] <= _max_rows()
        and weight.is_contiguous()
    )


@cache
def _max_rows() -> int:
    lib = _library()
    return lib.gemv_bf16_max_rows() if lib is not None else 0


@cache
def _library() -> ctypes.CDLL | None:
    if os.environ.get(TORCH_ONLY_ENV, "0") not in ("", "0"):
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
    return lib


def _build() -> Path:
    """Compile the source once per content hash into the user's cache."""
    source = SOURCE.read_bytes()
    digest = hashlib.sha256(source + " ".join(CFLAGS).encode()).hexdigest()[:16]
    cache_dir = Path(os.getenv("XDG_CACHE_HOME", Path.home() / ".cache")) / "realtime"
    target = cache_dir / f"gemv_bf16-{digest}.so"
    if target.is_file():
        return target
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise FileNotFoundError("no C compiler")
    cache_dir.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(f".{os.getpid()}.tmp")
    subprocess.run(
        [compiler, *CFLAGS, str(SOURCE), "-o", str(partial)], check=True, capture_output=True
    )
    partial.replace(target)  # atomic: concurrent first uses never load half a file
    return target

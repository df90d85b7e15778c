"""What the Triton decode kernels share: when a launcher runs its kernel, how it launches it,
and exact rounding.

A launcher runs its kernel for CUDA tensors, or for any tensors under Triton's interpreter
(TRITON_INTERPRET=1, how the tests run on a CPU); otherwise it returns its torch reference, so
the model keeps working on a machine without a GPU (REALTIME_TORCH_ONLY=1 forces that).

Within `dependent_launches()` (sm_90 and later) every launcher launches its kernel as a
programmatic dependent of the launch before it (PDL): the GPU starts its programs while that
launch's last programs still run, instead of after the whole grid has drained. Each kernel
begins with `handoff(PDL)`, which waits for the earlier launch's writes before anything reads
them and then lets the next launch start in turn; what a kernel does before it must not read
anything an earlier launch writes (gemv prefetches its weights into L2 there). The decode step
is a chain of 125 to 221 short launches, so what each costs around its own work counts.

`compile_ahead(run)` compiles every kernel variant that `run` launches, many at once on
threads, and launches none: what an engine does before its first step on a GPU, where the
step's variants (25 to 31 for a 64-row engine, by products) would otherwise compile one after
another at their first launches.
"""

import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from contextvars import ContextVar

import torch
import triton
import triton.language as tl

from kernels import torch_only

_dependent: ContextVar[bool] = ContextVar("dependent_launches", default=False)
_compiling_only: ContextVar[bool] = ContextVar("compiling_only", default=False)
_ahead = threading.RLock()  # one compile_ahead at a time: it patches Triton's launch method


def interpreting() -> bool:
    """Whether Triton runs kernels in its (CPU, numpy) interpreter."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def interpreter_problem() -> str | None:
    """Why Triton's interpreter cannot run our kernels beside this numpy, or None (also when
    not interpreting): before 3.7 it turns one-element arrays into ints, which numpy 2.4
    refuses, so a kernel whose loop runs to a loaded bound fails deep inside with "only
    0-dimensional arrays can be converted to Python scalars" (triton-lang/triton#9171)."""
    import numpy
    from torch.torch_version import TorchVersion  # (a version that compares as one)

    old_triton = TorchVersion(triton.__version__) < "3.7"
    if interpreting() and old_triton and TorchVersion(numpy.__version__) >= "2.4":
        return (
            f"Triton {triton.__version__}'s interpreter cannot run with numpy {numpy.__version__}"
            ": install numpy<2.4 or triton>=3.7 to run the kernels on a CPU"
        )
    return None


def runs_kernel(*tensors: torch.Tensor) -> bool:
    """Whether a launcher given these tensors runs its Triton kernel (else its torch reference)."""
    if torch_only():
        return False
    return interpreting() or all(t.is_cuda for t in tensors)


@contextmanager
def dependent_launches(enabled: bool = True) -> Iterator[None]:
    """Launch the kernels run within as programmatic dependents (see above); a no-op when not
    `enabled` and under the interpreter (which runs one program at a time anyway). Needs a GPU
    of compute capability 9.0 or later: `supports_dependent_launches()`."""
    token = _dependent.set(enabled and not interpreting())
    try:
        yield
    finally:
        _dependent.reset(token)


def launch_options() -> dict:
    """A launcher's keywords for its kernel: the PDL constexpr every kernel takes, and whether
    Triton launches it as a programmatic dependent."""
    pdl = _dependent.get()
    return {"PDL": pdl, "launch_pdl": pdl}


def supports_dependent_launches(device: torch.device) -> bool:
    """Whether `device` can launch programmatic dependents (a CUDA GPU of sm_90 or later)."""
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= (9, 0)


def compile_ahead(
    run: Callable[[], object], workers: int | None = None, ignore_errors: bool = False
) -> int:
    """Compile every Triton kernel variant that `run()` launches, `workers` at a time (default:
    one per CPU this process may use, at most 16), and launch none of them -> how many variants
    there were (compiled, or found in Triton's cache on disk). Afterwards launches of those
    variants find them compiled.

    Within `run`, a launch only hands its kernel to Triton's background compile
    (triton.AsyncCompileMode, Triton 3.5 and later) and returns: the kernels neither read nor
    write their tensors, so `run` must not depend on what they write (the decode step reads
    nothing back), while torch ops in it still run. Triton's compiler leaves the GIL for most
    of its work, so the threads compile side by side, one variant per CPU.
    Launches from other threads meanwhile run as usual. Returns 0 without calling `run` where
    nothing would compile ahead: under the interpreter, with REALTIME_TORCH_ONLY, or with an
    older Triton (whose kernels compile at their first launch, one at a time).
    A variant that fails to compile raises here, unless `ignore_errors` (then it is left to
    compile, and fail, at its first launch: a sweep over launch shapes catches it there).
    """
    background = getattr(triton, "AsyncCompileMode", None)
    if background is None or interpreting() or torch_only():
        return 0
    from triton.runtime.jit import JITFunction

    if workers is None:
        workers = min(16, len(os.sched_getaffinity(0)))
    with _ahead, _CountingPool(workers, thread_name_prefix="triton-compile") as pool:
        launch = JITFunction.run

        def compile_only(self, *args, grid, warmup, **kwargs):
            return launch(self, *args, grid=grid, warmup=warmup or _compiling_only.get(), **kwargs)

        JITFunction.run = compile_only
        token = _compiling_only.set(True)
        try:
            # leaving waits for every compile, and files each kernel where launches find it
            with background(pool, ignore_errors=ignore_errors):
                run()
        finally:
            _compiling_only.reset(token)
            JITFunction.run = launch
    return pool.submitted


class _CountingPool(ThreadPoolExecutor):
    """A thread pool that counts what it was given (Triton submits each variant once)."""

    submitted = 0

    def submit(self, fn, /, *args, **kwargs):
        self.submitted += 1
        return super().submit(fn, *args, **kwargs)


@triton.jit
def handoff(PDL: tl.constexpr):
    """A kernel's first step when launched as a programmatic dependent: wait until the launch
    before it has finished and its writes are visible, then let the launch after it start its
    programs (which wait here in turn, so each launch runs at most one ahead)."""
    if PDL:  # PTX of our own: Triton's gdc_wait() does not compile in its 3.4 release
        tl.inline_asm_elementwise(
            "griddepcontrol.wait; griddepcontrol.launch_dependents; mov.u32 $0, 0;",
            "=r", [], dtype=tl.int32, is_pure=False, pack=1,
        )  # fmt: skip


@triton.jit
def prefetch_l2(ptrs, mask):
    """Ask L2 to fetch the lines holding `ptrs` where `mask`, without waiting for them (PTX
    prefetch.global.L2, one per element: point at one element of each 128-byte line)."""
    tl.inline_asm_elementwise(
        "{ .reg .pred p; setp.ne.b32 p, $1, 0; @p prefetch.global.L2 [$2]; mov.u32 $0, 0; }",
        "=r,r,l", [mask.to(tl.int32), ptrs], dtype=tl.int32, is_pure=False, pack=1,
    )  # fmt: skip


@triton.jit
def round_to(x, DTYPE: tl.constexpr):
    """fp32 x rounded to DTYPE (round to nearest, ties to even) and returned as fp32.

    The model rounds to its dtype between some ops; doing the same keeps a kernel bit-equal to
    it. bf16 is rounded with integer ops because the interpreter's float-to-bf16 conversion
    truncates; the result is exact in bf16, so a later `.to(DTYPE)` is exact in any mode.
    (Not for NaN or subnormal inputs.)
    """
    if DTYPE == tl.bfloat16:
        bits = x.to(tl.uint32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
        y = bits.to(tl.float32, bitcast=True)
    else:
        y = x.to(DTYPE).to(tl.float32)
    return y


@triton.jit
def load_total(ptr, offs, mask, stride_split, SPLITS: tl.constexpr, DTYPE: tl.constexpr):
    """A product's values at offs, fp32: the sum of its SPLITS slices (stride_split apart; one
    for a plain tensor) rounded to DTYPE, as kernels/splits.py's SplitSums defines them."""
    x = tl.load(ptr + offs, mask=mask, other=0.0).to(tl.float32)
    for i in tl.static_range(1, SPLITS):
        x += tl.load(ptr + i * stride_split + offs, mask=mask, other=0.0).to(tl.float32)
    return round_to(x, DTYPE)


def dot_dtype(dtype: torch.dtype) -> tl.dtype:
    """Operand dtype for a kernel's tl.dot: the model's 16-bit dtype on a GPU (its products are
    exact in the fp32 accumulator, on tensor cores), fp32 for fp32 inputs and under the
    interpreter, which miscomputes on raw bf16 values."""
    if interpreting() or dtype == torch.float32:
        return tl.float32
    return {torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}[dtype]

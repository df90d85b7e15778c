"""What the Triton decode kernels share: when a launcher runs its kernel, and exact rounding.

A launcher runs its kernel for CUDA tensors, or for any tensors under Triton's interpreter
(TRITON_INTERPRET=1, how the tests run on a CPU); otherwise it returns its torch reference, so
the model keeps working on a machine without a GPU (REALTIME_TORCH_ONLY=1 forces that).
"""

import os

import torch
import triton
import triton.language as tl

from kernels import torch_only


def interpreting() -> bool:
    """Whether Triton runs kernels in its (CPU, numpy) interpreter."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def runs_kernel(*tensors: torch.Tensor) -> bool:
    """Whether a launcher given these tensors runs its Triton kernel (else its torch reference)."""
    if torch_only():
        return False
    return interpreting() or all(t.is_cuda for t in tensors)


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
    for a plain tensor) rounded to DTYPE, as kernels/gemv.py's SplitSums defines them."""
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

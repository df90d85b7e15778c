"""Residual add fused with RMSNorm (the model's RMSNorm after a block's `+ x`).

    s = x + r                                   (in the model dtype: the new residual)
    y = (s * rsqrt(mean(s^2) + eps)).to(dtype) * weight

The normalisation runs in fp32; the result is cast to the model dtype before the weight
multiplies it, in the model's order. Without `r` it is the plain RMSNorm (layer 0's norm_1).
x may be a product left in slices over K (kernels/splits.py's SplitSums): its slices are summed
and rounded to the model dtype as they are loaded, so the product needs no launch to reduce.
One program per row with the whole row in registers (BLOCK_C = next power of 2 of C; 1024 for
n_embd 896): one read of x and r, one write of s and y.
"""

import torch
import triton
import triton.language as tl

from kernels.splits import SplitSums
from kernels.triton_support import handoff, launch_options, round_to, runs_kernel


@triton.jit
def _add_rmsnorm_kernel(
    x_ptr, r_ptr, w_ptr, y_ptr, s_ptr,
    C, eps,
    stride_x_split, stride_x_row, stride_r_row, stride_y_row, stride_s_row,
    X_SPLITS: tl.constexpr, SUMMED: tl.constexpr, HAS_RESIDUAL: tl.constexpr, BLOCK_C: tl.constexpr,
    PDL: tl.constexpr,
):  # fmt: skip
    handoff(PDL)
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK_C)
    in_row = cols < C
    dtype = y_ptr.dtype.element_ty
    s = tl.load(x_ptr + row * stride_x_row + cols, mask=in_row, other=0.0).to(tl.float32)
    for i in tl.static_range(1, X_SPLITS):  # a product's slices, in order
        s += tl.load(x_ptr + i * stride_x_split + row * stride_x_row + cols, mask=in_row, other=0.0)
    if SUMMED:  # fp32 slices: the product is their sum in the model dtype
        s = round_to(s, dtype)
        if not HAS_RESIDUAL:
            tl.store(s_ptr + row * stride_s_row + cols, s.to(dtype), mask=in_row)
    if HAS_RESIDUAL:
        r = tl.load(r_ptr + row * stride_r_row + cols, mask=in_row, other=0.0).to(tl.float32)
        s = round_to(s + r, dtype)  # the residual stream is kept in the model dtype
        tl.store(s_ptr + row * stride_s_row + cols, s.to(dtype), mask=in_row)
    rstd = tl.math.rsqrt(tl.sum(s * s, axis=0) / C + eps)
    w = tl.load(w_ptr + cols, mask=in_row, other=0.0).to(tl.float32)
    y = round_to(round_to(s * rstd, dtype) * w, dtype)
    tl.store(y_ptr + row * stride_y_row + cols, y.to(dtype), mask=in_row)


def add_rmsnorm(
    x: torch.Tensor | SplitSums,
    residual: torch.Tensor | None,
    weight: torch.Tensor,
    eps: float,
    out: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """x, residual (..., C), weight (C,) -> (rmsnorm(x + residual) * weight, x + residual).
    With residual None: (rmsnorm(x) * weight, x). x may be SplitSums of shape (N, C). `out`
    (N, C): where the first is written (e.g. a CUDA graph's output buffer)."""
    if not runs_kernel(weight):
        y, s = add_rmsnorm_ref(x, residual, weight, eps)
        return (y if out is None else out.copy_(y)), s
    C, dtype = x.shape[-1], weight.dtype
    parts = x.parts if isinstance(x, SplitSums) else x.reshape(1, -1, C)  # (X_SPLITS, N, C)
    assert parts.stride(2) == 1 and weight.is_contiguous()
    assert isinstance(x, SplitSums) or x.dtype == dtype
    if out is None:
        y = torch.empty(parts.shape[1:], device=weight.device, dtype=dtype)
    else:
        assert out.shape == parts.shape[1:] and out.dtype == dtype and out.stride(1) == 1
        y = out
    has_residual = residual is not None
    if residual is not None:
        r2 = residual.reshape(-1, C)
        assert r2.stride(1) == 1
        s = torch.empty(y.shape, device=y.device, dtype=dtype)
    elif isinstance(x, SplitSums):  # the kernel writes the rounded sum
        r2 = s = torch.empty(y.shape, device=y.device, dtype=dtype)
    else:  # never touched: HAS_RESIDUAL=False compiles the load and store away
        r2 = s = parts[0]
    _add_rmsnorm_kernel[(parts.shape[1],)](
        parts, r2, weight, y, s,
        C, eps,
        parts.stride(0), parts.stride(1), r2.stride(0), y.stride(0), s.stride(0),
        X_SPLITS=parts.shape[0], SUMMED=isinstance(x, SplitSums), HAS_RESIDUAL=has_residual,
        BLOCK_C=triton.next_power_of_2(C),
        num_warps=4 if C <= 2048 else 8,
        **launch_options(),
    )  # fmt: skip
    return (y if out is not None else y.view(x.shape)), s.view(x.shape)


def add_rmsnorm_ref(
    x: torch.Tensor | SplitSums, residual: torch.Tensor | None, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The torch computation: Block's `+ x`, then RMSNorm.forward."""
    x = x.total() if isinstance(x, SplitSums) else x
    s = x if residual is None else x + residual
    sf = s.float()
    sf = sf * torch.rsqrt(torch.mean(sf * sf, dim=-1, keepdim=True) + eps)
    return sf.to(s.dtype) * weight, s

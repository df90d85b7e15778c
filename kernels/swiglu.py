"""SwiGLU's gate on the fused fc_1/fc_2 product (the model's SwiGLU after fuse()).

    x = [a | b]  (N, 2 I): a = fc_1 x (gate), b = fc_2 x (up)
    y = silu(a) * b,  silu(a) = a / (1 + exp(-a))   -> (N, I)

silu runs in fp32 and is rounded to the model dtype before the product, as torch's F.silu(a) * b
in the model dtype does. Grid (N, cdiv(I, BLOCK)): an elementwise op, one read of each half and
one write.
"""

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from kernels.triton_support import handoff, launch_options, round_to, runs_kernel

BLOCK = 1024


@triton.jit
def _swiglu_kernel(
    x_ptr, y_ptr,
    n_hidden,
    stride_x_row, stride_y_row,
    BLOCK: tl.constexpr, PDL: tl.constexpr,
):  # fmt: skip
    handoff(PDL)
    row = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    in_row = cols < n_hidden
    dtype = y_ptr.dtype.element_ty
    a = tl.load(x_ptr + row * stride_x_row + cols, mask=in_row, other=0.0).to(tl.float32)
    b = tl.load(x_ptr + row * stride_x_row + n_hidden + cols, mask=in_row, other=0.0).to(tl.float32)
    gate = round_to(a / (1.0 + tl.exp(-a)), dtype)
    y = round_to(gate * b, dtype)
    tl.store(y_ptr + row * stride_y_row + cols, y.to(dtype), mask=in_row)


def swiglu(x: torch.Tensor) -> torch.Tensor:
    """x (..., 2 I) = [fc_1 x | fc_2 x] -> silu(first half) * second half (..., I)."""
    if not runs_kernel(x):
        return swiglu_ref(x)
    n_hidden = x.shape[-1] // 2
    x2 = x.reshape(-1, 2 * n_hidden)  # (N, 2 I)
    assert x2.stride(1) == 1
    y = torch.empty(x2.shape[0], n_hidden, device=x.device, dtype=x.dtype)
    _swiglu_kernel[(x2.shape[0], triton.cdiv(n_hidden, BLOCK))](
        x2, y, n_hidden, x2.stride(0), y.stride(0), BLOCK=BLOCK, **launch_options(),
    )  # fmt: skip
    return y.view(*x.shape[:-1], n_hidden)


def swiglu_ref(x: torch.Tensor) -> torch.Tensor:
    """The torch computation (SwiGLU.forward between its two products)."""
    gate, up = x.chunk(2, dim=-1)
    return F.silu(gate) * up

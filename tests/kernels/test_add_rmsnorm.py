"""kernels/add_rmsnorm.py against its torch reference, and the reference against the model's
residual add and RMSNorm."""

import pytest
import torch

pytest.importorskip("triton")

from kernels.add_rmsnorm import add_rmsnorm, add_rmsnorm_ref

EPS = 1e-6
# fp32: rsqrt and the sum's order differ by an ulp or two. bf16: the output may land one
# rounding step apart when the fp32 value sits near a rounding boundary; the residual sum is
# one rounded add in both and must be exact.
TOL = {
    torch.float32: dict(rtol=1e-5, atol=1e-5),
    torch.bfloat16: dict(rtol=2**-7, atol=1e-3),
}


def make_inputs(shape, dtype, device, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen).to(device, dtype)
    r = (3 * torch.randn(shape, generator=gen)).to(device, dtype)
    w = (1 + 0.1 * torch.randn(shape[-1], generator=gen)).to(device, dtype)
    return x, r, w


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(1, 64), (3, 100), (2, 3, 896), (5, 7)])
@pytest.mark.parametrize("with_residual", [True, False])
def test_matches_ref(device, dtype, shape, with_residual):
    x, r, w = make_inputs(shape, dtype, device, seed=sum(shape))
    r = r if with_residual else None
    y, s = add_rmsnorm(x, r, w, EPS)
    y_ref, s_ref = add_rmsnorm_ref(x, r, w, EPS)
    assert y.shape == s.shape == x.shape and y.dtype == s.dtype == dtype
    torch.testing.assert_close(s, s_ref, rtol=0, atol=0)
    torch.testing.assert_close(y, y_ref, **TOL[dtype])


def test_writes_into_out(device):
    """out=: the norm goes into the given rows of a larger buffer (as the step's hidden
    states do), from a product's slices; the rows after them are untouched."""
    from kernels.splits import SplitSums

    _, r, w = make_inputs((3, 100), torch.bfloat16, device, seed=4)
    parts = SplitSums(torch.randn(2, 3, 100, device=device), torch.bfloat16)
    buffer = torch.zeros(5, 100, device=device, dtype=torch.bfloat16)
    y, s = add_rmsnorm(parts, r, w, EPS, out=buffer[:3])
    y_ref, s_ref = add_rmsnorm_ref(parts, r, w, EPS)
    assert y.data_ptr() == buffer.data_ptr()
    torch.testing.assert_close(buffer[:3], y_ref, **TOL[torch.bfloat16])
    assert torch.equal(s, s_ref) and not buffer[3:].any()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_ref_is_the_model_norm(tiny_lm, dtype):
    block = tiny_lm(dtype).transformer.h[0]
    x, r, _ = make_inputs((3, 1, block.norm_2.weight.shape[0]), dtype, "cpu")
    y, s = add_rmsnorm_ref(x, r, block.norm_2.weight, block.norm_2.eps)
    assert torch.equal(s, x + r)  # Block.forward's `attn(...) + x`
    assert torch.equal(y, block.norm_2(x + r))
    y, s = add_rmsnorm_ref(x, None, block.norm_1.weight, block.norm_1.eps)
    assert s is x and torch.equal(y, block.norm_1(x))


@pytest.mark.gpu
def test_released_shapes_on_gpu():
    x, r, w = make_inputs((8, 896), torch.bfloat16, "cuda")
    y, s = add_rmsnorm(x, r, w, EPS)
    y_ref, s_ref = add_rmsnorm_ref(x, r, w, EPS)
    torch.testing.assert_close(s, s_ref, rtol=0, atol=0)
    torch.testing.assert_close(y, y_ref, **TOL[torch.bfloat16])

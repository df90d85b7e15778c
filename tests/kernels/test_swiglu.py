"""kernels/swiglu.py against its torch reference, and the reference against the model's MLP."""

import pytest
import torch

pytest.importorskip("triton")

from kernels.swiglu import swiglu, swiglu_ref

# fp32: exp differs by an ulp or two. bf16: one rounding step where silu's fp32 value sits on
# a rounding boundary.
TOL = {
    torch.float32: dict(rtol=1e-5, atol=1e-6),
    torch.bfloat16: dict(rtol=2**-7, atol=1e-3),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(1, 2 * 64), (3, 2 * 100), (2, 1, 2 * 4864), (5, 2 * 3)])
def test_matches_ref(device, dtype, shape):
    gen = torch.Generator().manual_seed(sum(shape))
    x = (4 * torch.randn(shape, generator=gen)).to(device, dtype)
    got = swiglu(x)
    assert got.shape == (*shape[:-1], shape[-1] // 2) and got.dtype == dtype
    torch.testing.assert_close(got, swiglu_ref(x), **TOL[dtype])


def test_takes_a_strided_row_view(device):
    x = torch.randn(3, 2 * 300, device=device)[:, None].expand(3, 2, -1)[:, 1]  # row stride 600
    torch.testing.assert_close(swiglu(x), swiglu_ref(x), **TOL[torch.float32])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_ref_is_the_model_mlp(tiny_lm, model_products, dtype):
    """From the model's own fused fc_1/fc_2 product, swiglu_ref gives the input of its
    projection bit for bit."""
    mlp = tiny_lm(dtype).transformer.h[0].mlp  # fused: fc_12 = [fc_1; fc_2]
    torch.manual_seed(1)
    mlp(torch.randn(3, 1, mlp.fc_1.weight.shape[1]).to(dtype))
    _, fc_12_out = model_products.of(mlp.fc_12)
    proj_in, _ = model_products.of(mlp.proj.weight)
    assert torch.equal(swiglu_ref(fc_12_out), proj_in)


@pytest.mark.gpu
def test_released_shapes_on_gpu():
    x = (4 * torch.randn(8, 2 * 4864, device="cuda")).bfloat16()
    torch.testing.assert_close(swiglu(x), swiglu_ref(x), **TOL[torch.bfloat16])

"""kernels/cpu_gemv.py against its torch reference over normal and odd shapes."""

import pytest
import torch

from kernels import cpu_gemv

pytestmark = pytest.mark.skipif(not cpu_gemv.available(), reason="no AVX2/FMA CPU or no C compiler")

SHAPES = [
    (1152, 896),  # the released model's fused qkv
    (9728, 896),  # fused fc_1/fc_2
    (896, 4864),  # mlp proj: long rows
    (4160 * 7, 896),  # the audio head
    (13, 24),  # fewer rows than a block, K not a multiple of 16
    (37, 100),  # ragged everything
    (8, 7),  # K shorter than one vector
]


@pytest.mark.parametrize("rows", [1, 2, 3, 5, 8])
@pytest.mark.parametrize(("n", "k"), SHAPES)
def test_matches_torch(rows, n, k):
    gen = torch.Generator().manual_seed(n * 131 + k + rows)
    x = torch.randn(rows, k, generator=gen).bfloat16()
    w = torch.randn(n, k, generator=gen).bfloat16()
    bias = torch.randn(n, generator=gen).bfloat16()
    for b in (None, bias):
        got = cpu_gemv.gemv_bf16(x, w, b)
        want = cpu_gemv.gemv_bf16_ref(x.float(), w.float(), None if b is None else b.float())
        assert got.dtype == torch.bfloat16 and got.shape == (rows, n)
        # fp32 accumulation in both; the only rounding that differs is the final bf16 one
        torch.testing.assert_close(got.float(), want, rtol=8e-3, atol=8e-3 * k**0.5)


def test_keeps_leading_dims_and_refuses_too_many_rows():
    x = torch.randn(2, 1, 64).bfloat16()
    w = torch.randn(32, 64).bfloat16()
    assert cpu_gemv.gemv_bf16(x, w).shape == (2, 1, 32)
    assert not cpu_gemv.usable(torch.randn(cpu_gemv.max_rows() + 1, 64).bfloat16(), w)
    assert not cpu_gemv.usable(torch.randn(1, 64), w.float())  # fp32 stays with torch


def test_torch_only_switch(monkeypatch):
    monkeypatch.setenv(cpu_gemv.TORCH_ONLY_ENV, "1")
    cpu_gemv._library.cache_clear(), cpu_gemv._max_rows.cache_clear()
    try:
        assert not cpu_gemv.available() and cpu_gemv.max_rows() == 0
    finally:
        monkeypatch.delenv(cpu_gemv.TORCH_ONLY_ENV)
        cpu_gemv._library.cache_clear(), cpu_gemv._max_rows.cache_clear()
    assert cpu_gemv.available()

"""kernels/embed_mean.py against its torch reference, and the reference against OmniLM.embed."""

import pytest
import torch

pytest.importorskip("triton")

from kernels.embed_mean import embed_mean, embed_mean_ref
from realtime.model import tokens

# Exact in both dtypes: the kernel rounds each partial sum to the table's dtype as the model's
# adds do, and / 8 is exact.
TOL = {torch.float32: dict(rtol=0, atol=0), torch.bfloat16: dict(rtol=0, atol=0)}


def make_inputs(B, T, C, vocab, dtype, device, seed=0):
    gen = torch.Generator().manual_seed(seed)
    table = torch.randn(vocab, C, generator=gen).to(device, dtype)
    ids = torch.randint(0, vocab, (B, T, tokens.STREAMS), generator=gen).to(device)
    audio = torch.randn(B, T, C, generator=gen).to(device, dtype)
    mask = (torch.rand(B, T, generator=gen) < 0.5).to(device)
    mask.view(-1)[0] = True  # at least one overwritten position
    return ids, table, audio, mask


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("B", "T", "C"), [(1, 1, 64), (3, 1, 100), (2, 5, 896), (3, 4, 7)])
@pytest.mark.parametrize("with_audio", [False, True])
def test_matches_ref(device, dtype, B, T, C, with_audio):
    ids, table, audio, mask = make_inputs(B, T, C, 300, dtype, device, seed=B * T * C)
    if not with_audio:
        audio = mask = None
    got = embed_mean(ids, table, audio, mask)
    assert got.shape == (B, T, C) and got.dtype == dtype
    torch.testing.assert_close(got, embed_mean_ref(ids, table, audio, mask), **TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_ref_is_the_model_embedding(tiny_lm, dtype):
    lm = tiny_lm(dtype)
    table = lm.transformer.wte.weight
    ids, _, audio, mask = make_inputs(2, 6, table.shape[1], table.shape[0], dtype, "cpu")
    assert torch.equal(embed_mean_ref(ids, table), lm.embed(ids))
    assert torch.equal(embed_mean_ref(ids, table, audio, mask), lm.embed(ids, audio, mask))


@pytest.mark.gpu
def test_released_shapes_on_gpu():
    B, C = 8, 896
    ids, table, audio, mask = make_inputs(B, 1, C, tokens.VOCAB_PADDED, torch.bfloat16, "cuda")
    torch.testing.assert_close(embed_mean(ids, table), embed_mean_ref(ids, table), rtol=0, atol=0)
    torch.testing.assert_close(
        embed_mean(ids, table, audio, mask), embed_mean_ref(ids, table, audio, mask), rtol=0, atol=0
    )

"""kernels/qkv_rope_cache.py against its torch reference, and the reference against the model's
attention (its cache writes for a multi-position forward)."""

import pytest
import torch

pytest.importorskip("triton")

from kernels.qkv_rope_cache import qkv_rope_cache, qkv_rope_cache_ref, rope_ref
from realtime.model.lm import apply_rope, rope_cache

# fp32: the GPU may fuse x*cos + r*sin into one FMA (an ulp). bf16: then one rounding step.
TOL = {
    torch.float32: dict(rtol=1e-6, atol=1e-6),
    torch.bfloat16: dict(rtol=2**-7, atol=1e-3),
}
MAX_SEQ = 40


def make_case(B, T, groups, q_per_kv, hs, dtype, device, seed=0):
    gen = torch.Generator().manual_seed(seed)
    slots_total = B + 2
    qkv = torch.randn(B, T, groups * (q_per_kv + 2) * hs, generator=gen).to(device, dtype)
    cos, sin = (t.to(device) for t in rope_cache(MAX_SEQ, hs, 10_000))
    start = torch.randint(0, MAX_SEQ - T + 1, (B, 1), generator=gen)
    positions = (start + torch.arange(T)).to(device)  # (B, T), each row somewhere else
    slots = torch.randperm(slots_total, generator=gen)[:B].to(device)
    cache = torch.randn(2, 3, slots_total, groups, MAX_SEQ, hs, generator=gen).to(device, dtype)
    return qkv, cos, sin, positions, slots, cache[0], cache[1]


CONFIGS = [  # (groups, q_per_kv, hs)
    (2, 7, 64),  # the released model's layout
    (2, 2, 16),  # the tiny preset's
    (1, 1, 32),  # one query per group: a 3-row tile padded to 4
    (3, 3, 8),  # odd group count, head narrower than tl.dot needs (no dot here)
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("groups", "q_per_kv", "hs"), CONFIGS)
@pytest.mark.parametrize(("B", "T"), [(1, 1), (3, 1), (2, 5)])
def test_matches_ref(device, dtype, groups, q_per_kv, hs, B, T):
    qkv, cos, sin, positions, slots, k, v = make_case(B, T, groups, q_per_kv, hs, dtype, device)
    k_ref, v_ref = k.clone(), v.clone()
    layer = 1
    q = qkv_rope_cache(qkv, cos, sin, positions, slots, k, v, layer)
    q_ref = qkv_rope_cache_ref(qkv, cos, sin, positions, slots, k_ref, v_ref, layer)
    assert q.shape == (B, groups * q_per_kv, T, hs) and q.dtype == dtype
    torch.testing.assert_close(q, q_ref, **TOL[dtype])
    torch.testing.assert_close(k, k_ref, **TOL[dtype])  # written rows, and nothing else
    torch.testing.assert_close(v, v_ref, rtol=0, atol=0)  # values are copied as they are


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rope_ref_is_the_model_s(dtype):
    """The reference's own RoPE rotates as the model's apply_rope, bit for bit."""
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(2, 3, 5, 16, generator=gen).to(dtype)  # (B, H, T, hs)
    cos, sin = rope_cache(MAX_SEQ, 16, 10_000)
    positions = torch.tensor([[0, 4, 9, 17, 39], [1, 2, 3, 5, 8]])
    cos_bt, sin_bt = cos[positions][:, None], sin[positions][:, None]  # (B, 1, T, hs)
    assert torch.equal(rope_ref(x, cos_bt, sin_bt), apply_rope(x, cos_bt, sin_bt))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_ref_writes_what_the_model_writes(tiny_lm, model_products, dtype):
    """A multi-position forward of the model's Attention: from its own qkv product, the
    reference writes the same cache, bit for bit."""
    lm = tiny_lm(dtype)
    torch.manual_seed(1)
    cfg, attn = lm.cfg, lm.transformer.h[1].attn
    B, T, layer = 2, 5, 1
    x = torch.randn(B, T, cfg.n_embd).to(dtype)
    positions = torch.tensor([[3, 4, 5, 6, 7], [0, 1, 2, 3, 4]])
    slots = torch.tensor([2, 0])
    cache = lm.new_cache(slots=3, max_seq=16)
    cache.k.normal_(), cache.v.normal_()
    k_ref, v_ref = cache.k.clone(), cache.v.clone()
    mask = (torch.arange(8)[None, None, :] <= positions[:, :, None])[:, None]  # as OmniLM.forward
    cos, sin = lm.cos[positions][:, None], lm.sin[positions][:, None]
    attn(x, cos, sin, cache, layer, slots, positions, mask)
    _, qkv = model_products.of(attn.attn.weight)
    qkv_rope_cache_ref(qkv, lm.cos, lm.sin, positions, slots, k_ref, v_ref, layer)
    assert torch.equal(cache.k, k_ref) and torch.equal(cache.v, v_ref)


@pytest.mark.gpu
def test_released_shapes_on_gpu():
    case = make_case(8, 1, 2, 7, 64, torch.bfloat16, "cuda")
    qkv, cos, sin, positions, slots, k, v = case
    k_ref, v_ref = k.clone(), v.clone()
    q = qkv_rope_cache(qkv, cos, sin, positions, slots, k, v, 1)
    q_ref = qkv_rope_cache_ref(qkv, cos, sin, positions, slots, k_ref, v_ref, 1)
    torch.testing.assert_close(q, q_ref, **TOL[torch.bfloat16])
    torch.testing.assert_close(k, k_ref, **TOL[torch.bfloat16])
    torch.testing.assert_close(v, v_ref, rtol=0, atol=0)

"""kernels/decode_attention.py against its torch reference, and the references of a decode
step's attention (qkv_rope_cache_ref, decode_attention_ref) against the model's Attention."""

import pytest
import torch

pytest.importorskip("triton")

from kernels.decode_attention import (
    decode_attention,
    decode_attention_qkv,
    decode_attention_qkv_ref,
    decode_attention_ref,
    split_len_for,
)
from kernels.qkv_rope_cache import qkv_rope_cache_ref
from realtime.model.lm import rope_cache

# fp32: another summation order. bf16: both compute in fp32 and round once at the end; on a GPU
# the kernel also rounds the softmax weights to bf16 for the tensor-core product.
TOL = {
    torch.float32: dict(rtol=1e-5, atol=1e-5),
    torch.bfloat16: dict(rtol=2**-7, atol=1e-2),
}


def make_case(B, groups, q_per_kv, hs, max_seq, dtype, device, seed=0):
    gen = torch.Generator().manual_seed(seed)
    slots_total = B + 2
    shape = (2, slots_total, groups, max_seq, hs)  # two layers
    k = torch.randn(shape, generator=gen).to(device, dtype)
    v = torch.randn(shape, generator=gen).to(device, dtype)
    q = (2 * torch.randn(B, groups * q_per_kv, hs, generator=gen)).to(device, dtype)
    slots = torch.randperm(slots_total, generator=gen)[:B].to(device)
    return q, k, v, slots


CASES = [  # (groups, q_per_kv, hs, lengths, split_len): lengths ragged against the splits
    (2, 7, 64, [37], 16),  # the released head layout, one row
    (2, 2, 16, [1, 17, 48], 16),  # tiny preset; a row with one key, one a key past a split
    (1, 3, 32, [5, 32, 9], 32),
    (2, 7, 64, [48, 1, 20], 64),  # one split holds everything
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("groups", "q_per_kv", "hs", "lengths", "split_len"), CASES)
def test_matches_ref(device, dtype, groups, q_per_kv, hs, lengths, split_len):
    B, max_seq = len(lengths), 48
    q, k, v, slots = make_case(B, groups, q_per_kv, hs, max_seq, dtype, device, seed=B * hs)
    lengths = torch.tensor(lengths, device=device)
    got = decode_attention(q, k, v, 1, slots, lengths, split_len=split_len)
    assert got.shape == q.shape and got.dtype == dtype
    torch.testing.assert_close(got, decode_attention_ref(q, k, v, 1, slots, lengths), **TOL[dtype])


def test_batches_take_longer_splits():
    """Splits of 128 keys until the rows' groups fill the GPU with fewer (264 programs off a
    GPU: 132 SMs assumed): the released model's 2 groups over a 2048-position cache."""
    cpu = torch.device("cpu")
    assert [split_len_for(rows, 2, 2048, cpu) for rows in (1, 4, 16, 32, 64)] == [
        128, 128, 128, 256, 512]  # fmt: skip
    assert split_len_for(512, 2, 256, cpu) == 256  # never past the cache


def test_max_length_bounds_the_splits(device):
    """A grid sized for `max_length` < max_seq reads no further and still covers every key."""
    q, k, v, slots = make_case(3, 2, 2, 16, 64, torch.float32, device)
    lengths = torch.tensor([20, 3, 24], device=device)
    got = decode_attention(q, k, v, 0, slots, lengths, max_length=24, split_len=16)
    torch.testing.assert_close(
        got, decode_attention_ref(q, k, v, 0, slots, lengths), **TOL[q.dtype]
    )


def make_qkv_case(lengths, groups, q_per_kv, hs, max_seq, dtype, device):
    """(qkv, cos, sin, k, v, slots, positions): each row's new position is its length - 1."""
    B = len(lengths)
    _, k, v, slots = make_case(B, groups, q_per_kv, hs, max_seq, dtype, device, seed=B * hs + 1)
    gen = torch.Generator().manual_seed(hs)
    qkv = (2 * torch.randn(B, groups * (q_per_kv + 2) * hs, generator=gen)).to(device, dtype)
    cos, sin = (t.to(device) for t in rope_cache(max_seq, hs, 10_000))
    return qkv, cos, sin, k, v, slots, torch.tensor(lengths, device=device) - 1


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("groups", "q_per_kv", "hs", "lengths", "split_len"), CASES)
def test_qkv_matches_ref(device, dtype, groups, q_per_kv, hs, lengths, split_len):
    """The attention from the qkv product: the output, and the new keys and values written at
    each row's last position (a split's first and last key among them), nothing else."""
    case = make_qkv_case(lengths, groups, q_per_kv, hs, 48, dtype, device)
    qkv, cos, sin, k, v, slots, positions = case
    k_ref, v_ref, k_before = k.clone(), v.clone(), k.clone()
    got = decode_attention_qkv(qkv, cos, sin, k, v, 1, slots, positions, split_len=split_len)
    want = decode_attention_qkv_ref(qkv, cos, sin, k_ref, v_ref, 1, slots, positions)
    assert got.shape == (len(lengths), groups * q_per_kv, hs) and got.dtype == dtype
    torch.testing.assert_close(got, want, **TOL[dtype])
    # keys: as qkv_rope_cache's (the GPU may fuse RoPE's product and sum); values: copied
    torch.testing.assert_close(k, k_ref, rtol=2**-7 if dtype != torch.float32 else 1e-6, atol=0)
    assert torch.equal(v, v_ref)
    new = (1, slots, slice(None), positions)
    assert not torch.equal(k[new], k_before[new])  # written: k_ref's new rows, not what was


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_qkv_from_slices(device, dtype):
    """qkv handed over as a product split over K (fp32 slices, summed and rounded as they are
    loaded) gives what its rounded total gives."""
    from kernels.splits import SplitSums

    qkv, cos, sin, k, v, slots, at = make_qkv_case([5, 30, 17], 2, 2, 16, 48, dtype, device)
    gen = torch.Generator().manual_seed(7)
    parts = torch.randn(3, *qkv.shape, generator=gen).to(device)  # (3, B, width) fp32
    sliced = SplitSums(parts, dtype)
    k_ref, v_ref = k.clone(), v.clone()
    got = decode_attention_qkv(sliced, cos, sin, k, v, 1, slots, at, split_len=16)
    want = decode_attention_qkv_ref(sliced.total(), cos, sin, k_ref, v_ref, 1, slots, at)
    assert got.dtype == dtype
    torch.testing.assert_close(got, want, **TOL[dtype])
    torch.testing.assert_close(k, k_ref, rtol=2**-7 if dtype != torch.float32 else 1e-6, atol=0)
    assert torch.equal(v, v_ref)  # the slices' sum, rounded as SplitSums.total rounds it


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_qkv_unreduced_splits_combine_to_the_output(device, dtype):
    """reduce=False stops after stage 1: its splits (each row's first, some also its second;
    the third empty for all) combine to what stage 2 writes, and the same cache is written."""
    from kernels.splits import SoftmaxSplits

    case = make_qkv_case([5, 30, 17], 2, 2, 16, 48, dtype, device)
    qkv, cos, sin, k, v, slots, positions = case
    k_two, v_two = k.clone(), v.clone()
    splits = decode_attention_qkv(qkv, cos, sin, k, v, 1, slots, positions, split_len=16,
                                  reduce=False)  # fmt: skip
    want = decode_attention_qkv(qkv, cos, sin, k_two, v_two, 1, slots, positions, split_len=16)
    assert isinstance(splits, SoftmaxSplits) and splits.shape == (3, 4 * 16)
    assert splits.out.shape == (3, 4, 3, 16) and splits.dtype == dtype
    assert splits.lse[:, :, 2].isinf().all() and splits.lse[1, :, 1].isfinite().all()
    torch.testing.assert_close(splits.total(), want.flatten(1), rtol=1e-6, atol=1e-6)
    assert torch.equal(k, k_two) and torch.equal(v, v_two)


def test_a_row_s_keys_are_shared_out_among_the_splits(device):
    """The splits divide each row's own keys, in whole tiles of 64, not the cache: 200 keys
    over 4 splits of at most 128 take all 4 (64, 64, 64, 8), 40 keys one, a full row 128
    each; and the combined output is still the reference's."""
    from kernels.splits import SoftmaxSplits

    case = make_qkv_case([200, 40, 512], 2, 2, 16, 512, torch.float32, device)
    qkv, cos, sin, k, v, slots, positions = case
    k_ref, v_ref = k.clone(), v.clone()
    splits = decode_attention_qkv(qkv, cos, sin, k, v, 1, slots, positions, split_len=128,
                                  reduce=False)  # fmt: skip
    assert isinstance(splits, SoftmaxSplits) and splits.lse.shape == (3, 4, 4)
    with_keys = splits.lse.isfinite().all(dim=1)  # (rows, splits): every head alike
    assert with_keys.tolist() == [[True] * 4, [True, False, False, False], [True] * 4]
    want = decode_attention_qkv_ref(qkv, cos, sin, k_ref, v_ref, 1, slots, positions)
    torch.testing.assert_close(splits.total(), want.flatten(1), **TOL[torch.float32])
    torch.testing.assert_close(k, k_ref, rtol=1e-6, atol=0)
    assert torch.equal(v, v_ref)


def test_qkv_is_rope_cache_then_attention(device):
    """decode_attention_qkv equals its two steps run as launches of their own, in fp32, where
    both compute the same thing: qkv_rope_cache's kernel, then decode_attention's."""
    from kernels.qkv_rope_cache import qkv_rope_cache

    case = make_qkv_case([9, 1, 33], 2, 2, 16, 48, torch.float32, device)
    qkv, cos, sin, k, v, slots, positions = case
    k_two, v_two = k.clone(), v.clone()
    got = decode_attention_qkv(qkv, cos, sin, k, v, 0, slots, positions, split_len=16)
    q = qkv_rope_cache(qkv[:, None], cos, sin, positions[:, None], slots, k_two, v_two, 0)
    want = decode_attention(q[:, :, 0], k_two, v_two, 0, slots, positions + 1, split_len=16)
    assert torch.equal(k, k_two) and torch.equal(v, v_two)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_refs_are_the_model_attention(tiny_lm, model_products, dtype):
    """One decode step of rows at different positions and slots through the model's Attention:
    from the model's own qkv product, qkv_rope_cache_ref then decode_attention_ref give the
    model's cache and the model's attention output (the input of its projection), bit for bit."""
    lm = tiny_lm(dtype)
    torch.manual_seed(1)
    cfg, attn, layer = lm.cfg, lm.transformer.h[1].attn, 1
    positions = torch.tensor([[6], [0], [11]])  # (B, 1)
    slots = torch.tensor([3, 0, 1])
    B = len(slots)
    cache = lm.new_cache(slots=4, max_seq=16)
    cache.k.normal_(), cache.v.normal_()  # earlier positions: whatever a prefill left
    k_ref, v_ref = cache.k.clone(), cache.v.clone()
    x = torch.randn(B, 1, cfg.n_embd).to(dtype)
    length = int(positions.max()) + 1
    mask = (torch.arange(length)[None, None, :] <= positions[:, :, None])[:, None]
    cos, sin = lm.cos[positions][:, None], lm.sin[positions][:, None]
    attn(x, cos, sin, cache, layer, slots, positions, mask)

    _, qkv = model_products.of(attn.attn.weight)
    y_model, _ = model_products.of(attn.proj.weight)  # (B, 1, n_head * hs)
    q = qkv_rope_cache_ref(qkv, lm.cos, lm.sin, positions, slots, k_ref, v_ref, layer)
    y = decode_attention_ref(q[:, :, 0], k_ref, v_ref, layer, slots, positions[:, 0] + 1)
    assert torch.equal(cache.k, k_ref) and torch.equal(cache.v, v_ref)
    assert torch.equal(y.reshape(B, 1, -1), y_model)


@pytest.mark.gpu
@pytest.mark.parametrize("B", [1, 8])
def test_released_shapes_on_gpu(B):
    q, k, v, slots = make_case(B, 2, 7, 64, 2048, torch.bfloat16, "cuda")
    lengths = torch.randint(1, 2049, (B,), device="cuda")
    got = decode_attention(q, k, v, 1, slots, lengths)
    want = decode_attention_ref(q, k, v, 1, slots, lengths)
    torch.testing.assert_close(got, want, **TOL[torch.bfloat16])


@pytest.mark.gpu
@pytest.mark.parametrize("B", [1, 8])
def test_qkv_released_shapes_on_gpu(B):
    lengths = torch.randint(1, 2049, (B,)).tolist()
    qkv, cos, sin, k, v, slots, positions = make_qkv_case(lengths, 2, 7, 64, 2048,
                                                          torch.bfloat16, "cuda")  # fmt: skip
    k_ref, v_ref = k.clone(), v.clone()
    got = decode_attention_qkv(qkv, cos, sin, k, v, 1, slots, positions)
    want = decode_attention_qkv_ref(qkv, cos, sin, k_ref, v_ref, 1, slots, positions)
    torch.testing.assert_close(got, want, **TOL[torch.bfloat16])
    torch.testing.assert_close(k, k_ref, rtol=2**-7, atol=0)
    assert torch.equal(v, v_ref)

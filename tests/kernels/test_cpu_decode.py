"""kernels/cpu_decode.py against its torch reference over normal and odd shapes."""

import pytest
import torch

from kernels import cpu_decode

pytestmark = pytest.mark.skipif(
    not cpu_decode.available(), reason="no AVX2/FMA CPU or no C compiler"
)

SHAPES = [
    (1152, 896),  # the released model's fused qkv
    (9728, 896),  # fused fc_1/fc_2
    (896, 4864),  # mlp proj: long rows
    (4160 * 7, 896),  # the audio head
    (13, 24),  # fewer rows than a block, K not a multiple of 16
    (37, 100),  # ragged everything
    (8, 7),  # K shorter than one vector
]


@pytest.fixture(params=["avx2", "avx512-bf16"])
def path(request):
    """gemv_bf16 on each of its paths this CPU has (the AVX-512 BF16 one is its default where
    it runs)."""
    if cpu_decode.use_dpbf16(request.param == "avx512-bf16") != (request.param != "avx2"):
        pytest.skip("no AVX-512 BF16 on this CPU (or in this compiler)")
    yield request.param
    cpu_decode.use_dpbf16(True)


@pytest.mark.parametrize("rows", [1, 2, 3, 5, 8])
@pytest.mark.parametrize(("n", "k"), SHAPES)
def test_matches_torch(rows, n, k, path):
    gen = torch.Generator().manual_seed(n * 131 + k + rows)
    x = torch.randn(rows, k, generator=gen).bfloat16()
    w = torch.randn(n, k, generator=gen).bfloat16()
    bias = torch.randn(n, generator=gen).bfloat16()
    for b in (None, bias):
        got = cpu_decode.gemv_bf16(x, w, b)
        want = cpu_decode.gemv_bf16_ref(x.float(), w.float(), None if b is None else b.float())
        assert got.dtype == torch.bfloat16 and got.shape == (rows, n)
        # fp32 accumulation in both; the only rounding that differs is the final bf16 one
        torch.testing.assert_close(got.float(), want, rtol=8e-3, atol=8e-3 * k**0.5)


def test_keeps_leading_dims_and_refuses_too_many_rows():
    x = torch.randn(2, 1, 64).bfloat16()
    w = torch.randn(32, 64).bfloat16()
    assert cpu_decode.gemv_bf16(x, w).shape == (2, 1, 32)
    assert not cpu_decode.usable(torch.randn(cpu_decode.max_rows() + 1, 64).bfloat16(), w)
    assert not cpu_decode.usable(torch.randn(1, 64), w.float())  # fp32 stays with torch


@pytest.mark.parametrize(("native", "dpbf16"), [(False, False), (True, False), (True, True)])
def test_products_go_where_they_are_fastest(monkeypatch, native, dpbf16):
    """Our GEMV takes up to max_rows() rows; on a CPU with native bf16 only DPBF16_ROWS on its
    AVX-512 BF16 path, NATIVE_BF16_ROWS without it. A prefill's many rows go to torch in bf16
    there, elsewhere upcast to fp32."""
    from realtime.model import lm as model

    monkeypatch.setattr(cpu_decode, "native_bf16", lambda: native)
    monkeypatch.setattr(cpu_decode, "dpbf16", lambda: dpbf16)
    w = torch.randn(32, 64).bfloat16()
    most = cpu_decode.max_rows()
    if native:
        most = cpu_decode.DPBF16_ROWS if dpbf16 else cpu_decode.NATIVE_BF16_ROWS
    assert cpu_decode.usable(torch.randn(most, 64).bfloat16(), w)
    assert not cpu_decode.usable(torch.randn(most + 1, 64).bfloat16(), w)
    seen = []
    product = torch.nn.functional.linear

    def spy(x, weight, bias=None):
        seen.append(x.dtype)
        return product(x, weight, bias)

    monkeypatch.setattr(torch.nn.functional, "linear", spy)
    x = torch.randn(model.CPU_UPCAST_ROWS + 1, 64).bfloat16()
    assert model.linear(x, w).dtype == torch.bfloat16
    assert seen == [torch.bfloat16 if native else torch.float32]


def test_native_bf16_asks_torch_s_probes():
    """The probes are private to torch: were they renamed, native_bf16() would quietly say
    False everywhere; this fails instead."""
    probes = [torch.cpu._is_amx_tile_supported(), torch.cpu._is_avx512_bf16_supported()]
    assert cpu_decode.native_bf16() == any(probes)


def test_avx512_bf16_path_is_taken_where_the_cpu_has_it():
    assert cpu_decode.dpbf16() == torch.cpu._is_avx512_bf16_supported()
    assert not cpu_decode.use_dpbf16(False) and not cpu_decode.dpbf16()
    assert cpu_decode.use_dpbf16(True) == torch.cpu._is_avx512_bf16_supported()


def test_torch_only_switch(monkeypatch):
    monkeypatch.setenv(cpu_decode.TORCH_ONLY_ENV, "1")
    cpu_decode._library.cache_clear(), cpu_decode._max_rows.cache_clear()
    try:
        assert not cpu_decode.available() and cpu_decode.max_rows() == 0
    finally:
        monkeypatch.delenv(cpu_decode.TORCH_ONLY_ENV)
        cpu_decode._library.cache_clear(), cpu_decode._max_rows.cache_clear()
    assert cpu_decode.available()


@pytest.mark.parametrize("pos", [0, 1, 37, 255])
@pytest.mark.parametrize(("groups", "q_per_kv", "hs"), [(2, 7, 64), (2, 2, 16), (1, 3, 10)])
def test_rope_attend_matches_torch(pos, groups, q_per_kv, hs):
    from realtime.model.lm import rope_cache

    gen = torch.Generator().manual_seed(pos * 7 + hs)
    max_seq = 256
    qkv = torch.randn(groups * (q_per_kv + 2) * hs, generator=gen).bfloat16()
    cache = torch.randn(2, groups, max_seq, hs, generator=gen).bfloat16()
    cos, sin = (t[pos].contiguous() for t in rope_cache(max_seq, hs, 1_000_000))
    k_ref, v_ref = cache[0].clone(), cache[1].clone()
    want = cpu_decode.rope_attend_bf16_ref(qkv, cos, sin, k_ref, v_ref, pos, q_per_kv)
    k, v = cache[0].clone(), cache[1].clone()
    got = cpu_decode.rope_attend_bf16(qkv, cos, sin, k, v, pos, q_per_kv)
    # The cache rows are bf16 roundings of the same fp32 values: equal.
    assert torch.equal(k, k_ref) and torch.equal(v, v_ref)
    torch.testing.assert_close(got.float(), want.float(), rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("rows", [1, 2])
def test_the_model_step_is_the_same_with_and_without_the_c_path(monkeypatch, rows):
    """A decode step's rows (each at its own position, in its own slot) through the C calls
    and through torch's ops."""
    from realtime.model import lm as model_module
    from realtime.model.config import PRESETS
    from realtime.model.lm import OmniLM, rope_cache

    torch.manual_seed(0)
    cfg = PRESETS["tiny"].model
    lm = OmniLM(cfg).bfloat16().eval().requires_grad_(False).fuse()
    lm.cos, lm.sin = rope_cache(cfg.block_size, cfg.head_size, cfg.rope_base)  # fp32, as loaded
    ids = torch.randint(0, 150_000, (rows, 6, 8))
    slots, lengths = torch.tensor([1, 0][:rows]), [5, 3][:rows]

    def run():
        cache = lm.new_cache(2)
        with torch.inference_mode():
            for row, (slot, length) in enumerate(zip(slots, lengths, strict=True)):
                prompt = lm.embed(ids[row : row + 1, :length])
                lm(prompt, torch.arange(length)[None], slot[None], cache)
            step = lm.embed(ids[torch.arange(rows), torch.tensor(lengths)][:, None])
            return lm(step, torch.tensor(lengths)[:, None], slots, cache)  # (rows, 1, C)

    with_c = run()
    monkeypatch.setattr(model_module, "_rows_in_c", lambda *args: False)
    without = run()
    torch.testing.assert_close(with_c.float(), without.float(), rtol=2e-2, atol=2e-2)


packing = pytest.mark.skipif(
    not cpu_decode.packing(), reason="no AMX here, or no oneDNN packing in this torch"
)


@packing
@pytest.mark.parametrize("rows", [1, 2, 3, 104])
@pytest.mark.parametrize(("n", "k"), SHAPES)
def test_packed_matches_torch(rows, n, k):
    gen = torch.Generator().manual_seed(n * 131 + k + rows)
    x = torch.randn(rows, 1, k, generator=gen).bfloat16()  # leading dims kept
    w = torch.randn(n, k, generator=gen).bfloat16()
    bias = torch.randn(n, generator=gen).bfloat16()
    packed = cpu_decode.pack(w)
    for b in (None, bias):
        got = cpu_decode.packed_linear(x, packed, b)
        want = cpu_decode.gemv_bf16_ref(x.float(), w.float(), None if b is None else b.float())
        assert got.dtype == torch.bfloat16 and got.shape == (rows, 1, n)
        torch.testing.assert_close(got.float(), want, rtol=8e-3, atol=8e-3 * k**0.5)


def test_packed_weights_take_products_of_several_rows(monkeypatch):
    """A product with packed weights runs on them from PACKED_MIN_ROWS rows, in bf16 only;
    fewer rows go where they would without them."""
    from realtime.model import lm as model

    w = torch.randn(32, 64).bfloat16()
    packed = object()  # opaque to linear(): handed to cpu_decode.packed_linear as it is
    seen = []

    def spy(x, weights, bias=None):
        assert weights is packed
        seen.append(x.numel() // x.shape[-1])
        return torch.nn.functional.linear(x, w, bias)

    monkeypatch.setattr(cpu_decode, "packed_linear", spy)
    for rows in (model.PACKED_MIN_ROWS - 1, model.PACKED_MIN_ROWS, 104):
        x = torch.randn(rows, 1, 64).bfloat16()
        torch.testing.assert_close(model.linear(x, w, packed=packed), x @ w.T)
    model.linear(torch.randn(4, 64), w.float(), packed=packed)  # fp32: never the bf16 copy
    assert seen == [model.PACKED_MIN_ROWS, 104]


@pytest.mark.parametrize("error", [AttributeError, RuntimeError, TypeError])
def test_packing_is_off_where_torch_cannot_pack(monkeypatch, error):
    """torch's packing ops are private: a torch without them (AttributeError), or where they
    cannot run or take other arguments, packs nothing, even on a CPU with AMX."""

    def cannot(weight):
        raise error("as a torch without the op would")

    monkeypatch.setattr(cpu_decode, "_cpu_probe", lambda name: True)  # AMX, say
    monkeypatch.setattr(cpu_decode, "pack", cannot)
    cpu_decode.packing.cache_clear()
    try:
        assert not cpu_decode.packing()
    finally:
        cpu_decode.packing.cache_clear()


def test_pack_needs_bf16_on_a_cpu_that_packs(monkeypatch):
    from realtime.model.config import PRESETS
    from realtime.model.lm import OmniLM

    lm = OmniLM(PRESETS["tiny"].model).eval().fuse()
    assert not lm.pack()  # fp32
    monkeypatch.setattr(cpu_decode, "packing", lambda: False)
    assert not lm.bfloat16().pack() and lm.text_head_packed is None


@packing
def test_a_packed_model_computes_what_it_did(monkeypatch):
    """OmniLM.pack(): a prefill and a step of two rows give the hidden states and logits they
    gave without it, and every product of several rows ran on packed weights."""
    from realtime.decoding.generate import decode_step
    from realtime.model.config import PRESETS
    from realtime.model.lm import OmniLM

    torch.manual_seed(0)
    plain = OmniLM(PRESETS["tiny"].model).bfloat16().eval().requires_grad_(False).fuse()
    packed = OmniLM(PRESETS["tiny"].model).bfloat16().eval().requires_grad_(False).fuse()
    packed.load_state_dict(plain.state_dict())
    assert packed.pack()
    calls = []
    run = cpu_decode.packed_linear
    monkeypatch.setattr(cpu_decode, "packed_linear", lambda *a: calls.append(1) or run(*a))
    outputs = []
    gen = torch.Generator().manual_seed(1)
    prompt = torch.randint(0, 4000, (1, 9, 8), generator=gen)
    step = torch.randint(0, 4000, (2, 8), generator=gen)
    for lm in (plain, packed):
        cache = lm.new_cache(2, 16)
        with torch.inference_mode():
            h = lm(lm.embed(prompt), torch.arange(9)[None], torch.tensor([0]), cache)
            lm(lm.embed(prompt), torch.arange(9)[None], torch.tensor([1]), cache)
            s = decode_step(lm, cache, step, torch.tensor([9, 9]), torch.tensor([0, 1]))
            outputs.append([h, s, lm.text_logits(s), lm.audio_logits(s)])
    layers = PRESETS["tiny"].model.n_layer
    assert len(calls) == 3 * 4 * layers + 2  # 4 products a block in 2 prefills and a step; heads
    for want, got in zip(*outputs, strict=True):
        torch.testing.assert_close(got.float(), want.float(), rtol=2e-2, atol=2e-2)

"""kernels/gemv.py against its torch reference, and the reference against the model's block."""

import pytest
import torch

pytest.importorskip("triton")

from kernels.add_rmsnorm import add_rmsnorm, add_rmsnorm_ref
from kernels.gemv import Norm, Tiles, gemv, gemv_ref, split_for
from kernels.splits import SoftmaxSplits, SplitSums

# fp32: another summation order. bf16: a rounding step where a value sits on a boundary
# (the norm's, SwiGLU's, the product's), which the product then carries.
TOL = {
    torch.float32: dict(rtol=1e-5, atol=1e-5),
    torch.bfloat16: dict(rtol=2**-6, atol=2e-2),
}
SMALL = Tiles(block_n=16, block_k=32)  # several K tiles, slices and column blocks at toy sizes
SMALL_DOT, SMALL_FMA = Tiles(16, 32, dot=True), Tiles(16, 32, dot=False)


def randn(*shape, dtype, device, seed, scale=1.0):
    gen = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(shape, generator=gen)).to(device, dtype)


def close(got, want, dtype):
    if isinstance(want, SplitSums):
        assert isinstance(got, SplitSums)
        got, want = got.total(), want.total()
    assert got.shape == want.shape and got.dtype == want.dtype
    torch.testing.assert_close(got, want, **TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("m", "k", "n"), [(1, 64, 48), (3, 100, 70), (17, 96, 33)])
@pytest.mark.parametrize(
    "tiles", [None, SMALL_DOT, SMALL_FMA], ids=["default", "small-dot", "small-fma"]
)
def test_product_with_bias(device, dtype, m, k, n, tiles):
    x = randn(m, k, dtype=dtype, device=device, seed=m)
    w = randn(n, k, dtype=dtype, device=device, seed=k, scale=k**-0.5)
    b = randn(n, dtype=dtype, device=device, seed=n)
    got, s = gemv(x, w, b, tiles=tiles)
    assert s is None
    close(got, gemv_ref(x, w, b)[0], dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("sliced", [False, True])
@pytest.mark.parametrize("tiles", [SMALL_DOT, SMALL_FMA], ids=["dot", "fma"])
def test_norm_prologue(device, dtype, residual, sliced, tiles):
    """rmsnorm(x + residual) * g first, with x a plain tensor or a product's slices; s is the
    new residual stream (x itself when there is nothing to add)."""
    m, k, n = 5, 80, 40
    x = randn(m, k, dtype=dtype, device=device, seed=1, scale=3)
    if sliced:  # what a split product hands over: three fp32 slices
        x = SplitSums(randn(3, m, k, dtype=torch.float32, device=device, seed=2), dtype)
    r = randn(m, k, dtype=dtype, device=device, seed=3, scale=3) if residual else None
    norm = Norm(randn(k, dtype=dtype, device=device, seed=4) + 1, r, 1e-6)
    w = randn(n, k, dtype=dtype, device=device, seed=5, scale=k**-0.5)
    b = randn(n, dtype=dtype, device=device, seed=6)
    got, s = gemv(x, w, b, norm=norm, tiles=tiles)
    want, want_s = gemv_ref(x, w, b, norm=norm)
    close(got, want, dtype)
    torch.testing.assert_close(s, want_s, rtol=0, atol=0)  # additions in the same order
    if not residual and not sliced:
        assert s.data_ptr() == x.data_ptr()  # not copied


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("norm", [False, True])
@pytest.mark.parametrize("tiles", [SMALL_DOT, SMALL_FMA], ids=["dot", "fma"])
def test_swiglu_epilogue(device, dtype, norm, tiles):
    m, k, n = 3, 72, 50
    x = randn(m, k, dtype=dtype, device=device, seed=7)
    w = randn(2 * n, k, dtype=dtype, device=device, seed=8, scale=2 * k**-0.5)
    prologue = Norm(torch.ones(k, dtype=dtype, device=device), x.clone(), 1e-5) if norm else None
    got, _ = gemv(x, w, norm=prologue, swiglu=True, tiles=tiles)
    assert got.shape == (m, n)
    close(got, gemv_ref(x, w, norm=prologue, swiglu=True)[0], dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("k", "split_k", "slices"), [(96, 3, 3), (100, 2, 2), (64, 5, 2)])
def test_split_over_k(device, dtype, k, split_k, slices):
    """Slices are whole K tiles (so fewer than asked when K has fewer); their sum is the
    product."""
    m, n = 4, 36
    x = randn(m, k, dtype=dtype, device=device, seed=k)
    w = randn(n, k, dtype=dtype, device=device, seed=9, scale=k**-0.5)
    got, _ = gemv(x, w, split_k=split_k, tiles=SMALL)
    assert got.parts.shape == (slices, m, n) and got.parts.dtype == torch.float32
    close(got, gemv_ref(x, w, split_k=split_k)[0], dtype)
    # and the next norm sums them as it loads them
    r = randn(m, n, dtype=dtype, device=device, seed=10)
    g = torch.ones(n, dtype=dtype, device=device)
    for residual in (r, None):
        y, s = add_rmsnorm(got, residual, g, 1e-6)
        want_y, want_s = add_rmsnorm_ref(got, residual, g, 1e-6)
        torch.testing.assert_close(s, want_s, rtol=0, atol=0)
        torch.testing.assert_close(y, want_y, **TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("norm", [False, True])
def test_split_with_bias(device, dtype, norm):
    """The bias goes into the first slice: the slices' sum is the product plus the bias, as the
    qkv product hands it to the attention."""
    m, k, n = 3, 96, 40
    x = randn(m, k, dtype=dtype, device=device, seed=11)
    w = randn(n, k, dtype=dtype, device=device, seed=12, scale=k**-0.5)
    b = randn(n, dtype=dtype, device=device, seed=13)
    prologue = Norm(torch.ones(k, dtype=dtype, device=device), None, 1e-6) if norm else None
    got, _ = gemv(x, w, b, norm=prologue, split_k=3, tiles=SMALL)
    assert got.parts.shape == (3, m, n)
    want = gemv_ref(x, w, b, norm=prologue, split_k=3)[0]
    close(got, want, dtype)
    unsplit = gemv_ref(x, w, b, norm=prologue)[0]  # the model's product, rounded once
    torch.testing.assert_close(want.total(), unsplit, **TOL[dtype])


def attention_splits(m, heads, splits, hs, device, dtype, seed) -> SoftmaxSplits:
    """Random splits of an attention's output; in each row's later splits no keys (lse -inf),
    their outputs NaN, as if never written."""
    gen = torch.Generator().manual_seed(seed)
    out = torch.randn(m, heads, splits, hs, generator=gen)
    lse = 4 * torch.randn(m, heads, splits, generator=gen)
    for row in range(m):
        used = 1 + row % splits
        lse[row, :, used:], out[row, :, used:] = float("-inf"), float("nan")
    return SoftmaxSplits(out.to(device), lse.to(device), dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    ("m", "heads", "splits", "hs"), [(1, 3, 4, 16), (2, 3, 3, 32), (3, 5, 5, 24)]
)
@pytest.mark.parametrize("tiles", [SMALL_DOT, SMALL_FMA], ids=["dot", "fma"])
def test_attention_splits_in(device, dtype, m, heads, splits, hs, tiles):
    """x an attention's splits over the keys, combined as they are loaded: K tiles of 32 hold
    two heads of 16 (the last tile one head in K and one past it), or one of 32, or parts of
    heads of 24; splits without keys are not read (their NaNs stay out); with split_k too, as
    the step's projection takes them."""
    x = attention_splits(m, heads, splits, hs, device, dtype, seed=m)
    assert torch.isfinite(x.total()).all()
    k, n = heads * hs, 40
    w = randn(n, k, dtype=dtype, device=device, seed=14, scale=k**-0.5)
    for split_k in (1, 2):
        got, s = gemv(x, w, split_k=split_k, tiles=tiles)
        assert s is None
        close(got, gemv_ref(x, w, split_k=split_k)[0], dtype)


def test_split_for_fills_the_sms():
    cpu = torch.device("cpu")  # 132 SMs assumed off a GPU: 264 programs wanted
    assert split_for(896, 896, cpu) == 5  # 56 column blocks of 16 x 5 slices of 3 K tiles of 64
    assert split_for(4864, 896, cpu) == 5  # x 5 slices of 16 K tiles (76 in all)
    assert split_for(64, 896, cpu) == 1  # one K tile: nothing to split
    assert split_for(896, 16 * 264, cpu) == 1


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_ref_is_the_model_block(tiny_lm, model_products, monkeypatch, dtype):
    """From the model's own activations gemv_ref gives its products bit for bit: norm_1 and
    the qkv product with its bias, norm_2 with fc_12 and SwiGLU. In bf16 the model's products
    for these 3 rows are our CPU GEMV's (fp32 sums rounded once, as gemv_ref rounds), also
    on a CPU with native bf16 (where torch's, which round partial sums, take 2 rows on)."""
    from kernels import cpu_decode
    from realtime.model.lm import linear

    if dtype == torch.bfloat16 and not cpu_decode.available():
        pytest.skip("the model's bf16 products are torch's here, summed in its own order")
    monkeypatch.setattr(cpu_decode, "native_bf16", lambda: False)
    block = tiny_lm(dtype).transformer.h[0]
    torch.manual_seed(2)
    x = torch.randn(3, 1, block.norm_1.weight.shape[0]).to(dtype)
    block.mlp(block.norm_2(x))  # the MLP half of a block, from its own norm
    eps = block.norm_1.eps
    mlp_in, _ = model_products.of(block.mlp.fc_12)
    proj_in, _ = model_products.of(block.mlp.proj.weight)
    got, s = gemv_ref(x[:, 0], block.mlp.fc_12, norm=Norm(block.norm_2.weight, None, eps),
                      swiglu=True)  # fmt: skip
    assert torch.equal(s, x[:, 0])
    assert torch.equal(got, proj_in[:, 0]) and mlp_in.shape == (3, 1, x.shape[-1])
    attn = block.attn.attn
    y = block.norm_1(x)
    want = linear(y, attn.weight, attn.bias)  # the model's qkv product
    got, _ = gemv_ref(x[:, 0], attn.weight, attn.bias, norm=Norm(block.norm_1.weight, None, eps))
    assert torch.equal(got, want[:, 0])


@pytest.mark.gpu
def test_released_shapes_on_gpu():
    """The released block's products, at 1 and 64 rows."""
    dtype, dev = torch.bfloat16, "cuda"
    for m in (1, 64):
        x = randn(m, 896, dtype=dtype, device=dev, seed=1)
        norm = Norm(torch.ones(896, dtype=dtype, device=dev), x.clone(), 1e-6)
        fc_12 = randn(2 * 4864, 896, dtype=dtype, device=dev, seed=2, scale=896**-0.5)
        close(gemv(x, fc_12, norm=norm, swiglu=True)[0],
              gemv_ref(x, fc_12, norm=norm, swiglu=True)[0], dtype)  # fmt: skip
        h = randn(m, 4864, dtype=dtype, device=dev, seed=3)
        down = randn(896, 4864, dtype=dtype, device=dev, seed=4, scale=4864**-0.5)
        split = split_for(4864, 896, h.device)
        close(gemv(h, down, split_k=split)[0], gemv_ref(h, down, split_k=split)[0], dtype)


def test_the_pipeline_keeps_to_the_gpu_s_shared_memory(monkeypatch):
    """stages_that_fit: a product's stages - 1 tiles in flight fit a program's shared memory
    (less a reserve), and never fewer than 2 stages. The widest fp32 SwiGLU tile (64 rows of x,
    2 x 64 of W, 64 wide: 48 KiB a stage) keeps its 4 stages in an H100's 227 KiB and gets 2 in
    an RTX 40's 99 KiB."""
    from kernels import gemv as module

    cpu = torch.device("cpu")
    stage = (64 * 4 + 2 * 64 * 4) * 64
    assert module.stages_that_fit(4, stage, cpu) == 4  # SHARED_FALLBACK: an H100's
    monkeypatch.setattr(module, "SHARED_FALLBACK", 101376)
    assert module.stages_that_fit(4, stage, cpu) == 2
    assert module.stages_that_fit(4, 40960, cpu) == 3  # 2 tiles of 40 KiB and the reserve
    assert module.stages_that_fit(4, 10**6, cpu) == 2
    assert module.stages_that_fit(1, stage, cpu) == 1  # never more than asked


def test_launch_shape(monkeypatch):
    """launch_shape, which gemv launches with and the sweep reports: FMAs up to FMA_MAX_ROWS
    rows, tl.dot with at least 16 rows above; at most SOFTMAX_SPLITS_STAGES stages over an
    attention's splits; and the stages that fit, here fp32 SwiGLU at 64 rows and wide tiles on
    an RTX 40's 99 KiB."""
    from kernels import gemv as module

    def zeros(*shape):
        return torch.zeros(shape)

    wide = Tiles(block_n=64, block_k=64, num_stages=4)
    fc_12 = zeros(2 * 64, 32)
    assert module.launch_shape(zeros(3, 32), fc_12, True, wide) == (False, 4, 4)
    assert module.launch_shape(zeros(5, 32), fc_12, True, wide) == (True, 16, 4)
    assert module.launch_shape(zeros(64, 32), fc_12, True, Tiles(dot=False))[:2] == (False, 4)
    splits = SoftmaxSplits(zeros(2, 2, 4, 16), zeros(2, 2, 4), torch.float32)
    assert module.launch_shape(splits, zeros(32, 32), False, wide) == (False, 2, 2)
    assert module.launch_shape(SplitSums(zeros(3, 64, 32), torch.float32), fc_12, True, wide) == (
        True, 64, 4)  # fmt: skip
    monkeypatch.setattr(module, "SHARED_FALLBACK", 101376)
    assert module.launch_shape(zeros(64, 32), fc_12, True, wide) == (True, 64, 2)
    assert module.launch_shape(zeros(64, 32), zeros(64, 32), False, wide) == (True, 64, 3)

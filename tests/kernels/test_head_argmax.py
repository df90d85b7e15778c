"""kernels/head_argmax.py against its torch reference (on a toy token layout: the interpreter is
slow), and the reference against the model's heads (on the real layout)."""

import dataclasses

import pytest
import torch

pytest.importorskip("triton")

from kernels.head_argmax import MAX_BLOCK_B, head_argmax, head_argmax_ref, tile_rows
from kernels.layout import TokenLayout
from realtime.decoding.gpu.step import TOKEN_LAYOUT

LAYERS = TOKEN_LAYOUT.audio_layers
LAYOUTS = [(300, 70), (320, 64)]  # (text, audio) range sizes: ragged and block-aligned


def toy_layout(text: int, audio: int) -> TokenLayout:
    """The model's token layout with smaller ranges: `text` text ids, `audio` per layer."""
    return dataclasses.replace(TOKEN_LAYOUT, text_vocab=text, audio_vocab=audio)


def make_case(B, C, text, audio, dtype, device, integer, seed=0):
    """h (B, C), W (V, C). Integer entries make every logit exact in any summation order (and in
    bf16: |logit| < 256), with many ties."""
    gen = torch.Generator().manual_seed(seed)
    V = text + LAYERS * audio
    if integer:
        h = torch.randint(-2, 3, (B, C), generator=gen).float()
        w = torch.randint(-2, 3, (V, C), generator=gen).float()
    else:
        h, w = torch.randn(B, C, generator=gen), torch.randn(V, C, generator=gen)
    return h.to(device, dtype), w.to(device, dtype)


def chosen_logits(ids, h, w, text):
    """The fp32 logits of the chosen ids and the best ones, per (row, range): (B, 8) each."""
    logits = h.float() @ w.float().T  # (B, V)
    audio = logits[:, text:].view(len(h), LAYERS, -1)
    ranges = [audio[:, i] for i in range(LAYERS)] + [logits[:, :text]]
    got = torch.stack([r.gather(1, ids[:, i : i + 1])[:, 0] for i, r in enumerate(ranges)], 1)
    return got, torch.stack([r.max(dim=1).values for r in ranges], 1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("text", "audio"), LAYOUTS)
@pytest.mark.parametrize(("B", "C", "block_v"), [(1, 64, 64), (3, 40, 16)])
def test_exact_logits_match_ref_and_ties_go_low(device, dtype, text, audio, B, C, block_v):
    h, w = make_case(B, C, text, audio, dtype, device, integer=True, seed=B + C)
    layout = toy_layout(text, audio)
    got = head_argmax(h, w, layout, None, block_v=block_v)
    assert got.shape == (B, LAYERS + 1) and got.dtype == torch.int64
    assert torch.equal(got, head_argmax_ref(h, w, layout, None))


def test_more_rows_than_one_tile(device):
    """Two tiles of h, each streaming the table (and skipping text) on its own."""
    text, audio = LAYOUTS[0]
    tile = tile_rows(MAX_BLOCK_B, torch.float32)
    h, w = make_case(tile + 8, 24, text, audio, torch.float32, device, integer=True)
    layout = toy_layout(text, audio)
    skip = torch.arange(tile + 8, device=device) >= tile  # the second tile needs no text
    got = head_argmax(h, w, layout, skip, block_v=64)
    assert torch.equal(got, head_argmax_ref(h, w, layout, skip))


def test_tiles_are_as_tall_as_the_rows_up_to_the_most_without_spilling():
    assert tile_rows(3, torch.bfloat16) == 16  # tl.dot's smallest
    assert tile_rows(40, torch.bfloat16) == tile_rows(64, torch.bfloat16) == MAX_BLOCK_B == 64
    assert tile_rows(64, torch.float32) == 32  # fp32 tiles of 64 rows spill on sm_90


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_random_logits_pick_a_maximum(device, dtype):
    """Ordinary logits: the chosen one is the largest, up to the rounding of the model dtype
    (the kernel sums in another order than torch, so a near-tie may go either way)."""
    text, audio = LAYOUTS[0]
    h, w = make_case(3, 100, text, audio, dtype, device, integer=False)
    layout = toy_layout(text, audio)
    got = head_argmax(h, w, layout, None, block_v=32)
    chosen, best = chosen_logits(got, h, w, text)
    slack = 1e-5 if dtype == torch.float32 else 2**-7
    assert (chosen >= best - slack * best.abs()).all()
    same = got == head_argmax_ref(h, w, layout, None)
    assert same.float().mean() > 0.9


def test_all_tied_range_picks_its_first_id(device):
    text, audio = LAYOUTS[0]
    h, w = make_case(2, 32, text, audio, torch.float32, device, integer=True)
    layout = toy_layout(text, audio)
    w[:] = 1.0  # every logit of a row equal, across every block of every range
    got = head_argmax(h, w, layout, None, block_v=16)
    assert (got == 0).all()


def test_skipped_rows_get_pad_t(device):
    text, audio = LAYOUTS[0]
    h, w = make_case(3, 40, text, audio, torch.float32, device, integer=True)
    layout = toy_layout(text, audio)
    want = head_argmax_ref(h, w, layout, None)
    for skip in ([False, True, False], [True, True, True]):
        skip = torch.tensor(skip, device=device)
        got = head_argmax(h, w, layout, skip, block_v=32)
        assert torch.equal(got[:, :LAYERS], want[:, :LAYERS])  # audio untouched
        assert torch.equal(got[:, LAYERS], torch.where(skip, layout.pad_t, want[:, LAYERS]))
        assert torch.equal(got, head_argmax_ref(h, w, layout, skip))


def test_two_skip_flags_are_ored(device):
    """skip_text as two flags (the step's text_ended and no_text): a row skips the text where
    either is set, in the partials' tiles (a tile where no row needs text reads none) and the
    picks."""
    text, audio = LAYOUTS[0]
    h, w = make_case(4, 40, text, audio, torch.float32, device, integer=True)
    layout = toy_layout(text, audio)
    ended = torch.tensor([False, True, False, True], device=device)
    for off in ([False, False, True, True], [True, False, True, False]):
        off = torch.tensor(off, device=device)
        got = head_argmax(h, w, layout, (ended, off), block_v=32)
        assert torch.equal(got, head_argmax(h, w, layout, ended | off, block_v=32))
        assert torch.equal(got, head_argmax_ref(h, w, layout, ended | off))
        assert torch.equal(got, head_argmax_ref(h, w, layout, (ended, off)))


def test_ref_is_the_model_heads(tiny_lm):
    lm = tiny_lm(torch.float32)
    h = torch.randn(3, lm.cfg.n_embd, generator=torch.Generator().manual_seed(0))
    want_text = lm.text_logits(h).argmax(dim=-1)  # (B,)
    want_audio = lm.audio_logits(h).argmax(dim=-1)  # (B, 7), layer-local
    got = head_argmax_ref(h, lm.lm_head.weight, TOKEN_LAYOUT)
    assert torch.equal(got, torch.cat((want_audio, want_text[:, None]), dim=1))


@pytest.mark.gpu
@pytest.mark.parametrize("B", [1, 8, 40, 72])
def test_released_shapes_on_gpu(B):
    layout = TOKEN_LAYOUT
    ranges = (layout.text_vocab, layout.audio_vocab)
    h, w = make_case(B, 896, *ranges, torch.bfloat16, "cuda", integer=False)
    got = head_argmax(h, w, layout)
    chosen, best = chosen_logits(got, h, w, layout.text_vocab)
    assert (chosen >= best - 2**-7 * best.abs()).all()
    assert (got == head_argmax_ref(h, w, layout)).float().mean() > 0.9
    h, w = make_case(B, 896, *ranges, torch.bfloat16, "cuda", integer=True)
    assert torch.equal(head_argmax(h, w, layout), head_argmax_ref(h, w, layout))

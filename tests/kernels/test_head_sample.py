"""kernels/head_sample.py against its torch reference (the greedy head plus kernels/sampling.py's
draw per sampling row), on toy token layouts: the interpreter is slow."""

import pytest
import torch

pytest.importorskip("triton")

import triton
import triton.language as tl

from kernels.head_argmax import head_argmax_ref
from kernels.head_sample import TOP_K_MAX, SamplingRows, _uniform, head_sample, head_sample_ref
from kernels.sampling import uniforms

from .test_head_argmax import LAYERS, make_case, toy_layout


@triton.jit
def _uniforms_kernel(seed_ptr, position_ptr, stream_ptr, out_ptr):
    n = tl.program_id(0)  # one uniform a program, as the head's draw takes its row's
    u = _uniform(tl.load(seed_ptr + n), tl.load(position_ptr + n), tl.load(stream_ptr + n))
    tl.store(out_ptr + n, u)


def test_the_device_uniforms_are_the_host_s(device):
    seeds = [0, 1, 7, -3, 2**40 + 5, 2**63 - 1, -(2**63)]
    cases = [(s, p, r) for s in seeds for p, r in ((0, 0), (5, 7), (4095, 3), (2**28, 6))]
    seed, position, stream = (torch.tensor(c, device=device) for c in zip(*cases, strict=True))
    out = torch.empty(len(cases), device=device)
    _uniforms_kernel[(len(cases),)](seed, position, stream, out)
    want = torch.cat([uniforms(s, p, [r]) for s, p, r in cases])
    assert torch.equal(out.cpu(), want)


def make_rows(device, B: int, seed: int = 0) -> SamplingRows:
    """B <= 6 rows: every third one greedy, the others with assorted draws."""
    gen = torch.Generator().manual_seed(seed)
    rows = SamplingRows(
        sampling=torch.arange(B) % 3 != 1,
        top_k=torch.tensor([40, 1, TOP_K_MAX, 5, 2, 17][:B]),
        temperature=torch.tensor([0.8, 1.0, 1.3, 0.0, 0.5, 2.0][:B]),
        top_p=torch.tensor([0.9, 1.0, 1.0, 0.5, 0.3, 0.95][:B]),
        seeds=torch.randint(-(2**62), 2**62, (B,), generator=gen),
        positions=torch.randint(0, 4096, (B,), generator=gen),
    )
    return SamplingRows(*(getattr(rows, f).to(device) for f in SamplingRows.__annotations__))


@pytest.mark.parametrize(
    ("dtype", "integer", "text", "audio", "block_v"),
    [
        (torch.float32, False, 300, 70, 16),  # ragged ranges, more blocks than TOP_K_MAX
        (torch.float32, False, 320, 64, 64),  # fewer blocks than TOP_K_MAX: all are read
        (torch.bfloat16, True, 300, 70, 32),  # exact bf16 logits with many ties
    ],
)
def test_draws_equal_the_host_s(device, dtype, integer, text, audio, block_v):
    B, C = 6, 40
    h, w = make_case(B, C, text, audio, dtype, device, integer, seed=text + block_v)
    if not integer:
        h = h * 0.3  # logits of a few units: the draws spread beyond the argmax
    rows = make_rows(device, B, seed=block_v)
    skip = torch.tensor([False, False, True, False, True, False], device=device)
    layout = toy_layout(text, audio)
    logits = torch.full((B, layout.vocab), 7.0, device=device, dtype=dtype)
    got = head_sample(h, w, layout, skip, rows, logits, block_v=block_v)
    want = head_sample_ref(h, w, layout, skip, rows)
    assert got.shape == (B, LAYERS + 1) and got.dtype == torch.int64
    assert torch.equal(got, want)
    greedy = head_argmax_ref(h, w, layout, skip)
    assert torch.equal(got[~rows.sampling], greedy[~rows.sampling])  # greedy rows untouched
    assert (got[skip, LAYERS] == layout.pad_t).all()  # a skipped text is not drawn
    # the buffer holds the sampling rows' logits (in the model dtype) and nothing else
    full = (h.float() @ w.float().T).to(dtype)  # exact for integer entries
    drawn = rows.sampling & ~skip
    if integer:
        assert torch.equal(logits[drawn], full[drawn])
    else:
        torch.testing.assert_close(logits[drawn], full[drawn], rtol=1e-5, atol=1e-5)
    assert (logits[~rows.sampling] == 7.0).all()


def test_two_skip_flags_are_ored(device):
    """skip_text as two flags: the draws of a row whose text either flag skips keep _pad_t."""
    B, C, text, audio = 6, 40, 300, 70
    h, w = make_case(B, C, text, audio, torch.float32, device, False, seed=3)
    rows = make_rows(device, B, seed=3)
    ended = torch.tensor([False, True, False, False, True, False], device=device)
    off = torch.tensor([True, False, False, False, True, False], device=device)
    layout = toy_layout(text, audio)
    got = head_sample(0.3 * h, w, layout, (ended, off), rows, None, block_v=32)
    assert torch.equal(got, head_sample_ref(0.3 * h, w, layout, ended | off, rows))
    assert (got[ended | off, LAYERS] == layout.pad_t).all()


def test_a_draw_changes_with_the_position_and_follows_the_greedy_when_top_k_is_1(device):
    """The same logits drawn at other positions give other ids; top_k 1 is the argmax."""
    text, audio = 300, 70
    h, w = make_case(1, 24, text, audio, torch.float32, device, integer=False, seed=3)
    h = (h * 0.3).expand(4, -1).contiguous()
    rows = SamplingRows(
        *(
            torch.tensor(v, device=device)
            for v in (
                [True] * 4, [64, 64, 64, 1], [2.0] * 4, [1.0] * 4, [5] * 4, [0, 1, 2, 3],
            )
        )
    )  # fmt: skip
    skip = torch.zeros(4, dtype=torch.bool, device=device)
    layout = toy_layout(text, audio)
    got = head_sample(h, w, layout, skip, rows, None, block_v=32)
    assert len({tuple(r) for r in got[:3].tolist()}) == 3
    assert torch.equal(got[3], head_argmax_ref(h[:1], w, layout)[0])


# benchmarks/kernels/head_sample.py's torch.compile contender must draw what the kernel draws,
# or its timing compares unlike work. It is plain torch: this runs on a CPU without the
# interpreter.
TORCH_DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.parametrize(
    ("dtype", "integer", "text", "audio"),
    [
        (torch.float32, False, 300, 70),
        (torch.bfloat16, True, 300, 70),  # exact bf16 logits with many ties: the lower id wins
    ],
)
def test_the_benchmark_s_torch_draw_is_the_reference_s(dtype, integer, text, audio):
    """draw_in_torch (all rows at once, no host sync) equals head_sample_ref (row by row on the
    host), and torch.compile traces it whole: nothing in it waits for the host."""
    from benchmarks.kernels.head_sample import draw_in_torch

    B, C = 6, 40
    h, w = make_case(B, C, text, audio, dtype, TORCH_DEVICE, integer, seed=text)
    if not integer:
        h = h * 0.3
    rows = make_rows(TORCH_DEVICE, B, seed=5)
    # the greedy rows with options that would draw widely: only `sampling` keeps them greedy
    greedy_rows = ~rows.sampling
    rows.top_k = torch.where(greedy_rows, TOP_K_MAX, rows.top_k)
    rows.temperature = torch.where(greedy_rows, 2.0, rows.temperature)
    rows.top_p = torch.where(greedy_rows, 1.0, rows.top_p)
    skip = (
        torch.tensor([False, False, True, False, True, False], device=TORCH_DEVICE),
        torch.tensor([False, True, False, False, True, False], device=TORCH_DEVICE),
    )
    layout = toy_layout(text, audio)
    want = head_sample_ref(h, w, layout, skip[0] | skip[1], rows)
    assert torch.equal(draw_in_torch(h, w, layout, skip, rows), want)
    greedy = head_argmax_ref(h, w, layout, skip[0] | skip[1])
    assert (want[rows.sampling] != greedy[rows.sampling]).any()
    traced = torch.compile(draw_in_torch, fullgraph=True, backend="eager", dynamic=False)
    assert torch.equal(traced(h, w, layout, skip, rows), want)

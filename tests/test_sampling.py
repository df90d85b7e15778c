"""kernels/sampling.py's counter-based uniforms, and draws (through realtime/decoding/sampling.py's
sample, which a request's DecodingOptions take) distributed as the reference's top-k ->
temperature -> top-p -> softmax."""

import math

import pytest
import torch

from kernels.sampling import UNIFORM_BITS, counter_uniforms, uniforms
from realtime.decoding.options import DecodingOptions
from realtime.decoding.sampling import check_decoding, sample


def reference_probs(logits: torch.Tensor, opts: DecodingOptions) -> torch.Tensor:
    """The reference's filtering, written out: keep the top_k, divide by the temperature, drop
    the least likely ids whose softmax mass (summed from the least likely up) stays within
    1 - top_p, softmax."""
    logits = logits.double().clone()
    if opts.top_k is not None:
        cut = torch.topk(logits, opts.top_k).values[-1]
        logits[logits < cut] = -math.inf
    if opts.temperature > 0:
        logits = logits / opts.temperature
    if opts.top_p < 1.0:
        ascending, order = torch.sort(logits)
        drop = ascending.softmax(-1).cumsum(-1) <= 1 - opts.top_p
        drop[-1] = False
        logits[order[drop]] = -math.inf
    return logits.softmax(-1)


def test_uniforms_are_deterministic_in_range_and_distinct_per_key():
    u = uniforms(7, 100, range(8))
    assert u.dtype == torch.float32 and u.shape == (8,)
    assert torch.equal(u, uniforms(7, 100, range(8)))
    assert torch.equal(u * 2**UNIFORM_BITS, (u * 2**UNIFORM_BITS).round())  # exact in fp32
    assert len(set(u.tolist())) == 8
    assert not torch.equal(u, uniforms(8, 100, range(8)))
    assert not torch.equal(u, uniforms(7, 101, range(8)))
    assert torch.equal(uniforms(-3, 5, [1]), uniforms(2**64 - 3, 5, [1]))  # seeds wrap


def test_many_rows_uniforms_at_once_are_each_row_s():
    """counter_uniforms over (rows, streams) broadcast, as the benchmark's device draw takes
    them, equals each request's own uniforms (seeds at int64's ends included)."""
    seeds = [0, 1, -3, 2**40 + 5, 2**63 - 1, -(2**63)]
    positions = [0, 5, 4095, 2**28, 2**40 + 3, 7]
    got = counter_uniforms(
        torch.tensor(seeds)[:, None], torch.tensor(positions)[:, None], torch.arange(8)
    )
    want = torch.stack([uniforms(s, p, range(8)) for s, p in zip(seeds, positions, strict=True)])
    assert torch.equal(got, want)


def test_uniforms_over_positions_look_uniform():
    n = 20000
    u = torch.cat([uniforms(seed, p, [3]) for seed in (0, 1) for p in range(n // 2)]).double()
    assert ((u >= 0) & (u < 1)).all()
    assert abs(u.mean() - 0.5) < 4 * math.sqrt(1 / 12 / n)
    counts = torch.histc(u, bins=10, min=0, max=1)
    assert (counts - n / 10).abs().max() < 5 * math.sqrt(n / 10)
    # neighbouring positions and streams are not correlated
    a, b = uniforms(0, 0, range(0, 8000, 8)).double(), uniforms(0, 0, range(1, 8001, 8)).double()
    assert abs(torch.corrcoef(torch.stack((a, b)))[0, 1]) < 0.1


def test_greedy_is_the_argmax():
    logits = torch.randn(3, 50)
    assert torch.equal(sample(logits, DecodingOptions(), 0, 0), logits.argmax(-1))
    assert int(sample(logits[0], DecodingOptions(top_k=1, temperature=2.0), 9, 7)) == int(
        logits[0].argmax()
    )


@pytest.mark.parametrize(
    "opts",
    [
        DecodingOptions(temperature=0.8, top_k=5, top_p=1.0),
        DecodingOptions(temperature=1.3, top_k=8, top_p=0.8),
        DecodingOptions(temperature=0.7, top_k=None, top_p=0.9),
        DecodingOptions(temperature=0.0, top_k=4, top_p=1.0),  # top-k at the raw logits
    ],
)
@pytest.mark.slow  # 8000 draws each
def test_draws_follow_the_reference_distribution(opts):
    logits = torch.randn(12, generator=torch.Generator().manual_seed(1)) * 1.5
    want = reference_probs(logits, opts)
    n = 8000
    draws = torch.stack([sample(logits, opts, position, 7) for position in range(n)])
    assert set(draws.tolist()) <= set(torch.nonzero(want).flatten().tolist())  # kept ids only
    got = torch.bincount(draws, minlength=12).double() / n
    spread = 4 * (want * (1 - want) / n).sqrt() + 1e-3
    assert ((got - want).abs() <= spread).all(), (got, want)


def test_top_p_keeps_the_smallest_set_above_p():
    probs = torch.tensor([0.1, 0.15, 0.2, 0.25, 0.3])
    opts = DecodingOptions(temperature=1.0, top_k=None, top_p=0.7)
    draws = {int(sample(probs.log(), opts, position, 0)) for position in range(300)}
    # cumulative from the least likely: .1 .25 .45 .7 1.0; those within 0.3 go
    assert draws == {2, 3, 4}


def test_each_row_draws_as_its_own_stream():
    logits = torch.randn(7, 40, generator=torch.Generator().manual_seed(2))
    opts = DecodingOptions(temperature=1.0, top_k=20, seed=11)
    rows = sample(logits, opts, 33, 0)
    assert rows.tolist() == [int(sample(logits[i], opts, 33, i)) for i in range(7)]
    assert sample(logits, opts, 34, 0).tolist() != rows.tolist()  # another position redraws


def test_ties_go_to_the_lower_id():
    logits = torch.zeros(6)
    opts = DecodingOptions(temperature=1.0, top_k=2)
    assert {int(sample(logits, opts, p, 0)) for p in range(100)} == {0, 1}


@pytest.mark.parametrize(
    "opts",
    [
        DecodingOptions(top_k=0),
        DecodingOptions(temperature=-1.0),
        DecodingOptions(temperature=math.nan),
        DecodingOptions(top_p=math.inf),
    ],
)
def test_options_no_draw_can_follow_are_refused(opts):
    with pytest.raises(ValueError, match="top_k|temperature|top_p"):
        check_decoding(opts)

"""kernels/feedback.py against its torch reference, and both against realtime.decoding.generate's
Generation (accept + next_input) over whole random decodes of every task, batched."""

import random

import pytest
import torch

pytest.importorskip("triton")

from kernels.feedback import StepRows, feedback, feedback_ref
from realtime.decoding.generate import Generation
from realtime.decoding.gpu.step import TOKEN_LAYOUT
from realtime.model import tokens
from realtime.model.prompts import Task


def random_flags(B, gen):
    return [torch.rand(B, generator=gen) < p for p in (0.5, 0.5, 0.3, 0.3)]


@pytest.mark.parametrize("B", [1, 3, 37])
def test_matches_ref(device, B):
    gen = torch.Generator().manual_seed(B)
    for _ in range(4):
        audio = torch.randint(
            tokens.EOA - 2, tokens.EOA + 3, (B, tokens.AUDIO_LAYERS), generator=gen
        )
        text = torch.randint(tokens.EOT - 2, tokens.EOT + 3, (B, 1), generator=gen)
        sampled = torch.cat((audio, text), dim=1).to(device)
        speaks, audio_out, first, ended = (f.to(device) for f in random_flags(B, gen))
        ended_ref = ended.clone()
        next_ids, stop = feedback(sampled, speaks, audio_out, first, ended, TOKEN_LAYOUT)
        next_ref, stop_ref = feedback_ref(
            sampled, speaks, audio_out, first, ended_ref, TOKEN_LAYOUT
        )
        assert next_ids.dtype == torch.int64 and stop.dtype == torch.bool
        assert torch.equal(next_ids, next_ref) and torch.equal(stop, stop_ref)
        assert torch.equal(ended, ended_ref)


@pytest.mark.parametrize("B", [3, 37])
def test_step_rows_match_ref(device, B):
    """As the decode step's tail: each row's ids gathered from the picks (rows whose audio and
    text come from different rows, as an a2a-batch request's do), written to the step's
    buffers, its position advanced; every other row of the buffers untouched."""
    gen = torch.Generator().manual_seed(B)
    picks = torch.randint(tokens.EOA - 2, tokens.EOA + 3, (B, tokens.STREAMS), generator=gen)
    picks[:, tokens.TEXT_STREAM] = torch.randint(
        tokens.EOT - 1, tokens.EOT + 2, (B,), generator=gen
    )
    audio_src, text_src = torch.arange(B), torch.arange(B)
    audio_src[1], text_src[0] = 0, 1  # rows 0 and 1: one request's audio row and text row
    flags = random_flags(B, gen)
    bufs = [torch.randint(0, 9, (B + 2, tokens.STREAMS)) for _ in "is"]  # ids, sampled
    moves = [torch.randint(0, 90, (B + 2,)), torch.randint(0, 2, (B + 2,))]  # positions, advance
    runs = []
    for step_fn in (feedback, feedback_ref):
        ids, sampled, positions, advance = (t.clone().to(device) for t in (*bufs, *moves))
        ended = flags[3].clone().to(device)
        rows = StepRows(audio_src.to(device), text_src.to(device), ids[:B], sampled[:B],
                        positions[:B], advance[:B])  # fmt: skip
        next_ids, stop = step_fn(picks.to(device), *(f.to(device) for f in flags[:3]), ended,
                                 TOKEN_LAYOUT, rows)  # fmt: skip
        assert next_ids.data_ptr() == ids.data_ptr()
        runs.append((ids, sampled, positions, stop, ended))
    for got, want in zip(*runs, strict=True):
        assert torch.equal(got, want)
    ids, sampled, positions, *_ = runs[0]
    assert torch.equal(sampled[1], torch.cat((picks[0, :7], picks[1, 7:])).to(device))
    assert torch.equal(
        positions.cpu(), moves[0] + torch.cat((moves[1][:B], torch.zeros(2, dtype=torch.long)))
    )
    assert torch.equal(ids[B:].cpu(), bufs[0][B:]) and torch.equal(sampled[B:].cpu(), bufs[1][B:])


def draw(rng: random.Random) -> tuple[int, list[int]]:
    """A step's sampled text and layer-local audio, stop tokens now and then."""
    text = rng.choice([tokens.EOT, tokens.PAD_T, rng.randrange(tokens.TEXT_VOCAB)])
    audio = [rng.randrange(tokens.AUDIO_LAYER_VOCAB) for _ in range(tokens.AUDIO_LAYERS)]
    if rng.random() < 0.08:
        audio[-1] = tokens.EOA
    return text, audio


@pytest.mark.parametrize("step_fn", [feedback, feedback_ref], ids=["kernel", "ref"])
def test_follows_generation(device, step_fn):
    """A static batch of every task's rows (a2a-batch is two), decoded with random samples until
    each stops: the device state machine agrees with Generation at every step."""
    rng = random.Random(0)
    tasks = [Task.A2A, Task.A2T, Task.T2A, Task.T2T, Task.A2A_BATCH, Task.A2A, Task.T2T]
    gens = [Generation(task, prompt_length=5, max_steps=10**6) for task in tasks]
    rows = [(g, r) for g in gens for r in range(g.spec.rows)]  # (request, row within it)
    speaks = torch.tensor([g.spec.audio_out and r == g.spec.audio_row for g, r in rows])
    audio_out = torch.tensor([g.spec.audio_out for g, _ in rows])
    text_ended = torch.zeros(len(rows), dtype=torch.bool, device=device)
    speaks, audio_out = speaks.to(device), audio_out.to(device)
    for _ in range(80):
        first = torch.tensor([g.steps == 0 for g, _ in rows], device=device)
        drawn = {id(g): draw(rng) for g in gens}  # one sample per request, fed to all its rows
        sampled = torch.tensor([[*drawn[id(g)][1], drawn[id(g)][0]] for g, _ in rows])
        next_ids, stop = step_fn(
            sampled.to(device), speaks, audio_out, first, text_ended, TOKEN_LAYOUT
        )
        for g in gens:
            if g.done:
                continue  # a finished request's rows compute on; nobody reads them
            mine = [i for i, (h, _) in enumerate(rows) if h is g]
            text, audio = drawn[id(g)]
            out = g.accept(text, audio if g.spec.audio_out else None)
            assert stop[mine].tolist() == [out.done] * len(mine)
            assert text_ended[mine].tolist() == [g.text_ended] * len(mine)
            if not out.done:
                assert next_ids[mine].tolist() == g.next_input().tolist()
        if all(g.done for g in gens):
            break
    assert all(g.done for g in gens)

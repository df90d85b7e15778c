"""A conversation that remembers (SessionOptions.keep_history, realtime.engine.context): every
answer equals the one an offline twin gives from one prefill of the same turns in the same
layout, [prompt_1][answer_1 as fed back][prompt_2]...: after whole answers, after a barge-in
(the answer kept as far as it was heard), after a door deleted a turn or cut an answer, and
after the oldest turns left to make room.

The twin is written here from the model's parts (prefill, decode_step, Generation), not from
the session's code; the tiny model, float32, greedy.
"""

from dataclasses import dataclass

import numpy as np
import pytest
import torch

from realtime.decoding.generate import Generation, decode_step, place_features, sample_step
from realtime.decoding.options import DecodingOptions
from realtime.decoding.runtime import Request
from realtime.engine import events
from realtime.engine.context import Context, ContextTurn
from realtime.engine.engine import Engine, EngineOptions
from realtime.engine.session import SessionOptions
from realtime.model import tokens
from realtime.model.prompts import Task, build_prompt

from .test_engine import PUSH, Recorder, clip

STEPS = 8  # each answer's decode steps (max_new_tokens)
GREEDY = DecodingOptions(max_new_tokens=STEPS)


@dataclass
class Kept:
    """One turn of the twin's context: its prompt's inputs and the answer positions kept."""

    turn: int
    ids: torch.Tensor  # (1, n, 8)
    audio: torch.Tensor  # (1, n, C)
    mask: torch.Tensor  # (1, n)


class Twin:
    """The conversation offline: each answer from one prefill of every kept turn and the new
    prompt, at positions 0.., in the runtime's own cache; `steps` decode steps at most."""

    def __init__(self, runtime, steps: int = STEPS) -> None:
        self.runtime, self.kept = runtime, []
        self.options = DecodingOptions(max_new_tokens=steps)
        self.slots = torch.tensor([0], device=runtime.cache.k.device)

    def answer(self, turn: int, pcm: np.ndarray) -> Generation:
        lm, cache = self.runtime.lm, self.runtime.cache
        opts = self.options
        inp = self.runtime.prepare(Request(Task.A2A, audio=pcm, options=opts, encoder="chunked"))
        placed, mask = place_features(inp.audio, 1, inp.prompt.length)
        ids = torch.cat([k.ids for k in self.kept] + [inp.prompt.ids.to(placed.device)], dim=1)
        audio = torch.cat([k.audio for k in self.kept] + [placed], dim=1)
        mask = torch.cat([k.mask for k in self.kept] + [mask], dim=1)
        length = ids.shape[1]
        with torch.inference_mode():
            positions = torch.arange(length, device=ids.device)[None]
            hidden = lm(lm.embed(ids, audio, mask), positions, self.slots, cache)[:, -1]
            gen = Generation(Task.A2A, length, opts.max_new_tokens)
            out = gen.accept(*sample_step(lm, hidden, gen, opts))
            while not out.done:
                position = torch.tensor([gen.next_position], device=ids.device)
                feed = gen.next_input().to(ids.device)
                hidden = decode_step(lm, cache, feed, position, self.slots)
                out = gen.accept(*sample_step(lm, hidden, gen, opts))
        self._prompt = (turn, inp.prompt.ids.to(placed.device), placed, mask[:, -placed.shape[1] :])
        return gen

    def keep(self, gen: Generation, answer_positions: int) -> None:
        """Keep the turn just answered with the first `answer_positions` of its answer, fed back
        as the decode loop feeds it: step j's audio ids, layer-shifted, and its text id."""
        turn, ids, placed, mask = self._prompt
        fed = [
            [tokens.layer_shift(gen.audio[j][i], i) for i in range(tokens.AUDIO_LAYERS)]
            + [gen.text[j]]
            for j in range(answer_positions)
        ]
        answer = torch.tensor(fed, dtype=torch.long, device=ids.device).reshape(1, -1, 8)
        self.kept.append(
            Kept(
                turn,
                torch.cat([ids, answer], dim=1),
                torch.cat([placed, placed.new_zeros(1, answer_positions, placed.shape[2])], 1),
                torch.cat([mask, mask.new_zeros(1, answer_positions)], dim=1),
            )
        )

    def forget(self, turns) -> None:
        self.kept = [k for k in self.kept if k.turn not in turns]


def say(handle, pcm: np.ndarray) -> None:
    for start in range(0, len(pcm), PUSH):
        handle.push_audio(pcm[start : start + PUSH])
    handle.end_turn()


def forgotten_before(rec: Recorder, turn: int) -> set[int]:
    """The turns that left before turn `turn`'s prompt went in (its PrefillDone)."""
    placed = next(
        i for i, e in enumerate(rec.events) if isinstance(e, events.PrefillDone) and e.turn == turn
    )
    earlier = rec.events[:placed]
    return {t for e in earlier if isinstance(e, events.Forgotten) for t in e.turns}


def same(done: events.Done, gen: Generation) -> bool:
    return done.text_tokens == gen.text_tokens() and done.frames == gen.frames()


@pytest.fixture
def engine(runtime):
    engine = Engine(runtime, EngineOptions(max_sessions=2)).start()
    yield engine
    engine.stop()


def open_session(engine, **options) -> tuple[object, Recorder]:
    rec = Recorder()
    handle = engine.open_session(
        SessionOptions(**{"keep_history": True, "decoding": GREEDY} | options), rec
    )
    return handle, rec


QUESTIONS = ["q_capital.wav", "q_story.wav", "q_weather.wav", "mini_omni_sample_1.wav"]


def test_each_answer_equals_one_prefill_of_the_whole_conversation(runtime, engine):
    handle, rec = open_session(engine)
    twin = Twin(runtime)
    for turn, name in enumerate(QUESTIONS[:3], start=1):
        pcm = clip(name, 2.0)
        say(handle, pcm)
        done = rec.wait_for(events.Done, turn)[-1]
        gen = twin.answer(turn, pcm)
        assert same(done, gen), f"turn {turn}"
        twin.keep(gen, gen.steps - 1)
    positions = [e.positions for e in rec.of(events.PrefillDone)]
    assert positions[0] < positions[1] < positions[2]


def test_a_barge_in_keeps_what_was_heard_and_a_door_s_edits_take_effect(runtime, engine):
    """Turn 2 is cut after two frames were heard; then a door deletes turn 1 and cuts turn 3's
    answer to one frame: turn 4's answer is the twin's from [turn 2 as heard][turn 3 cut]."""
    handle, rec = open_session(engine, decoding=DecodingOptions(max_new_tokens=60))
    twin = Twin(runtime, steps=60)
    pcm = [clip(name, 1.5) for name in QUESTIONS]
    say(handle, pcm[0])
    gen1 = twin.answer(1, pcm[0])
    assert same(rec.wait_for(events.Done)[0], gen1)
    twin.keep(gen1, gen1.steps - 1)

    say(handle, pcm[1])
    rec.wait_for(events.AudioChunk, count=len(rec.of(events.AudioChunk)) + 1)
    handle.cancel(played_frames=2)
    cancelled = rec.wait_for(events.Cancelled)[0]
    gen2 = twin.answer(2, pcm[1])
    dones = [d for d in rec.of(events.Done) if d.turn == 2]  # (it may have ended first)
    fed = (dones[0].steps if dones else cancelled.steps) - 1
    twin.keep(gen2, fed if dones else min(fed, 2 + tokens.MAX_AUDIO_DELAY))

    say(handle, pcm[2])
    done3 = rec.wait_for(events.Done, 2 + bool(dones))[-1]
    gen3 = twin.answer(3, pcm[2])
    assert same(done3, gen3)
    handle.forget(1)
    handle.truncate(3, played_frames=1)
    twin.forget({1})
    twin.keep(gen3, min(gen3.steps - 1, 1 + tokens.MAX_AUDIO_DELAY))

    say(handle, pcm[3])
    done4 = rec.wait_for(events.Done, 3 + bool(dones))[-1]
    assert same(done4, twin.answer(4, pcm[3]))


def talk_with_twin(runtime, handle, rec: Recorder, turns: int, seconds: float) -> None:
    """Ask the questions in turn (`seconds` of each), whole answers heard; each answer must be
    the twin's over the turns kept when its prompt went in."""
    twin = Twin(runtime)
    for turn in range(1, turns + 1):
        pcm = clip(QUESTIONS[(turn - 1) % len(QUESTIONS)], seconds)
        say(handle, pcm)
        done = rec.wait_for(events.Done, turn)[-1]
        twin.forget(forgotten_before(rec, turn))
        gen = twin.answer(turn, pcm)
        assert same(done, gen), f"turn {turn}"
        twin.keep(gen, gen.steps - 1)


def test_the_oldest_turns_leave_first_and_the_session_talks_on(runtime, engine):
    """With room for about two earlier turns, each new one pushes the oldest out (Forgotten
    says which); the answers stay equal to the twin's over what is kept, and none fails."""
    first = runtime.prepare(
        Request(Task.A2A, audio=clip(QUESTIONS[0], 1.0), options=GREEDY, encoder="chunked")
    )
    turn_length = first.prompt.length + STEPS - 1
    handle, rec = open_session(engine, history_positions=2 * turn_length + turn_length // 2)
    talk_with_twin(runtime, handle, rec, turns=5, seconds=1.0)
    forgotten = [t for e in rec.of(events.Forgotten) for t in e.turns]
    assert forgotten[:2] == [1, 2] and not rec.of(events.Error)


def test_a_full_context_makes_room_for_the_next_turn_instead_of_failing(runtime, tiny_dir):
    """No limit set: earlier turns fill the model's context until a turn and its answer would
    not fit; then the oldest leave, and the answer is still the twin's."""
    small = Engine(runtime, EngineOptions(max_sessions=1, max_seq=600)).start()
    try:
        handle, rec = open_session(small)
        talk_with_twin(runtime, handle, rec, turns=6, seconds=2.0)
        assert rec.of(events.Forgotten) and not rec.of(events.Error)
    finally:
        small.stop()


# --- the context's bookkeeping --------------------------------------------------------------


def _turn(number: int, length: int, prompt: int = 3) -> ContextTurn:
    return ContextTurn(number, torch.zeros(1, length, 8, dtype=torch.long), None, prompt)


def test_edits_and_room_move_the_turns_after_them():
    context = Context()
    for number, length in ((1, 10), (2, 20), (3, 30)):
        context.add(_turn(number, length), in_place=True)
    assert (context.positions, context.valid) == (60, 3)
    assert context.truncate(2, 5) and context.turns[1].length == 8 and context.valid == 2
    assert not context.truncate(9, 1) and not context.delete(9)
    assert context.delete(1) and context.valid == 0 and context.positions == 38
    context.valid = 2
    assert context.make_room(0, 100) == [] and context.valid == 2
    assert context.make_room(70, 100) == [2] and context.valid == 0 and context.positions == 30
    context.add(_turn(4, 5), in_place=True)  # (the cache does not hold turn 3: not in place)
    assert context.valid == 0
    assert context.clear() == [3, 4] and context.positions == 0


def test_a_conversation_without_history_starts_each_turn_at_zero(engine):
    rec = Recorder()
    handle = engine.open_session(SessionOptions(decoding=GREEDY), rec)
    for turn in (1, 2):
        say(handle, clip(QUESTIONS[0], 1.0))
        rec.wait_for(events.Done, turn)
    first, second = (e.positions for e in rec.of(events.PrefillDone))
    assert first == second
    handle.set_history(True)
    for turn in (3, 4):
        say(handle, clip(QUESTIONS[0], 1.0))
        rec.wait_for(events.Done, turn)
    third, fourth = [e.positions for e in rec.of(events.PrefillDone)][2:]
    assert third == first and fourth > third


def test_turns_an_owner_gives_and_half_turns_it_deletes_are_the_twin_s_context(runtime, engine):
    """A typed exchange put in unanswered (an OpenAI client's earlier items), then a spoken
    turn whose prompt is deleted (the caller's item) but whose answer stays: the next answer
    is the twin's over [typed prompt][given answer][answer 2][prompt 3]."""
    handle, rec = open_session(engine)
    tokenizer = runtime.tokenizer
    handle.remember("Paris.", text="What is the capital of France?")
    twin = Twin(runtime)
    typed = build_prompt(Task.T2A, text_ids=tokenizer.encode("What is the capital of France?").ids)
    pad = [tokens.layer_shift(tokens.PAD_A, i) for i in range(tokens.AUDIO_LAYERS)]
    given = [pad + [t] for t in [*tokenizer.encode("Paris.").ids, tokens.EOT]]
    ids = torch.cat([typed.ids, torch.tensor([given], dtype=torch.long)], dim=1)
    channels = runtime.lm.cfg.n_embd
    twin.kept.append(
        Kept(
            1,
            ids,
            torch.zeros(1, ids.shape[1], channels),
            torch.zeros(1, ids.shape[1], dtype=torch.bool),
        )
    )

    pcm = [clip(name, 1.5) for name in QUESTIONS[:2]]
    say(handle, pcm[0])
    done2 = rec.wait_for(events.Done)[0]
    assert done2.turn == 2
    gen2 = twin.answer(2, pcm[0])
    assert same(done2, gen2)
    twin.keep(gen2, gen2.steps - 1)
    handle.forget(2, prompt=True, answer=False)
    answer_only = twin.kept[-1]
    start = answer_only.ids.shape[1] - (gen2.steps - 1)
    twin.kept[-1] = Kept(
        2, answer_only.ids[:, start:], answer_only.audio[:, start:], answer_only.mask[:, start:]
    )

    say(handle, pcm[1])
    assert same(rec.wait_for(events.Done, 2)[-1], twin.answer(3, pcm[1]))


def test_an_edit_while_the_caller_talks_takes_effect_in_that_turn(runtime, engine):
    """Turn 1 is deleted after a 2 s block of turn 2 went in after it: turn 2 goes in again
    at the end of the turn, and its answer is the twin's without turn 1."""
    handle, rec = open_session(engine)
    twin = Twin(runtime)
    first = clip(QUESTIONS[0], 1.0)
    say(handle, first)
    gen1 = twin.answer(1, first)
    assert same(rec.wait_for(events.Done)[0], gen1)
    second = clip(QUESTIONS[1], 3.0)
    half = 2 * 16000 + PUSH  # past the first 2 s block: it is prefilled after turn 1
    for start in range(0, half, PUSH):
        handle.push_audio(second[start : start + PUSH])
    handle.forget(1)
    for start in range(half, len(second), PUSH):
        handle.push_audio(second[start : start + PUSH])
    handle.end_turn()
    assert same(rec.wait_for(events.Done, 2)[-1], twin.answer(2, second))

"""Early answers (Session.end_turn's `tentative`): begun at a pause in the caller's speech, held
until the turn is confirmed, and dropped without a trace when the caller goes on."""

import asyncio
import time

import numpy as np
import pytest

from realtime.decoding.options import DecodingOptions
from realtime.engine import events
from realtime.engine.engine import Engine, EngineOptions
from realtime.engine.session import SessionOptions
from realtime.model.prompts import Task

from .test_engine import PUSH, Recorder, clip, frames_of, offline
from .test_twilio import StubEngine

STEPS = 24
SILENCE = np.zeros(PUSH * 10, np.float32)  # 200 ms: the pause that starts an early answer


@pytest.fixture
def engine(runtime):
    engine = Engine(runtime, EngineOptions(max_sessions=4)).start()
    yield engine
    engine.stop()


def push(handle, pcm: np.ndarray) -> None:
    for start in range(0, len(pcm), PUSH):
        handle.push_audio(pcm[start : start + PUSH])


def wait_parked(engine: Engine, handle, timeout_s: float = 60) -> None:
    """Until the session's early answer has its first output ready and waits for the turn."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        session = engine._sessions.get(handle.id)
        if session is not None and session.early is not None and not session.lanes():
            return
        time.sleep(0.01)
    raise AssertionError("the early answer never got ready")


def options(task: Task = Task.A2A) -> SessionOptions:
    return SessionOptions(task=task, decoding=DecodingOptions(max_new_tokens=STEPS))


def same(done: events.Done, twin) -> bool:
    return done.text_tokens == twin.text_tokens and done.frames == frames_of(twin)


@pytest.mark.parametrize("pause_s", [1.0, 2.4])  # in the first block; after a whole block
def test_a_dropped_early_answer_leaves_the_turn_as_if_it_never_paused(runtime, engine, pause_s):
    pcm = clip("q_story.wav")
    cut = int(pause_s * 16000)
    heard = np.concatenate([pcm[:cut], SILENCE, pcm[cut:]])  # the caller paused, went on
    rec = Recorder()
    handle = engine.open_session(options(), rec)
    push(handle, heard[: cut + len(SILENCE) // 2])
    handle.end_turn(tentative=True)
    wait_parked(engine, handle)
    push(handle, heard[cut + len(SILENCE) // 2 :])  # speech again: the pause was no end
    handle.resume_turn()
    handle.end_turn()
    done = rec.wait_for(events.Done)[0]
    assert same(done, offline(runtime, Task.A2A, heard, STEPS))
    assert rec.kinds()[:3] == ["TurnEnded", "PrefillDone", "FirstText"]
    assert {e.turn for e in rec.events} == {1}  # nothing of the dropped answer got out
    assert engine.discarded_steps > 0


def test_a_confirmed_early_answer_answers_the_turn_up_to_the_pause(runtime, engine):
    pcm = clip("q_capital.wav")
    rec = Recorder()
    handle = engine.open_session(options(), rec)
    push(handle, pcm)
    handle.end_turn(tentative=True)
    push(handle, SILENCE)  # the hangover's silence: heard, not part of the turn
    wait_parked(engine, handle)
    time.sleep(0.2)
    assert rec.events == []  # held: nothing reaches the owner before the turn is confirmed
    handle.end_turn()
    done = rec.wait_for(events.Done)[0]
    assert same(done, offline(runtime, Task.A2A, pcm, STEPS))
    kinds = rec.kinds()
    assert kinds[:3] == ["TurnEnded", "PrefillDone", "FirstText"] and "FirstAudio" in kinds
    assert engine.discarded_steps == 0


def test_early_answers_in_a_batch_change_no_session_s_tokens(runtime, engine):
    """One session drops an early answer, one confirms one, one answers plainly meanwhile:
    each equals its twin run alone."""
    story, capital, weather = clip("q_story.wav"), clip("q_capital.wav"), clip("q_weather.wav")
    cut = int(1.2 * 16000)
    resumed = np.concatenate([story[:cut], SILENCE, story[cut:]])
    recs = [Recorder() for _ in range(3)]
    dropped, confirmed, plain = (engine.open_session(options(), rec) for rec in recs)
    push(plain, weather)
    plain.end_turn()
    push(dropped, resumed[: cut + len(SILENCE)])
    dropped.end_turn(tentative=True)
    push(confirmed, capital)
    confirmed.end_turn(tentative=True)
    wait_parked(engine, dropped)
    push(dropped, resumed[cut + len(SILENCE) :])
    dropped.resume_turn()
    dropped.end_turn()
    wait_parked(engine, confirmed)
    confirmed.end_turn()
    twins = [offline(runtime, Task.A2A, pcm, STEPS) for pcm in (resumed, capital, weather)]
    for rec, twin in zip(recs, twins, strict=True):
        assert same(rec.wait_for(events.Done)[0], twin)


def test_a_cancel_or_a_typed_turn_drops_the_early_answer_unheard(runtime, engine):
    rec = Recorder()
    handle = engine.open_session(options(), rec)
    push(handle, clip("q_capital.wav"))
    handle.end_turn(tentative=True)
    wait_parked(engine, handle)
    handle.cancel()
    cancelled = rec.wait_for(events.Cancelled)[0]
    assert (cancelled.turn, cancelled.steps) == (0, 0) and rec.kinds() == ["Cancelled"]
    push(handle, clip("q_weather.wav"))
    handle.end_turn(tentative=True)
    wait_parked(engine, handle)
    handle.submit_text("hello there")
    done = rec.wait_for(events.Done)[0]
    assert done.turn == 1 and rec.kinds()[1] == "TurnEnded"


def test_a_tentative_end_while_an_answer_runs_waits_for_the_confirmation(runtime, engine):
    rec = Recorder()
    long = SessionOptions(decoding=DecodingOptions(max_new_tokens=200))
    handle = engine.open_session(long, rec)
    push(handle, clip("q_capital.wav"))
    handle.end_turn()
    rec.wait_for(events.FirstText)
    push(handle, clip("q_weather.wav"))
    handle.end_turn(tentative=True)  # ignored: the first answer still runs
    handle.end_turn()  # a plain end of turn: supersedes it
    done = rec.wait_for(events.Done)[0]
    assert done.turn == 2 and len(rec.of(events.TurnEnded)) == 2


def test_a_false_end_of_turn_rejoins_the_turn_and_answers_both_as_one(runtime, engine):
    """The caller goes on just after the answer began: it is cancelled, and the next answer
    is to the first part and the rest together, as if the turn had never ended."""
    first, rest = clip("q_capital.wav"), clip("q_weather.wav")
    rec = Recorder()
    handle = engine.open_session(options(), rec)
    push(handle, first)
    handle.end_turn()
    rec.wait_for(events.FirstAudio)
    handle.cancel(played_frames=2)
    handle.rejoin_turn()
    push(handle, rest)
    handle.end_turn()
    done = rec.wait_for(events.Done)[0]
    assert done.turn == 2 and len(rec.of(events.Cancelled)) == 1
    assert same(done, offline(runtime, Task.A2A, np.concatenate([first, rest]), STEPS))


@pytest.mark.parametrize("gap_s, rejoins", [(0.9, True), (2.5, False)])
def test_the_page_s_call_begins_early_and_rejoins_a_false_end_of_turn(gap_s, rejoins):
    """A pause begins the answer early and speech drops it; speech soon after the end of a
    turn whose answer is playing interrupts it and goes on with that turn."""
    from realtime.transports.options import CallOptions
    from realtime.transports.webrtc.connection import Conversation
    from realtime.turns.detector import Turn, TurnEvent

    async def scenario():
        call = Conversation(CallOptions(), lambda _: None)
        call.handle = engine = StubEngine()
        speech = np.zeros(320, np.int16)
        for turn in [
            Turn(TurnEvent.STARTED, 0.0, audio=speech),
            Turn(TurnEvent.PAUSED, 1.0, speech_end_t=0.8, pause=1),
            Turn(TurnEvent.RESUMED, 1.1),
            Turn(TurnEvent.PAUSED, 1.7, speech_end_t=1.5, pause=2),
            Turn(TurnEvent.ENDED, 2.0, speech_end_t=1.5, silence_ms=500),
        ]:
            call._on_turn(turn)
        call._on_engine_event(events.AudioChunk(0, 2.1, 1, np.zeros(2400, np.float32)))
        onset_t = 1.5 + gap_s + 0.06  # (STARTED comes speech_start_ms after the onset)
        call._on_turn(Turn(TurnEvent.STARTED, onset_t, audio=speech))
        await call.close("done")
        return engine.asked, [m for m in call._outbox if m["type"] == "speech.started"]

    asked, started = asyncio.run(scenario())
    expected = ["early", "resume", "early", "end_turn", "cancel"]
    assert asked[: len(expected) + 1] == expected + (["rejoin"] if rejoins else ["close"])
    assert started[-1].get("continues") == (1 if rejoins else None)

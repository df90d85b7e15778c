"""The multi-session engine against its offline twin (Runtime.run) and against itself alone.

float32 on the tiny model, so greedy tokens are comparable exactly: a batch step, a streamed
prefill or a neighbour's failure must not change a session's answer.
"""

import threading
import time

import numpy as np
import pytest

from realtime.audio.io import load_audio
from realtime.decoding.options import DecodingOptions
from realtime.decoding.runtime import Request, Result
from realtime.engine import events
from realtime.engine.engine import Engine, EngineBusy, EngineDown, EngineOptions
from realtime.engine.session import SessionError, SessionOptions
from realtime.model import tokens
from realtime.model.prompts import Task

from .conftest import DATA

PUSH = 320  # 20 ms at 16 kHz, as a network caller pushes
TIMEOUT_S = 120


@pytest.fixture
def engine(runtime):
    engine = Engine(runtime, EngineOptions(max_sessions=8)).start()
    yield engine
    engine.stop()


class Recorder:
    """A sink per session that remembers events and lets a test wait for one."""

    def __init__(self) -> None:
        self.events: list[events.Event] = []
        self._cond = threading.Condition()

    def __call__(self, event: events.Event) -> None:
        with self._cond:
            self.events.append(event)
            self._cond.notify_all()

    def wait_for(self, kind, count: int = 1) -> list:
        with self._cond:
            ok = self._cond.wait_for(lambda: len(self.of(kind)) >= count, TIMEOUT_S)
        assert ok, f"no {kind.__name__} within {TIMEOUT_S} s: {self.kinds()}"
        return self.of(kind)

    def of(self, kind) -> list:
        return [e for e in self.events if isinstance(e, kind)]

    def kinds(self) -> list[str]:
        return [type(e).__name__ for e in self.events]


def speak(handle, pcm: np.ndarray) -> None:
    for start in range(0, len(pcm), PUSH):
        handle.push_audio(pcm[start : start + PUSH])
    handle.end_turn()


CLIPS = ["q_capital.wav", "mini_omni_sample_1.wav", "q_story.wav", "q_weather.wav"]


def clip(name: str, seconds: float | None = None) -> np.ndarray:
    pcm = load_audio(DATA / name)
    return pcm if seconds is None else pcm[: int(seconds * 16000)]


def offline(runtime, task, pcm, opts: DecodingOptions | int) -> Result:
    if isinstance(opts, int):
        opts = DecodingOptions(max_new_tokens=opts)
    request = Request(task, audio=pcm, options=opts, encoder="chunked")
    return [e for e in runtime.run(request) if isinstance(e, Result)][0]


def frames_of(result: Result) -> list[list[int]]:
    return [list(frame) for frame in zip(*result.audio_codes, strict=True)]


def test_streamed_prefill_equals_the_one_shot_twin(runtime, engine):
    # 3.6 s: one whole 2 s block is prefilled while "the caller talks", the rest at the end.
    pcm = clip("q_story.wav")
    for task in (Task.A2A, Task.A2A_BATCH):
        rec = Recorder()
        options = SessionOptions(task=task, decoding=DecodingOptions(max_new_tokens=24))
        speak(engine.open_session(options, rec), pcm)
        done = rec.wait_for(events.Done)[0]
        twin = offline(runtime, task, pcm, 24)
        assert done.text_tokens == twin.text_tokens
        assert done.frames == frames_of(twin)
        assert rec.kinds()[:3] == ["TurnEnded", "PrefillDone", "FirstText"]


@pytest.mark.slow
def test_a_batch_of_eight_changes_no_session_s_tokens(runtime, engine):
    """Eight sessions of different lengths and tasks join and leave at different steps; one
    samples (its draws hash its seed and positions, so they are the same alone or batched)."""
    greedy = [DecodingOptions(max_new_tokens=10 + 4 * i) for i in range(6)]
    plan = [(Task.A2A, CLIPS[i % 4], 1.0 + 0.4 * i, greedy[i]) for i in range(6)]
    sampled = DecodingOptions(temperature=0.8, top_k=40, top_p=0.95, max_new_tokens=20, seed=7)
    plan += [
        (Task.A2A_BATCH, "q_weather.wav", None, sampled),
        (Task.A2T, "q_capital.wav", None, DecodingOptions(max_new_tokens=30)),
    ]
    alone = [offline(runtime, task, clip(name, s), opts) for task, name, s, opts in plan]
    recorders = [Recorder() for _ in plan]
    handles = [
        engine.open_session(SessionOptions(task=task, decoding=opts), rec)
        for (task, _, _, opts), rec in zip(plan, recorders, strict=True)
    ]
    for (_, name, seconds, _), handle in zip(plan, handles, strict=True):
        speak(handle, clip(name, seconds))
        time.sleep(0.05)  # stagger the joins
    for rec, twin in zip(recorders, alone, strict=True):
        done = rec.wait_for(events.Done)[0]
        assert done.text_tokens == twin.text_tokens and done.steps == twin.steps
        assert done.frames == frames_of(twin)
    assert engine.steps < sum(twin.steps for twin in alone)  # they really shared steps


def test_cancel_stops_audio_at_once_and_frees_the_slot(runtime, tiny_dir):
    engine = Engine(runtime, EngineOptions(max_sessions=1)).start()
    try:
        rec = Recorder()
        handle = engine.open_session(
            SessionOptions(decoding=DecodingOptions(max_new_tokens=400)), rec
        )
        speak(handle, clip("q_capital.wav"))
        rec.wait_for(events.AudioChunk, count=2)
        handle.cancel()
        cancelled = rec.wait_for(events.Cancelled)[0]
        time.sleep(0.3)
        after = [e for e in rec.events if e.t > cancelled.t]
        assert not [e for e in after if isinstance(e, (events.AudioChunk, events.TextDelta))]
        assert not rec.of(events.Done)
        with pytest.raises(EngineBusy):
            engine.open_session(SessionOptions(), Recorder())
        handle.close()
        deadline = time.monotonic() + 5
        while engine.active_sessions and time.monotonic() < deadline:
            time.sleep(0.01)
        rec2 = Recorder()
        options = SessionOptions(decoding=DecodingOptions(max_new_tokens=12))
        speak(engine.open_session(options, rec2), clip("q_capital.wav"))
        assert rec2.wait_for(events.Done)[0].steps == 12
    finally:
        engine.stop()


def test_a_failing_session_does_not_disturb_the_others(runtime, engine):
    good = Recorder()
    speak(
        engine.open_session(SessionOptions(decoding=DecodingOptions(max_new_tokens=20)), good),
        clip("q_capital.wav"),
    )
    too_long = Recorder()
    speak(engine.open_session(SessionOptions(), too_long), np.zeros(16000 * 31, np.float32))
    wrong_kind = Recorder()
    engine.open_session(SessionOptions(task=Task.T2A), wrong_kind).push_audio(np.zeros(320))
    silent = Recorder()
    engine.open_session(SessionOptions(encoder="exact"), silent).end_turn()
    for rec in (too_long, wrong_kind, silent):
        assert rec.wait_for(events.Error)[0].message
    time.sleep(0.2)
    assert not too_long.of(events.Done)  # the rest of the failed turn was not answered
    done = good.wait_for(events.Done)[0]
    assert done.text_tokens == offline(runtime, Task.A2A, clip("q_capital.wav"), 20).text_tokens


class Fault:
    """An Engine.fault_hook that raises in `stage` whenever its batch holds session `sid`'s
    answer at `step` or later, while armed; it notes the batch sizes it raised in."""

    def __init__(self, stage: str, sid: int, step: int, raises=RuntimeError) -> None:
        self.stage, self.sid, self.step, self.raises = stage, sid, step, raises
        self.armed, self.sizes = True, []

    def __call__(self, stage: str, lanes: list) -> None:
        hit = [lane for lane in lanes if lane.sid == self.sid and lane.gen is not None]
        if self.armed and stage == self.stage and hit and hit[0].gen.steps >= self.step:
            self.sizes.append(len(lanes))
            raise self.raises(f"injected into session {self.sid}")


@pytest.mark.parametrize("stage", ["step", "vocode"])
def test_a_fault_in_one_session_s_batch_fails_only_its_turn(runtime, engine, stage):
    """The failed batch is run again for each session alone: the neighbour's answer is its
    offline twin's, and the faulty session answers its next turn as if nothing had happened."""
    options = SessionOptions(decoding=DecodingOptions(max_new_tokens=40))
    good, bad = Recorder(), Recorder()
    good_handle = engine.open_session(options, good)
    bad_handle = engine.open_session(options, bad)
    engine.fault_hook = fault = Fault(stage, bad_handle.id, step=10)
    capital, weather = clip("q_capital.wav"), clip("q_weather.wav", 1.5)
    speak(good_handle, capital)
    speak(bad_handle, weather)
    assert "injected" in bad.wait_for(events.Error)[0].message
    done = good.wait_for(events.Done)[0]
    twin = offline(runtime, Task.A2A, capital, 40)
    assert done.text_tokens == twin.text_tokens and done.frames == frames_of(twin)
    assert fault.sizes[0] == 2 and not bad.of(events.Done)  # it failed in a batch, and alone
    fault.armed = False
    speak(bad_handle, weather)
    again = bad.wait_for(events.Done)[0]
    twin = offline(runtime, Task.A2A, weather, 40)
    assert again.turn == 2 and again.text_tokens == twin.text_tokens
    assert again.frames == frames_of(twin)


class Killed(BaseException):
    """What no loop catches: it ends the inference thread."""


def test_a_dead_inference_thread_refuses_sessions_and_tells_the_live_ones(runtime):
    engine = Engine(runtime, EngineOptions(max_sessions=2)).start()
    try:
        rec = Recorder()
        handle = engine.open_session(SessionOptions(), rec)
        engine.fault_hook = Fault("step", handle.id, step=2, raises=Killed)
        speak(handle, clip("q_capital.wav", 1.0))
        assert "Killed: injected" in rec.wait_for(events.Error)[0].message
        engine._thread.join(TIMEOUT_S)
        assert engine.down is not None and "Killed: injected" in engine.down
        with pytest.raises(EngineDown, match="the inference thread died: Killed"):
            engine.open_session(SessionOptions(), Recorder())
        handle.push_audio(np.zeros(PUSH, np.float32))  # the handle still only enqueues
        handle.close()
    finally:
        engine.stop()  # (returns at once: the thread is gone)


def test_a_speech_session_answers_typed_text_as_its_text_twin(runtime, engine):
    """a2a given text answers as t2a (a2t as t2t) would; a half-heard spoken turn before it is
    dropped, not heard with it."""
    question, opts = "What is the capital of France?", DecodingOptions(max_new_tokens=24)
    for task, twin_task in ((Task.A2A, Task.T2A), (Task.A2T, Task.T2T)):
        twin = [e for e in runtime.run(Request(twin_task, text=question, options=opts))]
        twin = [e for e in twin if isinstance(e, Result)][0]
        rec = Recorder()
        handle = engine.open_session(SessionOptions(task=task, decoding=opts), rec)
        for start in range(0, 16000 * 3, PUSH):  # 3 s: one 2 s block is prefilled already
            handle.push_audio(clip("q_story.wav")[start : start + PUSH])
        handle.submit_text(question)
        done = rec.wait_for(events.Done)[0]
        assert done.text_tokens == twin.text_tokens and done.frames == frames_of(twin)
        assert done.steps == twin.steps


def test_a_turn_answered_in_text_only_equals_the_silent_twin(runtime, engine):
    """speak=False on an a2a session answers that turn as a2t (typed: as t2t) would, beside a
    neighbour that speaks; its next turn speaks again; a task with no silent twin says so."""
    pcm, opts = clip("q_story.wav"), DecodingOptions(max_new_tokens=24)
    speaking, quiet = Recorder(), Recorder()
    neighbour = engine.open_session(SessionOptions(decoding=opts), speaking)
    handle = engine.open_session(SessionOptions(decoding=opts), quiet)
    for start in range(0, len(pcm), PUSH):
        handle.push_audio(pcm[start : start + PUSH])
        neighbour.push_audio(pcm[start : start + PUSH])
    handle.end_turn(speak=False)
    neighbour.end_turn()
    done = quiet.wait_for(events.Done)[0]
    twin = offline(runtime, Task.A2T, pcm, opts)
    assert done.text_tokens == twin.text_tokens and done.steps == twin.steps
    assert done.frames == [] and not quiet.of(events.AudioChunk)
    assert speaking.wait_for(events.Done)[0].frames == frames_of(
        offline(runtime, Task.A2A, pcm, 24)
    )

    question = "What is the capital of France?"
    typed = [e for e in runtime.run(Request(Task.T2T, text=question, options=opts))]
    typed = [e for e in typed if isinstance(e, Result)][0]
    handle.submit_text(question, speak=False)
    assert quiet.wait_for(events.Done, 2)[1].text_tokens == typed.text_tokens
    speak(handle, pcm)  # the session's own task again: spoken
    assert quiet.wait_for(events.Done, 3)[2].frames == frames_of(
        offline(runtime, Task.A2A, pcm, 24)
    )

    batch = Recorder()
    handle = engine.open_session(SessionOptions(task=Task.A2A_BATCH), batch)
    handle.push_audio(pcm[:PUSH])
    handle.end_turn(speak=False)
    assert "cannot answer in text only" in batch.wait_for(events.Error)[0].message


def asr_twin(runtime, pcm: np.ndarray, done: events.TranscriptDone) -> Result:
    """The asr request of the same audio, as long as the transcript (which ran to its limit,
    or to the _eot the twin reaches then too)."""
    limit = len(done.text_tokens) + (done.reason != "length")
    return offline(runtime, Task.ASR, pcm, DecodingOptions(max_new_tokens=limit))


def test_a_transcript_equals_the_asr_twin_and_leaves_the_answer_as_it_was(runtime, engine):
    """The caller's words come from the asr task on the session's spare row, decoded in the
    batch beside the answer: equal to an asr request's, with the answer equal to its own twin.
    A barge-in cancels the answer, not the transcript; a turn may leave it out."""
    opts = DecodingOptions(max_new_tokens=24)
    rec = Recorder()
    handle = engine.open_session(SessionOptions(transcribe=True, decoding=opts), rec)
    for name in ("q_story.wav", "q_capital.wav"):
        pcm = clip(name)
        speak(handle, pcm)
        done = rec.wait_for(events.TranscriptDone, len(rec.of(events.TranscriptDone)) + 1)[-1]
        twin = asr_twin(runtime, pcm, done)
        assert done.text_tokens == twin.text_tokens and done.reason == twin.stop_reason
        deltas = [e.text for e in rec.of(events.TranscriptDelta) if e.turn == done.turn]
        assert "".join(deltas).strip() == done.text
        answer = rec.wait_for(events.Done, done.turn)[-1]
        assert answer.frames == frames_of(offline(runtime, Task.A2A, pcm, opts))
        if done.turn == 1:  # its row joined the steps once the answer's first audio was out
            rows = [rows for rows, _ in engine.step_log]
            assert rows[0] == 1 and 2 in rows and rows.index(2) >= tokens.MAX_AUDIO_DELAY

    pcm = clip("q_weather.wav")
    speak(handle, pcm)
    rec.wait_for(events.TurnEnded, 3)
    handle.cancel()  # the caller spoke over the answer: its words are still transcribed
    rec.wait_for(events.Cancelled)
    done = rec.wait_for(events.TranscriptDone, 3)[-1]
    assert done.turn == 3
    assert done.text_tokens == asr_twin(runtime, pcm, done).text_tokens

    handle.end_turn()  # no audio: an error, and the transcript it asked for fails too
    speak_only = clip("q_capital.wav")
    for start in range(0, len(speak_only), PUSH):
        handle.push_audio(speak_only[start : start + PUSH])
    handle.end_turn(transcribe=False)
    rec.wait_for(events.Done, 3)  # (the third turn was cancelled)
    time.sleep(0.2)
    assert {e.turn for e in rec.of(events.TranscriptDone)} == {1, 2, 3}
    assert [e.turn for e in rec.of(events.TranscriptFailed)] == [4]
    assert [e.turn for e in rec.of(events.Error)] == [4]

    refused = Recorder()
    engine.open_session(SessionOptions(decoding=opts), refused).end_turn(transcribe=True)
    assert "no row to transcribe" in refused.wait_for(events.Error)[0].message
    assert len(refused.of(events.TranscriptFailed)) == 1
    with pytest.raises(SessionError):
        engine.open_session(SessionOptions(task=Task.A2A_BATCH, transcribe=True), refused)


def test_a_transcript_waits_for_the_row_while_the_one_before_runs(runtime):
    """Two transcripts cannot share the spare row: a turn that ends while the last one's
    transcript runs has its own start once that is over, both equal to their asr twins. One
    still waiting when the caller's next turn is prefilled over its prompt fails. (The tiny
    model's asr never picks _eot: each transcript runs to its length limit, tens of steps,
    while the next turns arrive at once.)"""
    engine = Engine(runtime, EngineOptions(max_sessions=1)).start()
    try:
        rec = Recorder()
        handle = engine.open_session(
            SessionOptions(transcribe=True, decoding=DecodingOptions(max_new_tokens=4)), rec
        )
        story, capital, weather = clip("q_story.wav"), clip("q_capital.wav"), clip("q_weather.wav")
        speak(handle, story)
        speak(handle, capital)
        first, second = rec.wait_for(events.TranscriptDone, 2)
        assert (first.turn, second.turn) == (1, 2) and not rec.of(events.TranscriptFailed)
        for done, pcm in ((first, story), (second, capital)):
            assert done.text_tokens == asr_twin(runtime, pcm, done).text_tokens

        speak(handle, story)  # turn 3: its transcript runs long
        speak(handle, capital)  # turn 4: waits for the row
        for start in range(0, len(weather), PUSH):  # turn 5's speech overwrites turn 4's prompt
            handle.push_audio(weather[start : start + PUSH])
        rec.wait_for(events.TranscriptDone, 3)
        failed = rec.wait_for(events.TranscriptFailed)[0]
        assert (failed.turn, "next turn began" in failed.message) == (4, True)
        assert [e.turn for e in rec.of(events.TranscriptDone)] == [1, 2, 3]
    finally:
        engine.stop()


def test_a_session_serves_turn_after_turn(engine):
    rec = Recorder()
    handle = engine.open_session(
        SessionOptions(keep_history=True, decoding=DecodingOptions(max_new_tokens=8)), rec
    )
    for turn in range(3):
        speak(handle, clip("q_capital.wav", 1.0))
        rec.wait_for(events.Done, count=turn + 1)
    positions = [e.positions for e in rec.of(events.PrefillDone)]
    assert positions[0] < positions[1] < positions[2]  # earlier turns stayed in context


def test_first_audio_waits_until_it_outlasts_the_loop_s_period(runtime, monkeypatch):
    """Where a step takes most of a frame, the answer's first chunk (2/3 of a frame) is held
    until playing it bridges the wait for the next: 1.5 loop periods of audio. A clock that
    reads 30 ms later at each look makes every period 60 ms; the answer itself is unchanged."""
    from types import SimpleNamespace

    import realtime.engine

    def answer(options: SessionOptions) -> tuple[list[int], list]:
        engine = Engine(runtime, EngineOptions(max_sessions=1)).start()
        try:
            rec = Recorder()
            speak(engine.open_session(options, rec), clip("q_capital.wav"))
            done = rec.wait_for(events.Done)[0]
            first = rec.kinds().index("FirstAudio")
            assert rec.kinds()[first + 1] == "AudioChunk"
            return [len(e.pcm) for e in rec.of(events.AudioChunk)], done.frames
        finally:
            engine.stop()

    options = SessionOptions(decoding=DecodingOptions(max_new_tokens=24))
    unheld, frames = answer(options)
    ticks = iter(range(1_000_000))
    slow = SimpleNamespace(**{**vars(time), "perf_counter": lambda: next(ticks) * 0.03})
    monkeypatch.setattr(realtime.engine.engine, "time", slow)
    held, same_frames = answer(options)
    lead = int(realtime.engine.engine.FIRST_AUDIO_PERIODS * 0.06 * tokens.OUTPUT_SAMPLE_RATE_HZ)
    assert unheld[0] < lead <= held[0] < lead + unheld[1]  # it did wait, for just enough
    assert sum(held) == sum(unheld) and same_frames == frames  # (SNAC's noise differs per run)


def test_a_cancel_stops_the_answer_it_names_whenever_it_arrives(engine):
    """A cancel overtakes queued input: one meant for an answer whose end_turn is still queued
    stops that answer as it begins; one that comes after a newer turn leaves it be (it once
    cancelled the newer answer, and its client waited for audio forever)."""
    question = clip("q_capital.wav")
    rec = Recorder()
    handle = engine.open_session(SessionOptions(decoding=DecodingOptions(max_new_tokens=30)), rec)
    handle.cancel(turn=1)  # before turn 1 exists
    speak(handle, question)
    speak(handle, question)
    assert rec.wait_for(events.Done)[0].turn == 2
    assert [e.turn for e in rec.of(events.Cancelled)] == [1]
    speak(handle, question)
    rec.wait_for(events.TurnEnded, 3)
    speak(handle, question)  # turn 4, while turn 3's answer may still run
    rec.wait_for(events.TurnEnded, 4)
    handle.cancel(turn=3)  # late: turn 4 goes on
    done = rec.wait_for(events.Done, 2)[-1]
    assert done.turn == 4 and rec.of(events.Cancelled)[-1].turn == 3

"""Turn detection (realtime/turns/detector.py) on real speech clips: onset with pre-roll, hangover,
limits."""

import fractions

import av
import numpy as np
import pytest

from realtime.turns.detector import VAD_FRAME_MS, VAD_FRAME_SAMPLES, Framer, TurnDetector, TurnEvent
from realtime.turns.options import TurnOptions

from .serving import clip

PCM16_MAX = 32767


def frames_of(pcm: np.ndarray) -> list[np.ndarray]:
    pcm16 = np.round(pcm * PCM16_MAX).astype(np.int16)
    whole = len(pcm16) // VAD_FRAME_SAMPLES * VAD_FRAME_SAMPLES
    return list(pcm16[:whole].reshape(-1, VAD_FRAME_SAMPLES))


def run(detector: TurnDetector, pcm: np.ndarray):
    """Feed 20 ms frames as if they arrived in real time; the events, with frame times."""
    events = []
    for i, frame in enumerate(frames_of(pcm)):
        events += detector.push(frame, t=i * VAD_FRAME_MS / 1000)
    return events


def with_silence(pcm: np.ndarray, before_s: float, after_s: float) -> np.ndarray:
    pad = lambda s: np.zeros(int(s * 16_000), np.float32)  # noqa: E731
    return np.concatenate([pad(before_s), pcm, pad(after_s)])


def test_one_clip_is_one_turn_with_preroll_and_hangover():
    options = TurnOptions()
    events = run(TurnDetector(options), with_silence(clip("q_capital.wav"), 1.0, 1.5))
    kinds = [e.kind for e in events]
    assert kinds.count(TurnEvent.STARTED) == 1 and kinds.count(TurnEvent.ENDED) == 1
    assert kinds[0] is TurnEvent.STARTED and kinds[-1] is TurnEvent.ENDED
    started, ended = events[0], events[-1]
    assert len(started.audio) == options.preroll_ms * 16  # the onset came after 1 s of silence
    assert ended.t - ended.speech_end_t == pytest.approx(options.end_of_turn_ms / 1000, abs=0.03)
    heard = sum(len(e.audio) for e in events if e.audio is not None) / 16_000
    assert 2.0 <= heard <= 2.03 + 1.5  # the whole question, pre-roll and hangover included


def test_silence_is_no_turn():
    assert run(TurnDetector(TurnOptions()), np.zeros(32_000, np.float32)) == []


def test_a_pause_shorter_than_the_hangover_keeps_the_turn():
    speech = clip("q_capital.wav")
    # The clip ends in 240 ms of silence: with 100 ms more the pause is 340 ms.
    twice = np.concatenate([speech, np.zeros(1_600, np.float32), speech])
    events = run(TurnDetector(TurnOptions(end_of_turn_ms=500)), with_silence(twice, 0.5, 1.0))
    assert [e.kind for e in events].count(TurnEvent.ENDED) == 1


def test_a_monologue_is_cut_at_max_turn():
    story = with_silence(clip("q_story.wav"), 0.5, 0.5)
    events = run(TurnDetector(TurnOptions(max_turn_ms=1000)), story)
    ends = [e for e in events if e.kind is TurnEvent.ENDED]
    assert len(ends) >= 2  # cut, then the rest of the story starts a new turn


def test_aggressiveness_is_validated():
    detector = TurnDetector(TurnOptions())
    detector.set_aggressiveness(3)
    assert detector.aggressiveness == 3
    with pytest.raises(ValueError, match="0..3"):
        detector.set_aggressiveness(4)


def kinds_of(events) -> list[TurnEvent]:
    return [e.kind for e in events if e.kind is not TurnEvent.AUDIO]


def paused_question(pause_s: float) -> np.ndarray:
    speech = clip("q_capital.wav")
    return with_silence(np.concatenate([speech, np.zeros(int(pause_s * 16_000)), speech]), 0.5, 1)


def test_a_pause_is_announced_then_resumed_within_one_turn():
    options = TurnOptions(pause_ms=200, end_of_turn_ms=800)
    events = run(TurnDetector(options), paused_question(0.3))
    assert kinds_of(events) == [
        TurnEvent.STARTED, TurnEvent.PAUSED, TurnEvent.RESUMED, TurnEvent.PAUSED, TurnEvent.ENDED
    ]  # fmt: skip
    paused = [e for e in events if e.kind is TurnEvent.PAUSED]
    assert [p.pause for p in paused] == [1, 2]
    first = paused[0]
    assert first.t - first.speech_end_t == pytest.approx(0.2, abs=0.03)


def test_no_pause_is_announced_when_the_hangover_is_shorter():
    events = run(TurnDetector(TurnOptions(pause_ms=600, end_of_turn_ms=500)), paused_question(1))
    assert TurnEvent.PAUSED not in kinds_of(events)
    assert kinds_of(events).count(TurnEvent.ENDED) == 2


def test_a_judged_turn_ends_at_the_pause_only_when_the_model_says_complete():
    options = TurnOptions(end_of_turn="smart-turn", pause_ms=200, incomplete_ms=1000)
    detector = TurnDetector(options)
    events = run(detector, with_silence(clip("q_capital.wav"), 0.5, 0.0))
    events += [detector.push(np.zeros(VAD_FRAME_SAMPLES, np.int16), 9.0)[0] for _ in range(12)]
    paused = [e for e in events if e.kind is TurnEvent.PAUSED]
    assert len(paused) == 1 and detector.paused
    assert len(detector.turn_audio()) > 16_000  # the turn so far, for the model
    assert detector.judge(paused[0].pause + 1, True, 9.1) == []  # a stale verdict: ignored
    assert detector.judge(paused[0].pause, False, 9.1) == []  # incomplete: it waits
    ended = detector.judge(paused[0].pause, True, 9.2)
    assert [e.kind for e in ended] == [TurnEvent.ENDED] and not detector.in_turn
    # judged incomplete, the turn ends after incomplete_ms of silence all the same
    events = run(TurnDetector(options), with_silence(clip("q_capital.wav"), 0.5, 1.5))
    ended = [e for e in events if e.kind is TurnEvent.ENDED]
    assert len(ended) == 1 and ended[0].t - ended[0].speech_end_t == pytest.approx(1.0, abs=0.03)


def test_silero_finds_the_same_turn():
    options = TurnOptions(vad="silero")
    events = run(TurnDetector(options), with_silence(clip("q_capital.wav"), 1.0, 1.5))
    assert kinds_of(events) == [TurnEvent.STARTED, TurnEvent.PAUSED, TurnEvent.ENDED]


def test_unknown_detectors_are_refused():
    for bad in (TurnOptions(vad="nope"), TurnOptions(end_of_turn="nope")):
        with pytest.raises(ValueError, match="unknown"):
            TurnDetector(bad)


def test_framer_turns_48k_stereo_into_16k_mono_20ms_frames():
    framer, out = Framer(), []
    for i in range(50):  # 1 s of what aiortc's opus decoder hands over
        frame = av.AudioFrame.from_ndarray(
            np.zeros((1, 1920), np.int16), format="s16", layout="stereo"
        )
        frame.sample_rate, frame.pts = 48_000, i * 960
        frame.time_base = fractions.Fraction(1, 48_000)
        out += framer.push(frame)
    assert all(f.shape == (VAD_FRAME_SAMPLES,) and f.dtype == np.int16 for f in out)
    assert 48 <= len(out) <= 50  # the resampler holds back a few samples


def test_a_model_that_cannot_load_is_replaced_and_the_log_says_so(monkeypatch, caplog):
    from realtime.transports import turn_taking
    from realtime.turns.models import TurnModelError

    def missing(*args, **kwargs):
        raise TurnModelError("smart-turn.onnx: no such model file (reinstall it: pip ...)")

    monkeypatch.setattr(turn_taking, "EndOfTurnModel", missing)
    monkeypatch.setattr(turn_taking, "_model", None)
    monkeypatch.setattr(turn_taking, "_model_error", None)
    monkeypatch.setattr(turn_taking, "speech_detector", missing)
    monkeypatch.setattr(turn_taking, "_silero_error", None)
    with caplog.at_level("WARNING", logger="realtime.server"):
        taking = turn_taking.TurnTaking(TurnOptions(vad="silero", end_of_turn="smart-turn"), print)
        again = turn_taking.TurnTaking(TurnOptions(vad="silero", end_of_turn="smart-turn"), print)
    for options in (taking.options, again.options):
        assert (options.vad, options.end_of_turn) == ("webrtc", "silence")
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 2  # once each, not once a call
    assert "Smart Turn is unavailable (smart-turn.onnx: no such model file" in said[0]
    assert "Silero VAD is unavailable" in said[1]
    assert "unavailable" in turn_taking.warm_up()

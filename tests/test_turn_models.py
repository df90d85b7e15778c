"""The learned turn models against their reference: Smart Turn's features and probabilities
equal pipecat's analyzer's on real speech, Silero's per-frame windows equal pipecat's window by
window for any frame size, speech is speech and silence or noise is not, and a missing or
corrupt model file is one clear error."""

import numpy as np
import pytest

from realtime.audio.io import load_audio, to_pcm16
from realtime.turns import smart_turn
from realtime.turns.models import SILERO_VAD_FILE, TurnModelError, bundled_model
from realtime.turns.silero import WINDOW_SAMPLES, SileroVAD
from realtime.turns.smart_turn import EndOfTurnModel, fit_window, log_mel_features

from .conftest import DATA

CLIPS = sorted(p.name for p in DATA.glob("*.wav"))
# The features are computed the same way in float64, so they agree to float32's last bit; the
# model's quantised activations would turn even 1e-5 into 0.1 of probability.
FEATURE_TOLERANCE = 1e-6
PROBABILITY_TOLERANCE = 1e-3
SILERO_TOLERANCE = 1e-5  # same input, same session: equal but for float summation order
FRAME_SAMPLES = 320  # 20 ms at 16 kHz, webrtcvad's and TurnDetector's frame
MIN_VOICED_SHARE = 0.4  # of a speech clip's 20 ms frames, its pauses and silent ends included
NOISE_RMS = 0.03  # about -30 dBFS: a fan or a street behind the caller


@pytest.fixture(scope="module")
def end_of_turn() -> EndOfTurnModel:
    return EndOfTurnModel()


def pipecat_probability(model: EndOfTurnModel, audio: np.ndarray) -> float:
    """Smart Turn the way pipecat's LocalSmartTurnAnalyzerV3 runs it, on our session."""
    from pipecat.audio.turn.smart_turn._whisper_features import (
        compute_whisper_log_mel_features,
    )

    window = audio[-smart_turn.WINDOW_SAMPLES :]
    window = np.pad(window, (smart_turn.WINDOW_SAMPLES - len(window), 0))
    features = compute_whisper_log_mel_features(window, do_normalize=True)
    return model._session.run(None, {"input_features": features[None]})[0][0].item()


@pytest.mark.parametrize("clip", CLIPS)
def test_features_equal_pipecats(clip):
    from pipecat.audio.turn.smart_turn._whisper_features import (
        compute_whisper_log_mel_features,
    )

    window = fit_window(load_audio(DATA / clip))
    ours = log_mel_features(window)
    assert ours.shape == (smart_turn.MEL_BANDS, smart_turn.MEL_FRAMES)
    theirs = compute_whisper_log_mel_features(window, do_normalize=True)
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=FEATURE_TOLERANCE)


@pytest.mark.parametrize("clip", CLIPS)
def test_probability_equals_pipecats_analyzer(end_of_turn, clip):
    audio = load_audio(DATA / clip)
    for part in (audio, audio[: len(audio) // 2]):  # a whole question and half of one
        ours = end_of_turn.probability(part)
        assert 0.0 <= ours <= 1.0
        assert abs(ours - pipecat_probability(end_of_turn, part)) < PROBABILITY_TOLERANCE


def test_int16_and_long_audio(end_of_turn):
    """int16 is scaled as load_audio scales it; of a long turn only the last 8 s count."""
    audio = load_audio(DATA / "two_turns.wav")
    as_int16 = to_pcm16(audio)
    assert end_of_turn.probability(as_int16) == end_of_turn.probability(as_int16 / 32768.0)
    long = np.concatenate([np.random.default_rng(0).normal(0, 0.1, 40_000), audio])
    tail = long[-smart_turn.WINDOW_SAMPLES :]
    assert end_of_turn.probability(long.astype(np.float32)) == end_of_turn.probability(tail)


def frames_of(pcm: np.ndarray, size: int) -> list[np.ndarray]:
    return [pcm[i : i + size] for i in range(0, len(pcm) - size + 1, size)]


@pytest.mark.parametrize("frame_samples", [FRAME_SAMPLES, 160, 512, 1000])
def test_silero_windows_equal_pipecats(frame_samples):
    """Streaming in frames of any size scores the same windows as pipecat's model wrapper."""
    from pipecat.audio.vad.silero import SileroOnnxModel

    pcm = to_pcm16(load_audio(DATA / "two_turns.wav"))[: 60 * WINDOW_SAMPLES]
    reference = SileroOnnxModel(str(bundled_model(SILERO_VAD_FILE)))
    audio = pcm.astype(np.float32) / 32768.0
    expected = [reference(w, 16_000).item() for w in frames_of(audio, WINDOW_SAMPLES)]
    vad = SileroVAD()
    seen = [p for frame in frames_of(pcm, frame_samples) for p in vad.push(frame)]
    assert len(seen) == len(frames_of(pcm, frame_samples)) * frame_samples // WINDOW_SAMPLES
    np.testing.assert_allclose(seen, expected[: len(seen)], atol=SILERO_TOLERANCE)


def voiced_share(vad: SileroVAD, pcm: np.ndarray) -> float:
    return float(np.mean([vad.is_speech(f) for f in frames_of(pcm, FRAME_SAMPLES)]))


@pytest.mark.parametrize("clip", CLIPS)
def test_silero_hears_speech(clip):
    """Most of each clip is speech (the least: 46% of mini_omni_sample_1, which pauses)."""
    assert voiced_share(SileroVAD(), to_pcm16(load_audio(DATA / clip))) > MIN_VOICED_SHARE


def test_silero_ignores_silence_and_noise():
    rng = np.random.default_rng(0)
    vad = SileroVAD()
    assert voiced_share(vad, np.zeros(16_000 * 3, np.int16)) == 0.0
    vad.reset()
    noise = to_pcm16(rng.normal(0.0, NOISE_RMS, 16_000 * 3))
    assert voiced_share(vad, noise) < 0.05


def test_silero_reset_and_shared_session():
    pcm = to_pcm16(load_audio(DATA / "q_weather.wav"))
    first, second = SileroVAD(), SileroVAD(threshold=0.7)
    assert first._session is second._session
    a = [first.is_speech(f) and first.probability for f in frames_of(pcm, FRAME_SAMPLES)]
    first.reset()
    b = [first.is_speech(f) and first.probability for f in frames_of(pcm, FRAME_SAMPLES)]
    assert a == b
    with pytest.raises(ValueError):
        second.set_threshold(1.5)


def test_missing_model_is_one_clear_error(tmp_path):
    missing = tmp_path / "gone.onnx"
    for load in (EndOfTurnModel, lambda p: SileroVAD(path=p)):
        with pytest.raises(TurnModelError, match="no such model file.*pip install") as info:
            load(missing)
        assert str(missing) in str(info.value) and "\n" not in str(info.value)


def test_corrupt_model_is_one_clear_error(tmp_path):
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(np.random.default_rng(0).bytes(4096))
    for load in (EndOfTurnModel, lambda p: SileroVAD(path=p)):
        with pytest.raises(TurnModelError, match="not a readable ONNX model") as info:
            load(garbage)
        assert str(garbage) in str(info.value) and "\n" not in str(info.value)
        assert info.value.__cause__ is None and info.value.__suppress_context__


def test_the_wrong_model_is_one_clear_error():
    with pytest.raises(TurnModelError, match="a different model"):
        EndOfTurnModel(bundled_model(SILERO_VAD_FILE))

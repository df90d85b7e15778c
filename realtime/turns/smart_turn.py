"""End of turn from the audio itself: Smart Turn v3 (a Whisper-tiny encoder with a classifier
head, int8, run by ONNX Runtime) says how likely the caller's turn so far is complete.

    the turn's 16 kHz audio -> last 8 s, zeros in front -> normalised waveform
    -> log-mel (80 x 800, Whisper's 25 ms / 10 ms frames) -> model -> P(complete)

The features are computed in float64 numpy the way the model was trained (Hugging Face's
WhisperFeatureExtractor with do_normalize). The model's activations are quantised, so a feature
change of 1e-5 can move the probability by 0.1: features from whisper's float32 torch path are
close (4e-5) but not close enough, hence this module's own float64 path.

About 75 ms per call on one core of this project's 2-core CI machine, nearly all of it the
model; synchronous and thread-safe, so the server calls it from an executor thread.
"""

import numpy as np

from realtime.audio.io import from_pcm16
from realtime.model import tokens
from realtime.turns.models import SMART_TURN_FILE, ModelPath, bundled_model, open_session

WINDOW_S = 8  # the model hears the last 8 s of the turn
WINDOW_SAMPLES = WINDOW_S * tokens.INPUT_SAMPLE_RATE_HZ  # 128_000
FFT_SAMPLES = 400  # 25 ms analysis window, as Whisper's
HOP_SAMPLES = 160  # 10 ms between frames
MEL_BANDS = 80
MEL_FRAMES = WINDOW_SAMPLES // HOP_SAMPLES  # 800
NORMALISE_EPS = 1e-7  # added to the waveform's variance (the feature extractor's)
POWER_FLOOR = 1e-10  # mel power below this is clamped before the log
LOG_RANGE = 8.0  # log10 mel power is clamped to 80 dB below the window's loudest bin
MODEL_INPUTS = ("input_features",)


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney's mel scale: linear (3 mel per 200 Hz) up to 1 kHz, logarithmic above."""
    mel = 3.0 * hz / 200.0
    log_step = np.log(6.4) / 27.0
    return np.where(hz >= 1000.0, 15.0 + np.log(np.maximum(hz, 1.0) / 1000.0) / log_step, mel)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    log_step = np.log(6.4) / 27.0
    return np.where(mel >= 15.0, 1000.0 * np.exp(log_step * (mel - 15.0)), 200.0 * mel / 3.0)


def mel_filters() -> np.ndarray:
    """(MEL_BANDS, FFT_SAMPLES // 2 + 1) triangles evenly spaced in mel, each of unit area."""
    nyquist_hz = tokens.INPUT_SAMPLE_RATE_HZ / 2
    edges_hz = _mel_to_hz(np.linspace(0.0, _hz_to_mel(np.array(nyquist_hz)), MEL_BANDS + 2))
    bins_hz = np.linspace(0.0, nyquist_hz, FFT_SAMPLES // 2 + 1)
    offsets = edges_hz[:, None] - bins_hz[None, :]  # (MEL_BANDS + 2, bins)
    widths = np.diff(edges_hz)[:, None]
    rising = -offsets[:-2] / widths[:-1]
    falling = offsets[2:] / widths[1:]
    triangles = np.maximum(0.0, np.minimum(rising, falling))  # (MEL_BANDS, bins)
    return triangles * (2.0 / (edges_hz[2:] - edges_hz[:-2]))[:, None]


_FILTERS = mel_filters()
_HANN = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(FFT_SAMPLES) / FFT_SAMPLES)  # periodic


def fit_window(audio: np.ndarray) -> np.ndarray:
    """The last WINDOW_SAMPLES of float32 `audio`, zero-padded in front when shorter."""
    tail = audio[-WINDOW_SAMPLES:]
    return np.concatenate([np.zeros(WINDOW_SAMPLES - len(tail), np.float32), tail])


def log_mel_features(window: np.ndarray) -> np.ndarray:
    """(MEL_BANDS, MEL_FRAMES) float32 log-mel of a WINDOW_SAMPLES float32 waveform, in about
    [-1, 1]: normalised to zero mean and unit variance first (in float32, as in training)."""
    x = (window - window.mean()) / np.sqrt(window.var() + NORMALISE_EPS)
    half = FFT_SAMPLES // 2
    padded = np.pad(x.astype(np.float64), half, mode="reflect")  # centred frames
    frames = np.lib.stride_tricks.sliding_window_view(padded, FFT_SAMPLES)[::HOP_SAMPLES]
    power = np.abs(np.fft.rfft(frames * _HANN, axis=-1)) ** 2  # (MEL_FRAMES + 1, bins)
    log_mel = np.log10(np.maximum(POWER_FLOOR, _FILTERS @ power.T))[:, :MEL_FRAMES]
    log_mel = np.maximum(log_mel, log_mel.max() - LOG_RANGE)
    return ((log_mel + 4.0) / 4.0).astype(np.float32)


def as_float(audio: np.ndarray) -> np.ndarray:
    """16 kHz mono as float32 in [-1, 1]: int16 is scaled, floats pass through."""
    if audio.dtype == np.int16:
        return from_pcm16(audio)
    return np.asarray(audio, np.float32).reshape(-1)


class EndOfTurnModel:
    """P(the caller's turn is complete) from the turn's audio; one session, thread-safe."""

    def __init__(self, path: ModelPath | None = None, threads: int = 1) -> None:
        self.path = path if path is not None else bundled_model(SMART_TURN_FILE)
        self._session = open_session(self.path, MODEL_INPUTS, threads)

    def probability(self, audio: np.ndarray) -> float:
        """`audio`: the turn so far, 16 kHz mono, float32 in [-1, 1] or int16."""
        features = log_mel_features(fit_window(as_float(audio)))[None]  # (1, 80, 800)
        (scores,) = self._session.run(None, {MODEL_INPUTS[0]: features})  # (1, 1) sigmoid
        return float(np.asarray(scores).reshape(-1)[0])

"""Speech or not, per 20 ms frame, from Silero VAD v5 (a small recurrent network run by ONNX
Runtime): a drop-in for webrtcvad in realtime/turns/detector.py.

    20 ms int16 frames -> buffer -> every 512 new samples: [64 samples of context | 512]
    -> model (with its recurrent state) -> P(speech) -> thresholded with hysteresis

320-sample frames and 512-sample windows line up every 8 frames (5 windows), so a frame runs
the model at most once; a frame without a new window repeats the latest decision, which is at
most 28 ms old. About 190 us per window, 120 us per frame on average (0.6% of one core
per caller), on one core of this project's 2-core CI machine (benchmarks/vad_compare.py).

One session per model file serves every caller (ONNX Runtime's run is thread-safe); each
`SileroVAD` keeps its own state, allocated once and cleared in place by `reset()`.
"""

import threading
from typing import TYPE_CHECKING

import numpy as np

from realtime.audio.io import from_pcm16
from realtime.model import tokens
from realtime.turns.models import SILERO_VAD_FILE, ModelPath, bundled_model, open_session

WINDOW_SAMPLES = 512  # Silero v5's window at 16 kHz (32 ms)
CONTEXT_SAMPLES = 64  # the previous window's tail, prepended to each window
STATE_SHAPE = (2, 1, 128)  # the recurrent state: (layers, batch, units)
# Speech stays speech until P(speech) falls this far below the threshold: the probability
# sags between syllables, and without the margin a word flickers voiced/unvoiced, restarting
# the detector's count of voiced frames (Silero's own streaming iterator uses 0.15).
HYSTERESIS = 0.15
MODEL_INPUTS = ("input", "state", "sr")

if TYPE_CHECKING:
    import onnxruntime as ort

_sessions: dict[str, "ort.InferenceSession"] = {}
_sessions_lock = threading.Lock()


def shared_session(path: ModelPath) -> "ort.InferenceSession":
    """The one session for the model at `path`, opened on first use."""
    key = str(path)
    with _sessions_lock:
        if key not in _sessions:
            _sessions[key] = open_session(path, MODEL_INPUTS)
        return _sessions[key]


class SileroVAD:
    """`is_speech(frame)` per 20 ms int16 frame at 16 kHz, like webrtcvad's, for one caller."""

    def __init__(self, threshold: float = 0.5, path: ModelPath | None = None) -> None:
        self._session = shared_session(path if path is not None else bundled_model(SILERO_VAD_FILE))
        self._rate = np.array(tokens.INPUT_SAMPLE_RATE_HZ, np.int64)
        self._state = np.zeros(STATE_SHAPE, np.float32)
        # (1, CONTEXT + WINDOW): the model's input, context first; new samples are written
        # after the context, so the buffer never grows.
        self._input = np.zeros((1, CONTEXT_SAMPLES + WINDOW_SAMPLES), np.float32)
        self._filled = 0  # new samples in self._input after the context
        self.threshold = threshold
        self.probability = 0.0  # the latest window's P(speech)
        self.speech = False

    def set_threshold(self, threshold: float) -> None:
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"Silero threshold must be in (0, 1), got {threshold}")
        self.threshold = threshold

    def reset(self) -> None:
        """Forget the caller's audio: state, context and buffered samples cleared in place."""
        self._state.fill(0.0)
        self._input.fill(0.0)
        self._filled = 0
        self.probability, self.speech = 0.0, False

    def is_speech(self, frame: np.ndarray) -> bool:
        """Whether the speech decision after this frame (int16, any length) is "speech"."""
        self.push(frame)
        return self.speech

    def push(self, pcm: np.ndarray) -> list[float]:
        """Buffer int16 samples; P(speech) of each window they completed, oldest first."""
        samples, scored = from_pcm16(pcm), []
        while len(samples):
            taken = min(WINDOW_SAMPLES - self._filled, len(samples))
            start = CONTEXT_SAMPLES + self._filled
            self._input[0, start : start + taken] = samples[:taken]
            self._filled, samples = self._filled + taken, samples[taken:]
            if self._filled == WINDOW_SAMPLES:
                scored.append(self._run_window())
        return scored

    def _run_window(self) -> float:
        outputs = self._session.run(
            None, {"input": self._input, "state": self._state, "sr": self._rate}
        )
        self.probability = float(np.asarray(outputs[0]).reshape(-1)[0])
        self._state[...] = outputs[1]  # (2, 1, 128)
        self._input[0, :CONTEXT_SAMPLES] = self._input[0, -CONTEXT_SAMPLES:]
        self._filled = 0
        floor = self.threshold - HYSTERESIS if self.speech else self.threshold
        self.speech = self.probability >= floor
        return self.probability

"""One caller's turn-taking, for a door: the turn detector on the event loop, the end-of-turn
model off it.

    20 ms frames ─► TurnDetector ─► on_turn: STARTED, AUDIO, PAUSED, RESUMED, ENDED
                      ▲     └─ PAUSED, "smart-turn" ─► executor: P(complete) of the turn so far
                      └─────────── judge(pause, complete) ◄──────┘ (ENDED if still silent)

A door begins an early answer at PAUSED (SessionHandle.end_turn(tentative=True)), drops it at
RESUMED (resume_turn) and confirms it at ENDED (end_turn). The learned models load once per
process; one that cannot load is replaced by what needs no model (webrtcvad; the silence
hangover), and the log says so once.
"""

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import numpy as np

from realtime.turns.detector import SpeechDetector, Turn, TurnDetector, TurnEvent, speech_detector
from realtime.turns.models import TurnModelError
from realtime.turns.options import TurnOptions
from realtime.turns.smart_turn import EndOfTurnModel

# The model runs here, never on the event loop; two calls at once at most (each on one core).
MODEL_WORKERS = 2

log = logging.getLogger("realtime.server")

_executor = ThreadPoolExecutor(MODEL_WORKERS, thread_name_prefix="end-of-turn")
_lock = threading.Lock()
_model: EndOfTurnModel | None = None
_model_error: str | None = None  # why the model could not load (said once)
_silero_error: str | None = None


def end_of_turn_model() -> EndOfTurnModel | None:
    """The process's Smart Turn model, loaded on first use; None when it cannot be (logged)."""
    global _model, _model_error
    with _lock:
        if _model is None and _model_error is None:
            try:
                _model = EndOfTurnModel()
            except TurnModelError as exc:
                _model_error = str(exc)
                log.warning("end of turn by Smart Turn is unavailable (%s): turns end after"
                            " a silence instead", _model_error)  # fmt: skip
        return _model


def warm_up() -> str:
    """Load the end-of-turn model now (a server's start) and time one call; what it says."""
    model = end_of_turn_model()
    if model is None:
        return f"end-of-turn model unavailable ({_model_error}): turns end after a silence"
    began = time.perf_counter()
    model.probability(np.zeros(16_000, np.int16))
    ms = (time.perf_counter() - began) * 1000
    return f"end-of-turn model: Smart Turn v3 ({model.path}), {ms:.0f} ms a call"


def usable(options: TurnOptions) -> TurnOptions:
    """`options`, with what needs a model that cannot load replaced by what needs none."""
    if options.end_of_turn == "smart-turn" and end_of_turn_model() is None:
        options = replace(options, end_of_turn="silence")
    return options


def _speech(options: TurnOptions) -> SpeechDetector | None:
    """The options' speech detector, or None for webrtcvad when Silero cannot load (logged)."""
    global _silero_error
    if options.vad != "silero" or _silero_error is not None:
        return None
    try:
        return speech_detector(options)
    except TurnModelError as exc:
        _silero_error = str(exc)
        log.warning("Silero VAD is unavailable (%s): webrtcvad hears speech instead", exc)
        return None


class TurnTaking:
    """A TurnDetector whose pauses are judged by the end-of-turn model off the event loop. Its
    events go to `on_turn`, on the loop: those of a frame at once, a verdict's when it comes."""

    def __init__(self, options: TurnOptions, on_turn: Callable[[Turn], None]) -> None:
        options = usable(options)
        speech = _speech(options)
        if options.vad == "silero" and speech is None:
            options = replace(options, vad="webrtc")
        self.detector = TurnDetector(options, speech)
        self.options = options
        self._on_turn = on_turn
        self._model = end_of_turn_model() if self.detector.judged else None
        self._tasks: set[asyncio.Task] = set()
        self.probability: float | None = None  # the model's latest verdict, P(complete)

    @property
    def in_turn(self) -> bool:
        return self.detector.in_turn

    @property
    def aggressiveness(self) -> int:
        return self.detector.aggressiveness

    def set_aggressiveness(self, level: int) -> None:
        self.detector.set_aggressiveness(level)

    def push(self, frame: np.ndarray, t: float) -> None:
        """One 20 ms int16 frame that arrived at time t (on the event loop)."""
        for turn in self.detector.push(frame, t):
            self._on_turn(turn)
            if turn.kind is TurnEvent.PAUSED and self._model is not None:
                self._judge_later(turn.pause)

    def rejoins(self, started: Turn, last_speech_end_t: float | None) -> bool:
        """Whether speech that `started` goes on with the turn whose speech ended at
        `last_speech_end_t`: its onset came within `rejoin_ms` of that (TurnOptions)."""
        if last_speech_end_t is None:
            return False
        onset_t = started.t - self.options.speech_start_ms / 1000
        return onset_t - last_speech_end_t <= self.options.rejoin_ms / 1000

    def end(self, t: float) -> Turn:
        """End the turn now (the client committed it, or left)."""
        return self.detector.end(t)

    def close(self) -> None:
        for task in self._tasks:
            task.cancel()

    def _judge_later(self, pause: int) -> None:
        task = asyncio.get_running_loop().create_task(self._judge(pause))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _judge(self, pause: int) -> None:
        assert self._model is not None
        audio = self.detector.turn_audio()
        loop = asyncio.get_running_loop()
        try:
            self.probability = await loop.run_in_executor(_executor, self._model.probability, audio)
        except Exception:  # the turn then ends at incomplete_ms, as if judged incomplete
            log.exception("the end-of-turn model failed")
            return
        complete = self.probability >= self.options.complete_threshold
        for turn in self.detector.judge(pause, complete, time.monotonic()):
            self._on_turn(turn)

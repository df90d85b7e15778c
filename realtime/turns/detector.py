"""Turn detection: the caller's decoded audio in, "speech started / audio / turn ended" out.

    aiortc AudioFrame (opus decoded, 48 kHz) -> Framer: 16 kHz mono int16, 20 ms frames
    -> TurnDetector: webrtcvad per frame, a pre-roll ring while idle, hangover at the end

Synchronous and cheap, so the gateway runs it on its event loop: per 20 ms frame about 45 us
to resample and 5 us for webrtcvad on this project's 2-core CI machine, a quarter of a percent
of one core per caller (benchmarks/serve_latency.py). Nothing here touches torch or asyncio.
"""

from collections import deque
from dataclasses import dataclass
from enum import Enum

import av
import numpy as np
import webrtcvad

from realtime.model import tokens
from realtime.turns.options import TurnOptions

VAD_FRAME_MS = 20  # webrtcvad takes 10, 20 or 30 ms frames
VAD_FRAME_SAMPLES = tokens.INPUT_SAMPLE_RATE_HZ * VAD_FRAME_MS // 1000  # 320
AGGRESSIVENESS_LEVELS = range(4)


class Framer:
    """Any decoded audio frame -> whole 20 ms frames of 16 kHz mono int16."""

    def __init__(self) -> None:
        self._resampler = av.AudioResampler(
            format="s16", layout="mono", rate=tokens.INPUT_SAMPLE_RATE_HZ
        )
        self._pending = np.zeros(0, np.int16)

    def push(self, frame: av.AudioFrame) -> list[np.ndarray]:
        chunks = [f.to_ndarray().reshape(-1) for f in self._resampler.resample(frame)]
        pcm = np.concatenate([self._pending, *chunks])
        whole = len(pcm) // VAD_FRAME_SAMPLES * VAD_FRAME_SAMPLES
        self._pending = pcm[whole:]
        return list(pcm[:whole].reshape(-1, VAD_FRAME_SAMPLES))


class TurnEvent(Enum):
    STARTED = "started"  # audio: the pre-roll, onset included
    AUDIO = "audio"  # audio: one frame of the turn
    ENDED = "ended"  # speech_end_t: when the last voiced frame arrived


@dataclass(frozen=True)
class Turn:
    kind: TurnEvent
    t: float  # arrival time (time.monotonic()) of the frame that caused it
    audio: np.ndarray | None = None  # int16 16 kHz
    speech_end_t: float | None = None


class TurnDetector:
    """Per-frame state machine: idle (pre-roll ring, counting voiced frames) <-> in a turn."""

    def __init__(self, options: TurnOptions) -> None:
        self.options = options
        self.aggressiveness = options.aggressiveness
        self._vad = webrtcvad.Vad(options.aggressiveness)
        self._start_frames = max(1, options.speech_start_ms // VAD_FRAME_MS)
        self._end_frames = max(1, options.end_of_turn_ms // VAD_FRAME_MS)
        self._max_frames = options.max_turn_ms // VAD_FRAME_MS
        self._preroll: deque[np.ndarray] = deque(maxlen=max(1, options.preroll_ms // VAD_FRAME_MS))
        self.in_turn = False
        self._voiced_run = self._silent_run = self._turn_frames = 0
        self._last_voiced_t = 0.0

    def set_aggressiveness(self, level: int) -> None:
        if level not in AGGRESSIVENESS_LEVELS:
            raise ValueError(f"VAD aggressiveness must be 0..3, got {level}")
        self._vad.set_mode(level)
        self.aggressiveness = level

    def push(self, frame: np.ndarray, t: float) -> list[Turn]:
        """One 20 ms int16 frame that arrived at time t; what it changed about the turn."""
        voiced = self._vad.is_speech(frame.tobytes(), tokens.INPUT_SAMPLE_RATE_HZ)
        return self._in_turn(frame, voiced, t) if self.in_turn else self._idle(frame, voiced, t)

    def _idle(self, frame: np.ndarray, voiced: bool, t: float) -> list[Turn]:
        self._preroll.append(frame)
        self._voiced_run = self._voiced_run + 1 if voiced else 0
        if self._voiced_run < self._start_frames:
            return []
        audio = np.concatenate(self._preroll)
        self._preroll.clear()
        self.in_turn, self._silent_run, self._turn_frames = True, 0, len(audio) // len(frame)
        self._last_voiced_t = t
        return [Turn(TurnEvent.STARTED, t, audio=audio)]

    def _in_turn(self, frame: np.ndarray, voiced: bool, t: float) -> list[Turn]:
        events = [Turn(TurnEvent.AUDIO, t, audio=frame)]
        self._turn_frames += 1
        if voiced:
            self._silent_run, self._last_voiced_t = 0, t
        else:
            self._silent_run += 1
        if self._silent_run >= self._end_frames or self._turn_frames >= self._max_frames:
            events.append(self.end(t))
        return events

    def end(self, t: float) -> Turn:
        """End the turn now (the hangover ran out, the turn got too long, or the caller left)."""
        self.in_turn, self._voiced_run = False, 0
        return Turn(TurnEvent.ENDED, t, speech_end_t=self._last_voiced_t)

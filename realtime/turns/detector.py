"""Turn detection: the caller's decoded audio in, "speech started / audio / paused / resumed /
turn ended" out.

    aiortc AudioFrame (opus decoded, 48 kHz) -> Framer: 16 kHz mono int16, 20 ms frames
    -> TurnDetector: speech or not per frame (webrtcvad or Silero), a pre-roll ring while
       idle; in a turn, a short silence is a pause (an answer may begin early, and the
       end-of-turn model judges the turn), and the turn ends after the hangover, or at the
       pause when the model says it is complete (`judge`)

Synchronous and cheap, so a door runs it on its event loop: per 20 ms frame about 45 us to
resample and 5 us for webrtcvad (about 165 us for Silero) on this project's 2-core CI machine
(benchmarks/serve_latency.py, benchmarks/vad_compare.py). The end-of-turn model takes tens of
milliseconds: the door runs it off the loop (realtime/transports/turn_taking.py) and hands the
verdict back. Nothing here touches torch or asyncio.
"""

from collections import deque
from dataclasses import dataclass
from enum import Enum
from typing import Protocol

import av
import numpy as np
import webrtcvad

from realtime.model import tokens
from realtime.turns.options import END_OF_TURN, SPEECH_DETECTORS, TurnOptions

VAD_FRAME_MS = 20  # webrtcvad takes 10, 20 or 30 ms frames
VAD_FRAME_SAMPLES = tokens.INPUT_SAMPLE_RATE_HZ * VAD_FRAME_MS // 1000  # 320
AGGRESSIVENESS_LEVELS = range(4)
# Silero's speech threshold for each of webrtcvad's aggressiveness levels, so that a client's
# aggressiveness setting means "stricter" with either detector.
SILERO_THRESHOLDS = (0.3, 0.4, 0.5, 0.7)
MODEL_WINDOW_FRAMES = 8000 // VAD_FRAME_MS  # the end-of-turn model hears the last 8 s


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
    PAUSED = "paused"  # speech_end_t; pause: its number, for judge()
    RESUMED = "resumed"  # speech again after a pause: the turn goes on
    ENDED = "ended"  # speech_end_t: when the last voiced frame arrived


@dataclass(frozen=True)
class Turn:
    kind: TurnEvent
    t: float  # arrival time (time.monotonic()) of the frame that caused it
    audio: np.ndarray | None = None  # int16 16 kHz
    speech_end_t: float | None = None
    pause: int = 0  # PAUSED: the pause's number in this detector
    silence_ms: int = 0  # ENDED: the silence since the last voiced frame


class SpeechDetector(Protocol):
    def is_speech(self, frame: np.ndarray) -> bool: ...


class WebrtcSpeech:
    """webrtcvad behind `is_speech(frame)`."""

    def __init__(self, aggressiveness: int) -> None:
        self._vad = webrtcvad.Vad(aggressiveness)

    def set_aggressiveness(self, level: int) -> None:
        self._vad.set_mode(level)

    def is_speech(self, frame: np.ndarray) -> bool:
        return self._vad.is_speech(frame.tobytes(), tokens.INPUT_SAMPLE_RATE_HZ)


def check_turn_options(options: TurnOptions) -> None:
    """Raises ValueError for options no detector can follow."""
    if options.vad not in SPEECH_DETECTORS:
        raise ValueError(f"unknown speech detector {options.vad!r}: {SPEECH_DETECTORS}")
    if options.end_of_turn not in END_OF_TURN:
        raise ValueError(f"unknown end of turn {options.end_of_turn!r}: {END_OF_TURN}")
    if options.aggressiveness not in AGGRESSIVENESS_LEVELS:
        raise ValueError(f"VAD aggressiveness must be 0..3, got {options.aggressiveness}")
    if options.pause_ms < VAD_FRAME_MS and options.end_of_turn == "smart-turn":
        raise ValueError("smart-turn judges the turn at a pause: pause_ms must be 20 or more")


def speech_detector(options: TurnOptions) -> SpeechDetector:
    """The per-frame speech detector `options.vad` names (Silero's model loads here)."""
    if options.vad == "silero":
        from realtime.turns.silero import SileroVAD  # (onnxruntime only when asked for)

        return SileroVAD(options.speech_threshold)
    return WebrtcSpeech(options.aggressiveness)


class TurnDetector:
    """Per-frame state machine: idle (pre-roll ring, counting voiced frames) <-> in a turn,
    which may be paused (silent for `pause_ms`; speech again resumes it)."""

    def __init__(self, options: TurnOptions, speech: SpeechDetector | None = None) -> None:
        check_turn_options(options)
        self.options = options
        self.aggressiveness = options.aggressiveness
        self._speech = speech if speech is not None else speech_detector(options)
        self._start_frames = max(1, options.speech_start_ms // VAD_FRAME_MS)
        self._pause_frames = options.pause_ms // VAD_FRAME_MS  # (0: no pauses)
        self._judged = options.end_of_turn == "smart-turn"
        end_ms = options.incomplete_ms if self._judged else options.end_of_turn_ms
        self._end_frames = max(1, end_ms // VAD_FRAME_MS)
        self._max_frames = options.max_turn_ms // VAD_FRAME_MS
        self._preroll: deque[np.ndarray] = deque(maxlen=max(1, options.preroll_ms // VAD_FRAME_MS))
        self._heard: deque[np.ndarray] = deque(maxlen=MODEL_WINDOW_FRAMES)  # the turn's audio
        self.in_turn = False
        self.paused = False
        self._pauses = 0  # pauses so far: PAUSED events carry the number, judge() checks it
        self._voiced_run = self._silent_run = self._turn_frames = 0
        self._last_voiced_t = 0.0

    @property
    def judged(self) -> bool:
        """The end-of-turn model decides (the owner runs it at each pause and calls judge)."""
        return self._judged

    def set_aggressiveness(self, level: int) -> None:
        if level not in AGGRESSIVENESS_LEVELS:
            raise ValueError(f"VAD aggressiveness must be 0..3, got {level}")
        if isinstance(self._speech, WebrtcSpeech):
            self._speech.set_aggressiveness(level)
        elif hasattr(self._speech, "set_threshold"):
            self._speech.set_threshold(SILERO_THRESHOLDS[level])
        self.aggressiveness = level

    def push(self, frame: np.ndarray, t: float) -> list[Turn]:
        """One 20 ms int16 frame that arrived at time t; what it changed about the turn."""
        voiced = self._speech.is_speech(frame)
        return self._in_turn(frame, voiced, t) if self.in_turn else self._idle(frame, voiced, t)

    def turn_audio(self) -> np.ndarray:
        """The turn's audio so far (int16, its last 8 s at most): what the model judges."""
        return np.concatenate(self._heard) if self._heard else np.zeros(0, np.int16)

    def judge(self, pause: int, complete: bool, t: float) -> list[Turn]:
        """The end-of-turn model's verdict on pause `pause`: complete ends the turn now if the
        caller is still silent; incomplete lets it run to `incomplete_ms` of silence."""
        if complete and self.in_turn and self.paused and pause == self._pauses:
            return [self.end(t)]
        return []

    def _idle(self, frame: np.ndarray, voiced: bool, t: float) -> list[Turn]:
        self._preroll.append(frame)
        self._voiced_run = self._voiced_run + 1 if voiced else 0
        if self._voiced_run < self._start_frames:
            return []
        audio = np.concatenate(self._preroll)
        self._preroll.clear()
        self._heard.clear()
        self._heard.append(audio)
        self.in_turn, self.paused, self._silent_run = True, False, 0
        self._turn_frames = len(audio) // len(frame)
        self._last_voiced_t = t
        return [Turn(TurnEvent.STARTED, t, audio=audio)]

    def _in_turn(self, frame: np.ndarray, voiced: bool, t: float) -> list[Turn]:
        events = [Turn(TurnEvent.AUDIO, t, audio=frame)]
        self._heard.append(frame)
        self._turn_frames += 1
        if voiced:
            self._silent_run, self._last_voiced_t = 0, t
            if self.paused:
                self.paused = False
                events.append(Turn(TurnEvent.RESUMED, t))
        else:
            self._silent_run += 1
        if self._silent_run >= self._end_frames or self._turn_frames >= self._max_frames:
            events.append(self.end(t))
        elif self._silent_run == self._pause_frames and not self.paused:
            self.paused, self._pauses = True, self._pauses + 1
            pause = Turn(TurnEvent.PAUSED, t, speech_end_t=self._last_voiced_t, pause=self._pauses)
            events.append(pause)
        return events

    def end(self, t: float) -> Turn:
        """End the turn now (the hangover ran out, the model judged it complete, the turn got
        too long, or the caller left)."""
        self.in_turn, self.paused, self._voiced_run = False, False, 0
        silence_ms = self._silent_run * VAD_FRAME_MS
        return Turn(TurnEvent.ENDED, t, speech_end_t=self._last_voiced_t, silence_ms=silence_ms)

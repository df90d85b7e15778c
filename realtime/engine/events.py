"""What the engine tells a session's owner, each stamped with time.monotonic() seconds.

Events are delivered through the sink the owner passed when it opened the session, called on
the inference thread: a sink must be quick and thread-safe (the gateway hands them to its event
loop with `loop.call_soon_threadsafe`).
"""

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Event:
    session: int
    t: float
    # The answer it belongs to: the session's count of end_turn()/submit_text() calls so far.
    # An owner that cancelled (or superseded) an answer drops later events of that turn.
    turn: int


@dataclass(frozen=True)
class TurnEnded(Event):
    """The end of the caller's turn reached the engine."""


@dataclass(frozen=True)
class PrefillDone(Event):
    positions: int  # context length the answer starts from


@dataclass(frozen=True)
class FirstText(Event):
    """The answer's first text token was decoded."""


@dataclass(frozen=True)
class TextDelta(Event):
    text: str


@dataclass(frozen=True)
class FirstAudio(Event):
    """The answer's first audio samples are ready."""


@dataclass(frozen=True)
class AudioChunk(Event):
    pcm: np.ndarray  # float32 mono at tokens.OUTPUT_SAMPLE_RATE_HZ


@dataclass(frozen=True)
class Done(Event):
    reason: str  # "end of audio", "end of text" or "length"
    steps: int
    text: str
    text_tokens: list[int]  # the answer's text ids
    frames: list[list[int]]  # the answer's SNAC frames, 7 codes each


@dataclass(frozen=True)
class Cancelled(Event):
    """Every cancel() produces exactly one, even when nothing was being answered."""

    steps: int  # decode steps the answer had run


@dataclass(frozen=True)
class TranscriptDelta(Event):
    """More of the caller's words in a spoken turn (the turn it transcribes is `turn`)."""

    text: str


@dataclass(frozen=True)
class TranscriptDone(Event):
    reason: str  # "end of text" or "length"
    text: str
    text_tokens: list[int]
    positions: int  # the prompt it was decoded from


@dataclass(frozen=True)
class TranscriptFailed(Event):
    message: str


@dataclass(frozen=True)
class Forgotten(Event):
    """Earlier turns left the session's memory to make room (the oldest first): `turns` are
    their numbers; what remains takes `positions` of the context."""

    turns: tuple[int, ...]
    positions: int


@dataclass(frozen=True)
class Error(Event):
    message: str


# A turn's transcript arrives on its own clock, after its answer's events or between them: an
# owner routes these by the turn they transcribe, not by the answer it is waiting for.
TRANSCRIPT = (TranscriptDelta, TranscriptDone, TranscriptFailed)

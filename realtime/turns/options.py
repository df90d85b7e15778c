"""How turns are detected: `TurnOptions`, for realtime/turns/detector.py (a client may change
its aggressiveness). No logic here."""

from dataclasses import dataclass


@dataclass(frozen=True)
class TurnOptions:
    """When the caller's speech starts and when their turn ends (webrtcvad, 20 ms frames)."""

    aggressiveness: int = 2  # webrtcvad 0 (keeps most audio as speech) .. 3 (strictest)
    speech_start_ms: int = 60  # this much voiced audio in a row starts a turn (not a click)
    end_of_turn_ms: int = 500  # this much silence ends it: the hangover
    preroll_ms: int = 300  # audio before the onset that goes with the turn, so no clipped start
    max_turn_ms: int = 20_000  # a monologue is cut here (Mini-Omni hears 30 s at most)

"""How turns are detected: `TurnOptions`, for realtime/turns/detector.py (a door may change them
per call: OpenAI's turn_detection, the page's settings). No logic here."""

from dataclasses import dataclass

SPEECH_DETECTORS = ("webrtc", "silero")  # what hears speech, frame by frame
END_OF_TURN = ("silence", "smart-turn")  # what ends a turn: a long enough silence, or a model


@dataclass(frozen=True)
class TurnOptions:
    """When the caller's speech starts, when they pause, and when their turn is over (20 ms
    frames). At a pause an answer may begin early, held until the turn is confirmed."""

    # SPEECH_DETECTORS: Silero starts far fewer false turns in noise and music than webrtcvad
    # does at any aggressiveness, about 30 ms later (benchmarks/results/vad_compare.json)
    vad: str = "silero"
    aggressiveness: int = 2  # webrtcvad 0 (keeps most audio as speech) .. 3 (strictest)
    speech_threshold: float = 0.5  # Silero's P(speech) that counts as speech
    speech_start_ms: int = 60  # this much voiced audio in a row starts a turn (not a click)
    preroll_ms: int = 300  # audio before the onset that goes with the turn, so no clipped start
    max_turn_ms: int = 20_000  # a monologue is cut here (Mini-Omni hears 30 s at most)
    # This much silence is a pause: the answer begins early (`preempt`), held until the turn is
    # confirmed, and the end-of-turn model (if any) judges the turn so far.
    pause_ms: int = 200
    preempt: bool = True
    end_of_turn: str = "silence"  # END_OF_TURN
    end_of_turn_ms: int = 500  # "silence": this much of it ends the turn (the hangover)
    # "smart-turn": P(complete) at or above this ends the turn at the pause; below it the turn
    # ends after `incomplete_ms` of silence, unless the caller goes on.
    complete_threshold: float = 0.5
    incomplete_ms: int = 2000
    # Speech that starts this soon after the end of the last turn's speech, while its answer
    # is being made or played, was a false end of turn: the answer stops (a barge-in) and the
    # caller's words so far are answered as one turn (doors that can: the page and phones).
    rejoin_ms: int = 1500

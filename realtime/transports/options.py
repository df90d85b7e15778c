"""What each call gets from the server, whichever transport it came by. No logic here."""

from dataclasses import dataclass, field

from realtime.decoding.options import DecodingOptions
from realtime.turns.options import TurnOptions


@dataclass(frozen=True)
class CallOptions:
    """What each conversation gets from the server."""

    turns: TurnOptions = field(default_factory=TurnOptions)
    decoding: DecodingOptions = field(default_factory=DecodingOptions)
    max_answer_ms: int | None = None  # clients may lower it per call; None: the model decides
    transcribe: bool = False  # the browser's caller sees their own words (the model's asr task)
    # Earlier turns stay in each new session's context (the model was trained on single turns:
    # off unless asked); clients may switch it. history_positions: the most they may take
    # (None: all that leave room for the next turn and its answer).
    history: bool = False
    history_positions: int | None = None
    input_timeout_s: float = 2.0  # no inbound audio for this long: the client is gone
    # an offer answered but no audio this long after: the caller never came (ICE through a
    # TURN server takes a few seconds at worst)
    setup_timeout_s: float = 10.0
    # transports/lifetime.py: a session with nothing said, sent or answered this long is ended;
    # so is any session this old (OpenAI's service caps its sessions too). None: no limit.
    idle_timeout_s: float | None = 300.0
    max_session_s: float | None = 3600.0

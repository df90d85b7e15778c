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
    input_timeout_s: float = 2.0  # no inbound audio for this long: the client is gone
    setup_timeout_s: float = 30.0  # no inbound audio this long after the answer: never came

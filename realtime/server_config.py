"""Typed settings of the live server: turn detection, one conversation, the whole server.

Three objects on purpose, like the model's: `TurnOptions` configures turns.py (and a client
may change its aggressiveness), `CallOptions` what every conversation gets, `ServerOptions`
how the process listens. No logic here; the modules they configure hold it.
"""

from dataclasses import dataclass, field
from pathlib import Path

from realtime.config import DecodingOptions

# The browser page: inside the package when installed from a wheel (pyproject.toml ships
# client/ as realtime/client), the repository's client/ in a checkout (editable install).
CLIENT_DIR = Path(__file__).resolve().parent / "client"
if not CLIENT_DIR.is_dir():
    CLIENT_DIR = CLIENT_DIR.parent.parent / "client"
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


@dataclass(frozen=True)
class TurnOptions:
    """When the caller's speech starts and when their turn ends (webrtcvad, 20 ms frames)."""

    aggressiveness: int = 2  # webrtcvad 0 (keeps most audio as speech) .. 3 (strictest)
    speech_start_ms: int = 60  # this much voiced audio in a row starts a turn (not a click)
    end_of_turn_ms: int = 500  # this much silence ends it: the hangover
    preroll_ms: int = 300  # audio before the onset that goes with the turn, so no clipped start
    max_turn_ms: int = 20_000  # a monologue is cut here (Mini-Omni hears 30 s at most)


@dataclass(frozen=True)
class CallOptions:
    """What each conversation gets from the server."""

    turns: TurnOptions = field(default_factory=TurnOptions)
    decoding: DecodingOptions = field(default_factory=DecodingOptions)
    max_answer_ms: int | None = None  # clients may lower it per call; None: the model decides
    transcribe: bool = False  # the browser's caller sees their own words (the model's asr task)
    input_timeout_s: float = 2.0  # no inbound audio for this long: the client is gone
    setup_timeout_s: float = 30.0  # no inbound audio this long after the answer: never came


@dataclass(frozen=True)
class ServerOptions:
    """How `realtime serve` listens."""

    host: str = "127.0.0.1"
    port: int = 8080
    token: str | None = None  # required on offers; mandatory beyond localhost
    max_sessions: int = 4
    step_products: str = "cublas"  # EngineOptions.step_products
    pdl: bool = False  # EngineOptions.pdl
    tls_cert: Path | None = None
    tls_key: Path | None = None
    client_dir: Path = CLIENT_DIR
    model_name: str = "gpt-omni/mini-omni"  # what the OpenAI Realtime door reports
    # Phone calls (Twilio Media Streams): the account's auth token checks Twilio's signatures,
    # over the URLs Twilio was given: public_url, e.g. https://voice.example.com
    twilio_auth_token: str | None = None
    public_url: str | None = None
    call: CallOptions = field(default_factory=CallOptions)

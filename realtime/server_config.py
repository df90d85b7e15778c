"""How `realtime serve` listens: `ServerOptions`, beside what each call gets
(realtime/transports/options.py) and how turns are detected (realtime/turns/options.py). No
logic here; the modules they configure hold it.
"""

from dataclasses import dataclass, field
from pathlib import Path

from realtime.transports.options import CallOptions

# The browser page: inside the package when installed from a wheel (pyproject.toml ships
# client/ as realtime/client), the repository's client/ in a checkout (editable install).
CLIENT_DIR = Path(__file__).resolve().parent / "client"
if not CLIENT_DIR.is_dir():
    CLIENT_DIR = CLIENT_DIR.parent.parent / "client"
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


@dataclass(frozen=True)
class ServerOptions:
    """How `realtime serve` listens."""

    host: str = "127.0.0.1"
    port: int = 8080
    token: str | None = None  # required on offers; mandatory beyond localhost
    max_sessions: int = 4
    # sessions one client address may hold (0: no cap); None: server.py's default (half the
    # slots for a client beyond this machine, on a server without a token)
    max_sessions_per_client: int | None = None
    shutdown_grace_s: float = 10.0  # SIGTERM: how long answers in progress may go on
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

"""What the parts of one OpenAI Realtime connection (input.py, conversation.py, responses.py)
may use of it. The connection (connection.py) is the one writer to the client and the one
keeper of the session: its parts send through it, number their ids from its counter (event and
item ids share one sequence) and read the session's settings as they are now, so they hold the
connection as this narrow face, not as the class.
"""

from typing import Protocol

from realtime.engine.engine import SessionHandle
from realtime.transports.lifetime import Clock
from realtime.transports.openai.session import ClientError, EventNames, Settings
from realtime.transports.options import CallOptions


class Link(Protocol):
    """The connection as its parts see it."""

    options: CallOptions  # the server's, for every call
    ga: bool  # the GA generation of the protocol (else beta)
    names: EventNames  # the events named as this connection's generation names them
    settings: Settings  # the session's, replaced by each session.update
    clock: Clock  # the caller's activity, against the server's idle limit
    closed: bool  # the connection has ended

    @property
    def engine(self) -> SessionHandle:
        """The engine session (open while the connection runs)."""
        ...

    def send(self, kind: str, /, **fields: object) -> None:
        """Queue one event of type `kind` for the client (nothing once it is closed)."""
        ...

    def error(
        self, exc: ClientError, event_id: str | None = None, kind: str = "invalid_request_error"
    ) -> None:
        """Tell the client of a refused event (or an engine failure)."""
        ...

    def note_unused(self, fields: list[str]) -> None:
        """Log (once a server) fields a client set that the model does not use."""
        ...

    def new_id(self, prefix: str) -> str:
        """A new item or response id: `{prefix}_{session}_{count}`."""
        ...

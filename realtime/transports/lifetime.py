"""How long a call may last, whichever door it came by: each session's clock against the
server's limits, and why a server ends a call.

A session is idle while its caller says nothing, sends nothing but audio, and hears nothing:
silence streamed in (a browser's microphone in an empty room, a WebSocket client's appends
of silence) does not keep it alive, an answer being made or played does. The server sweeps
its sessions about once a second (server.py) and hangs up those past a limit, each door with
its protocol's closing event first.
"""

import time
from dataclasses import dataclass

# Why the server ends a call (the data channel's session.closing "reason"); each door says it
# in its own protocol too.
SHUTDOWN = "shutdown"
IDLE = "idle"
MAX_DURATION = "max_duration"
ENGINE_DOWN = "engine_down"
DRAIN_S = 1.0  # how long a closing call's last events may take to go out, at every door


@dataclass(frozen=True)
class Closing:
    """The server ends the call: `reason` (one of the above) and a sentence for the caller."""

    reason: str
    message: str


def seconds(value: float) -> str:
    """A limit as a caller reads it: "90 s", "5 min", "1 h"."""
    if value >= 3600 and value % 3600 == 0:
        return f"{value / 3600:g} h"
    if value >= 60 and value % 60 == 0:
        return f"{value / 60:g} min"
    return f"{value:g} s"


class Clock:
    """When a session opened and when its caller was last active (monotonic seconds)."""

    def __init__(self) -> None:
        self.opened_t = self.active_t = time.monotonic()

    def touch(self) -> None:
        """The caller did something: spoke, typed, or sent an event other than audio."""
        self.active_t = time.monotonic()

    def overdue(
        self, idle_timeout_s: float | None, max_session_s: float | None, busy: bool, now: float
    ) -> Closing | None:
        """Whether the session is past a limit (None: a limit not set). An answer in
        progress (`busy`) counts as activity: it is never cut for idleness."""
        if max_session_s is not None and now - self.opened_t >= max_session_s:
            return Closing(
                MAX_DURATION, f"the session reached its maximum length of {seconds(max_session_s)}"
            )
        if busy:
            self.active_t = now
        elif idle_timeout_s is not None and now - self.active_t >= idle_timeout_s:
            return Closing(IDLE, f"nothing was said or sent for {seconds(idle_timeout_s)}")
        return None

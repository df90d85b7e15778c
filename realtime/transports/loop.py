"""From the inference thread to the event loop: the engine calls a session's sink on its own
thread; the transports' handlers run on the loop and must see events there, in order."""

import asyncio
from collections.abc import Callable

from realtime.engine import events


def loop_sink(handler: Callable[[events.Event], None]) -> Callable[[events.Event], None]:
    """An engine sink that runs `handler` on the running loop (call it on the loop)."""
    loop = asyncio.get_running_loop()

    def sink(event: events.Event) -> None:
        try:
            loop.call_soon_threadsafe(handler, event)
        except RuntimeError:  # the loop is closed: the server is shutting down
            pass

    return sink

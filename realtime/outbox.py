"""What the WebSocket doors share: one writer per connection, and the engine's sink.

A door's handlers run on the event loop and must not await, so what they send is queued; one
task writes it, in order. Engine events arrive on the inference thread and are handed to the
loop, nothing else done there.
"""

import asyncio
from collections.abc import Callable

from aiohttp import web

from realtime import events


class Outbox:
    """Text messages to one WebSocket, written in the order they were put."""

    def __init__(self, ws: web.WebSocketResponse) -> None:
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._task = asyncio.ensure_future(self._write(ws))

    def put(self, text: str) -> None:
        self._queue.put_nowait(text)

    def close(self) -> None:
        self._task.cancel()

    async def _write(self, ws: web.WebSocketResponse) -> None:
        while True:
            text = await self._queue.get()
            try:
                await ws.send_str(text)
            except (ConnectionError, RuntimeError):  # gone: the reader sees the close too
                return


def loop_sink(handler: Callable[[events.Event], None]) -> Callable[[events.Event], None]:
    """An engine sink that runs `handler` on the running loop (call it on the loop)."""
    loop = asyncio.get_running_loop()

    def sink(event: events.Event) -> None:
        try:
            loop.call_soon_threadsafe(handler, event)
        except RuntimeError:  # the loop is closed: the server is shutting down
            pass

    return sink

"""What the WebSocket doors share: one writer per connection, the engine's sink, and the
grip on their engine session.

A door's handlers run on the event loop and must not await, so what they send is queued; one
task writes it, in order. Engine events arrive on the inference thread and are handed to the
loop, nothing else done there.
"""

import asyncio
import logging

from aiohttp import web

from realtime.engine import events
from realtime.engine.engine import SessionHandle
from realtime.transports.loop import loop_sink

log = logging.getLogger("realtime.server")


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


class WebSocketDoor:
    """One WebSocket connection served by one engine session (the server opens it and sets
    `handle`); subclasses handle the messages and the engine's events."""

    kind = "websocket"  # in the logs

    def __init__(self, ws: web.WebSocketResponse) -> None:
        self.ws = ws
        self.handle: SessionHandle | None = None
        self.closed = False
        self.sink = loop_sink(self._on_engine_event)  # the engine's, for open_session
        self._out = Outbox(ws)

    @property
    def sid(self) -> int:
        return -1 if self.handle is None else self.handle.id

    @property
    def engine(self) -> SessionHandle:
        """The engine session: `handle`, which the server sets before `run`."""
        if self.handle is None:
            raise RuntimeError(f"the {self.kind} has no engine session yet")
        return self.handle

    async def run(self) -> None:
        """Serve the connection until it ends."""
        raise NotImplementedError

    def close(self, reason: str) -> None:
        """Free the engine slot and stop writing (cheap, idempotent)."""
        if not self.closed:
            self.closed = True
            self._out.close()
            if self.handle is not None:
                log.info("session %d closed (%s): %s", self.sid, self.kind, reason)
                self.handle.close()

    def _on_engine_event(self, event: events.Event) -> None:
        raise NotImplementedError

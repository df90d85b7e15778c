"""What the WebSocket doors share: one writer per connection, the engine's sink, and the
grip on their engine session.

A door's handlers run on the event loop and must not await, so what they send is queued; one
task writes it, in order. Engine events arrive on the inference thread and are handed to the
loop, nothing else done there. When the server ends a call (transports/lifetime.py), the door
says why in its protocol, what is queued is written, and the WebSocket closes with a code.
"""

import asyncio
import logging

from aiohttp import WSCloseCode, web

from realtime.engine import events
from realtime.engine.engine import SessionHandle
from realtime.transports import lifetime
from realtime.transports.lifetime import DRAIN_S, Clock, Closing
from realtime.transports.loop import loop_sink

# The WebSocket close code for each reason the server ends a call (RFC 6455 section 7.4.1)
CLOSE_CODES = {
    lifetime.SHUTDOWN: WSCloseCode.GOING_AWAY,
    lifetime.ENGINE_DOWN: WSCloseCode.INTERNAL_ERROR,
    lifetime.IDLE: WSCloseCode.OK,
    lifetime.MAX_DURATION: WSCloseCode.OK,
}

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

    async def drain(self, timeout_s: float) -> None:
        """Wait until everything put so far is written (or the writer has stopped)."""
        written = asyncio.ensure_future(self._queue.join())
        try:
            await asyncio.wait(
                [written, self._task], timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            written.cancel()

    async def _write(self, ws: web.WebSocketResponse) -> None:
        while True:
            text = await self._queue.get()
            try:
                await ws.send_str(text)
            except (ConnectionError, RuntimeError):  # gone: the reader sees the close too
                return
            finally:
                self._queue.task_done()


class WebSocketDoor:
    """One WebSocket connection served by one engine session (the server opens it and sets
    `handle`); subclasses handle the messages and the engine's events."""

    kind = "websocket"  # in the logs

    def __init__(self, ws: web.WebSocketResponse) -> None:
        self.ws = ws
        self.handle: SessionHandle | None = None
        self.closed = False
        self.clock = Clock()
        self.closing: Closing | None = None  # the server is ending the call, and why
        self.address = ""  # the client's, as the server sees it (server.client_address)
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

    @property
    def busy(self) -> bool:
        """An answer is being made or played: the call is not idle, and a shutdown lets it end."""
        return False

    async def hang_up(self, closing: Closing) -> None:
        """The server ends the call: say why (`say_closing`), let that go out, close."""
        if self.closed or self.closing is not None:
            return
        self.closing = closing
        log.info("session %d: ending the call (%s): %s", self.sid, closing.reason, closing.message)
        self.say_closing(closing)
        await self._out.drain(DRAIN_S)
        self.close(closing.message)
        # (a close reason is at most 123 bytes)
        reason = closing.message.encode()[:123].decode(errors="ignore").encode()
        await self.ws.close(code=CLOSE_CODES[closing.reason], message=reason)

    def say_closing(self, closing: Closing) -> None:
        """Tell the client why the call ends, in the door's protocol (the close code may be all
        it has)."""

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

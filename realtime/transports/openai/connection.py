"""One OpenAI-Realtime-compatible WebSocket connection (`GET /v1/realtime`): the client's JSON
events on one side, an engine session on the other. Runs on the event loop; the model runs on
the engine's thread. The connection reads the client's events and hands each to the part that
keeps its state (to two, in turn, where it takes two), keeps the session (session.update) and
writes every event to the client:

    input_audio_buffer.append ─► input.py: InputAudio 16 kHz 20 ms frames ─► TurnDetector
        (server_vad) ─► push_audio ─► engine (encoded and prefilled while the caller talks)
    commit (the VAD's end of speech, or the client's) ─► input.py ─► conversation.py: a user item
    conversation.item.create: input_text ─► conversation.py: a typed user item; input_audio
        ─► input.py, as if appended and committed
    response.create (or the VAD's create_response) ─► responses.py: end_turn (submit_text for
        a typed item: a t2a turn) ─► the engine answers
    engine ─sink (inference thread)─► loop ─► connection.py routes it:
        the answer's events ─► responses.py ─► OutputAudio ─► response.audio.delta,
            response.audio_transcript.delta ─► the client, which plays it (or, for a text-only
            response, response.text.delta: the turn answered as the model's text-out twin)
        the caller's transcripts ─► conversation.py: the items they transcribe
    interrupt: speech onset (input.py: interrupt_response) or response.cancel ─► responses.py:
        engine cancel ─► response.done "cancelled"; conversation.item.truncate (conversation.py)
        says how much was played

The engine answers everything it heard since its last answer, so audio appended after a commit
that is not answered yet is held (input.py) until its response starts. Unlike WebRTC, the
client holds the answer's audio: it is sent as fast as it is made. Event names follow the
client's generation of the protocol (session.py); link.py is what the parts may use of the
connection.
"""

import itertools
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import replace

from aiohttp import WSMsgType, web

from realtime.engine import events
from realtime.transports import lifetime
from realtime.transports.lifetime import Closing
from realtime.transports.openai.conversation import Conversation, message_item
from realtime.transports.openai.input import InputBuffer
from realtime.transports.openai.items import Item
from realtime.transports.openai.responses import Responses
from realtime.transports.openai.session import (
    BETA_NAMES,
    GA_NAMES,
    ClientError,
    Settings,
    apply_update,
    decode_base64,
    describe,
)
from realtime.transports.options import CallOptions
from realtime.transports.websocket import WebSocketDoor

MAX_MESSAGE_BYTES = 4 * 1024 * 1024  # an append of about a minute of pcm16 audio, base64
HEARTBEAT_S = 20.0  # ping a silent client this often: a vanished one frees its slot

# The error event before the server closes the connection: (type, code) for each reason;
# session_expired is OpenAI's own, for its sessions' maximum length.
CLOSING_ERRORS = {
    lifetime.MAX_DURATION: ("invalid_request_error", "session_expired"),
    lifetime.IDLE: ("invalid_request_error", "session_idle"),
    lifetime.SHUTDOWN: ("server_error", "server_shutting_down"),
    lifetime.ENGINE_DOWN: ("server_error", "engine_down"),
}

log = logging.getLogger("realtime.server")
_unused_logged: set[str] = set()  # the unused fields this server has logged: each once


def _not_json(name: str) -> float:
    """NaN and Infinity, which Python's json takes and browsers' refuse: none may reach the
    session and be reported back to the client."""
    raise ValueError(f"{name} is not JSON")


def _finite(text: str) -> float:
    """A number too large for a float (1e400) would be Infinity: refused the same."""
    number = float(text)
    if not math.isfinite(number):
        raise ValueError(f"{text} is out of range")
    return number


class RealtimeConnection(WebSocketDoor):
    """Wires one WebSocket to one engine session (the link.Link its parts use)."""

    kind = "realtime API"

    def __init__(self, ws: web.WebSocketResponse, options: CallOptions, model: str, ga: bool):
        super().__init__(ws)
        self.options, self.model, self.ga = options, model, ga
        self.names = GA_NAMES if ga else BETA_NAMES
        self.settings = Settings(history=options.history)
        limit = options.max_session_s  # (the session object's expires_at, in Unix seconds)
        self.expires_at = 0 if limit is None else int(time.time() + limit)
        self._counter = itertools.count(1)  # event and item ids: one sequence
        self._conversation = Conversation(self)
        self._responses = Responses(self, self._conversation)
        self._input = InputBuffer(self, self._conversation, self._responses)
        self._handlers: dict[str, Callable[[dict], None]] = {
            "session.update": self._session_update,
            "input_audio_buffer.append": self._input.append,
            "input_audio_buffer.commit": lambda event: self._input.commit(),
            "input_audio_buffer.clear": self._input.clear,
            "conversation.item.create": self._item_create,
            "conversation.item.truncate": self._truncate,
            "conversation.item.delete": self._conversation.delete,
            "conversation.item.retrieve": self._conversation.retrieve,
            "response.create": self._response_create,
            "response.cancel": self._responses.cancel_request,
            "output_audio_buffer.clear": self._responses.output_clear,
        }

    # --- lifecycle --------------------------------------------------------------------------

    async def run(self) -> None:
        """Serve the connection until the client leaves (the WebSocket is prepared)."""
        self.send("session.created", session=self._describe())
        try:
            async for message in self.ws:
                if message.type is WSMsgType.TEXT:
                    self._on_text(message.data)
                elif message.type is WSMsgType.BINARY:
                    self.error(ClientError("invalid_event", "events are JSON text messages"))
                elif message.type is WSMsgType.ERROR:  # e.g. too large: aiohttp closes (1009)
                    log.info("session %d: %s", self.sid, self.ws.exception())
        finally:
            self.close("the client left")
            self._input.close()

    @property
    def busy(self) -> bool:
        return self._responses.active

    def say_closing(self, closing: Closing) -> None:
        kind, code = CLOSING_ERRORS[closing.reason]
        message = f"{closing.message}; the server closes the connection"
        self.error(ClientError(code, message), None, kind)

    def send(self, kind: str, /, **fields: object) -> None:
        """Queue one event for the client (nothing once the connection is closed)."""
        if not self.closed:
            event = {"type": kind, "event_id": f"event_{next(self._counter)}", **fields}
            self._out.put(json.dumps(event))

    def error(
        self, exc: ClientError, event_id: str | None = None, kind: str = "invalid_request_error"
    ) -> None:
        """Tell the client of a refused event (or an engine failure)."""
        error = {"type": kind, "code": exc.code, "message": str(exc), "param": exc.param}
        self.send("error", error=error | {"event_id": event_id})

    def note_unused(self, fields: list[str]) -> None:
        """Log, once a server, each field a client set that the model does not use."""
        new = [field for field in fields if field not in _unused_logged]
        if new:
            _unused_logged.update(new)
            names = ", ".join(new)
            log.info("session %d: kept but unused by Mini-Omni (logged once): %s", self.sid, names)

    def new_id(self, prefix: str) -> str:
        """A new item or response id, numbered on with the events."""
        return f"{prefix}_{self.sid}_{next(self._counter)}"

    # --- the client's events ----------------------------------------------------------------

    def _on_text(self, raw: str) -> None:
        event_id = None
        try:
            try:
                event = json.loads(raw, parse_constant=_not_json, parse_float=_finite)
            except (ValueError, RecursionError):  # (json raises the latter for deep nesting)
                raise ClientError("invalid_json", "an event must be a JSON object") from None
            if not isinstance(event, dict) or not isinstance(event.get("type"), str):
                raise ClientError("invalid_event", 'an event is a JSON object with a "type"')
            event_id = event.get("event_id")
            if event["type"] != "input_audio_buffer.append":  # (silence streamed in is no sign)
                self.clock.touch()
            handler = self._handlers.get(event["type"])
            if handler is None:
                raise ClientError("unknown_event", f"unknown event type {event['type']!r}", "type")
            handler(event)
        except ClientError as exc:
            log.info("session %d: refused an event (%s)", self.sid, exc)
            self.error(exc, event_id)
        except Exception:  # a bug here costs this event, not the connection or the server
            log.exception("session %d: handling an event failed", self.sid)
            self.error(
                ClientError("internal", "the server failed on this event"), event_id, "server_error"
            )

    def _session_update(self, event: dict) -> None:
        settings, unused = apply_update(self.settings, event.get("session"))
        self.note_unused(unused)
        old, self.settings = self.settings, settings
        self._input.settings_changed(old)
        if settings.history != old.history:
            self._history(settings.history)
        self.send("session.updated", session=self._describe())

    def _history(self, on: bool) -> None:
        """Switch the model's memory of the conversation: from now on the items are its
        context, or no item is."""
        self.engine.set_history(on)
        if not on:
            self._conversation.detach()

    def _describe(self) -> dict:
        max_steps = self.options.decoding.max_new_tokens
        session = describe(self.settings, f"sess_{self.sid}", self.model, self.ga, max_steps)
        return session | {"expires_at": self.expires_at}

    def _item_create(self, event: dict) -> None:
        """A user message: recorded speech, as if appended and committed (input.py), or typed
        text (conversation.py). An assistant message: an earlier answer, for the model's
        context, which it turns on (the client sends its history)."""
        role, part, item_id = message_item(event.get("item"))
        if self._input.buffered_ms:
            message = "commit or clear the input audio buffer first"
            raise ClientError("input_audio_buffer_not_empty", message)
        if role == "assistant":
            self._answer_given(part, item_id)
            return
        if self._conversation.text_waits and not self.settings.history:
            message = "answer the typed message first (response.create)"
            raise ClientError("input_audio_buffer_not_empty", message)
        if self.settings.history and self._conversation.waiting:
            self._responses.remember()  # the turn that waits goes into the context unanswered
        if part["type"] == "input_text":
            self._conversation.type(part.get("text"), item_id)
        else:
            self._input.record(decode_base64(part.get("audio"), "item.content.audio"), item_id)

    def _answer_given(self, part: dict, item_id: str | None) -> None:
        """An assistant message the client created: it answers the turn that waits (or none)
        in the model's context."""
        if self._responses.active:
            message = "a response is in progress: add earlier answers between responses"
            raise ClientError("conversation_already_has_active_response", message)
        if not self.settings.history:
            log.info("session %d: the client sends its history: items are context", self.sid)
            self.settings = replace(self.settings, history=True)
            self._history(True)
        spoken = part["type"] in ("audio", "output_audio")
        words = part["transcript"] if spoken else part["text"]
        item = Item(item_id or self.new_id("item"), "assistant", spoken=spoken, texts=[(0, words)])
        self._responses.remember(answer=item)
        previous = self._conversation.add(item)
        self._conversation.turn_added(item, previous)

    def _truncate(self, event: dict) -> None:
        """The client played an answer only so far: it is cut there, and no longer made."""
        item, end_ms = self._conversation.truncation(event)
        if self._responses.answers(item):
            self._responses.cancel("client_cancelled")  # the caller stopped listening to it
        self._conversation.truncate(item, end_ms)

    def _response_create(self, event: dict) -> None:
        """response.create: the answer starts, then the audio held since its turn's commit goes
        to the engine."""
        self._responses.create(event, quiet=not self._input.buffered_ms)
        self._input.release_held()  # the start of the caller's next turn

    # --- the engine's events ----------------------------------------------------------------

    def _on_engine_event(self, event: events.Event) -> None:
        """An engine event, on the loop: to the part it is for."""
        if self.closed:
            return
        if isinstance(event, events.TRANSCRIPT):  # on its own clock: routed by its turn
            self._conversation.on_transcript(event)
        elif isinstance(event, events.Forgotten):
            self._conversation.forgotten(event.turns)
        else:
            self._responses.on_engine_event(event)

"""One OpenAI-Realtime-compatible WebSocket connection (`GET /v1/realtime`): the client's JSON
events on one side, an engine session on the other. Runs on the event loop; the model runs on
the engine's thread.

    input_audio_buffer.append ─► InputAudio: 16 kHz 20 ms frames ─► TurnDetector (server_vad)
        ─► push_audio ─► engine (encoded and prefilled while the caller talks)
    commit (the VAD's end of speech, or the client's) ─► a user item
    response.create (or the VAD's create_response) ─► end_turn ─► the engine answers
    conversation.item.create with input_text ─► (response.create) submit_text: a t2a turn
    engine ─sink (inference thread)─► loop ─► OutputAudio ─► response.audio.delta,
        response.audio_transcript.delta ─► the client, which plays it (or, for a text-only
        response, response.text.delta: the turn answered as the model's text-out twin)
    interrupt: speech onset (interrupt_response) or response.cancel ─► engine cancel ─►
        response.done "cancelled"; conversation.item.truncate says how much was played

The engine answers everything it heard since its last answer, so audio appended after a commit
that is not answered yet is held here until its response starts. Unlike WebRTC, the client
holds the answer's audio: it is sent as fast as it is made. Event names follow the client's
generation of the protocol (realtime/transports/openai/session.py).
"""

import base64
import itertools
import json
import logging
import time

import numpy as np
from aiohttp import WSMsgType, web

from realtime.audio.io import from_pcm16
from realtime.engine import events
from realtime.model import tokens
from realtime.transports.openai.items import CONTENT, Item, Response, transcription_usage
from realtime.transports.openai.session import (
    BETA_NAMES,
    GA_NAMES,
    ClientError,
    Settings,
    apply_update,
    decode_base64,
    describe,
    speaks,
    unsupported,
)
from realtime.transports.options import CallOptions
from realtime.transports.websocket import WebSocketDoor
from realtime.transports.wire_audio import FORMATS, InputAudio, OutputAudio
from realtime.turns.detector import VAD_FRAME_MS, TurnDetector, TurnEvent

MAX_MESSAGE_BYTES = 4 * 1024 * 1024  # an append of about a minute of pcm16 audio, base64
HEARTBEAT_S = 20.0  # ping a silent client this often: a vanished one frees its slot
MIN_COMMIT_MS = 100  # OpenAI's smallest commit

log = logging.getLogger("realtime.server")


def _ms(samples: int, rate_hz: int) -> int:
    return samples * 1000 // rate_hz


class RealtimeConnection(WebSocketDoor):
    """Wires one WebSocket to one engine session."""

    kind = "realtime API"

    def __init__(self, ws: web.WebSocketResponse, options: CallOptions, model: str, ga: bool):
        super().__init__(ws)
        self.options, self.model, self.ga = options, model, ga
        self.names = GA_NAMES if ga else BETA_NAMES
        self.settings = Settings()
        self._counter = itertools.count(1)
        self._input = InputAudio(FORMATS[self.settings.input_format])
        self._turns = self._detector()
        self._heard_ms = 0  # every frame of input so far: the clock of audio_start/end_ms
        self._buffer_ms = 0  # in the input buffer: appended and not committed
        self._held: list[np.ndarray] = []  # appended after a commit that is not answered yet
        self._unanswered = False  # committed audio (or a typed message) waits for a response
        self._typed: str | None = None  # the typed message that does
        self._speech_item: str | None = None  # the item the VAD's current speech will become
        self._spoken: str | None = None  # the last committed speech that waits for a response
        self._transcribing: dict[int, str] = {}  # engine turn -> the item its transcript is of
        self._items: dict[str, Item] = {}  # the conversation, in order
        self._response: Response | None = None
        self._engine_turn = 0  # end_turn() calls so far: the number engine events carry
        self._handlers = {
            "session.update": self._session_update,
            "input_audio_buffer.append": self._append,
            "input_audio_buffer.commit": lambda event: self._commit(),
            "input_audio_buffer.clear": self._clear,
            "conversation.item.create": self._item_create,
            "conversation.item.truncate": self._truncate,
            "conversation.item.delete": self._delete,
            "conversation.item.retrieve": self._retrieve,
            "response.create": self._response_create,
            "response.cancel": self._response_cancel,
            "output_audio_buffer.clear": self._output_clear,
        }

    # --- lifecycle --------------------------------------------------------------------------

    async def run(self) -> None:
        """Serve the connection until the client leaves (the WebSocket is prepared)."""
        self._send("session.created", session=self._describe())
        try:
            async for message in self.ws:
                if message.type is WSMsgType.TEXT:
                    self._on_text(message.data)
                elif message.type is WSMsgType.BINARY:
                    self._error(ClientError("invalid_event", "events are JSON text messages"))
                elif message.type is WSMsgType.ERROR:  # e.g. too large: aiohttp closes (1009)
                    log.info("session %d: %s", self.sid, self.ws.exception())
        finally:
            self.close("the client left")

    def _send(self, kind: str, **fields) -> None:
        if not self.closed:
            event = {"type": kind, "event_id": f"event_{next(self._counter)}", **fields}
            self._out.put(json.dumps(event))

    def _error(self, exc: ClientError, event_id: str | None = None, kind="invalid_request_error"):
        error = {"type": kind, "code": exc.code, "message": str(exc), "param": exc.param}
        self._send("error", error=error | {"event_id": event_id})

    def _new_id(self, prefix: str) -> str:
        return f"{prefix}_{self.sid}_{next(self._counter)}"

    def _describe(self) -> dict:
        max_steps = self.options.decoding.max_new_tokens
        return describe(self.settings, f"sess_{self.sid}", self.model, self.ga, max_steps)

    # --- the client's events ----------------------------------------------------------------

    def _on_text(self, raw: str) -> None:
        event_id = None
        try:
            try:
                event = json.loads(raw)
            except ValueError:
                raise ClientError("invalid_json", "an event must be a JSON object") from None
            if not isinstance(event, dict) or not isinstance(event.get("type"), str):
                raise ClientError("invalid_event", 'an event is a JSON object with a "type"')
            event_id = event.get("event_id")
            handler = self._handlers.get(event["type"])
            if handler is None:
                raise ClientError("unknown_event", f"unknown event type {event['type']!r}", "type")
            handler(event)
        except ClientError as exc:
            log.info("session %d: refused an event (%s)", self.sid, exc)
            self._error(exc, event_id)
        except Exception:  # a bug here costs this event, not the connection or the server
            log.exception("session %d: handling an event failed", self.sid)
            self._error(
                ClientError("internal", "the server failed on this event"), event_id, "server_error"
            )

    def _session_update(self, event: dict) -> None:
        settings, refused = apply_update(self.settings, event.get("session"))
        for exc in refused:
            self._error(exc, event.get("event_id"))
        if settings.input_format != self.settings.input_format:
            self._input = InputAudio(FORMATS[settings.input_format])
        old, self.settings = self.settings, settings
        if settings.turn_detection != old.turn_detection:
            self._turns, self._speech_item = self._detector(), None
        self._send("session.updated", session=self._describe())

    def _detector(self) -> TurnDetector | None:
        vad = self.settings.turn_detection
        return None if vad is None else TurnDetector(vad.turn_options(self.options.turns))

    # --- the caller's audio -----------------------------------------------------------------

    def _append(self, event: dict) -> None:
        audio = decode_base64(event.get("audio"), "audio")
        for frame in self._input.push(audio):
            self._heard_ms += VAD_FRAME_MS
            if self._turns is None:
                self._buffer(frame)
                continue
            for turn in self._turns.push(frame, time.monotonic()):
                if turn.kind is TurnEvent.STARTED:
                    self._speech_started(len(turn.audio))
                if turn.audio is not None:
                    self._buffer(turn.audio)
                if turn.kind is TurnEvent.ENDED:
                    self._speech_stopped()

    def _buffer(self, pcm16: np.ndarray) -> None:
        limit = self.options.turns.max_turn_ms
        if self._buffer_ms >= limit:
            message = f"the input audio buffer holds {limit} ms, the most one turn may: commit it"
            raise ClientError("input_audio_buffer_full", message)
        self._buffer_ms += _ms(len(pcm16), tokens.INPUT_SAMPLE_RATE_HZ)
        if self._unanswered:
            self._held.append(pcm16)
        else:
            self.handle.push_audio(from_pcm16(pcm16))

    def _speech_started(self, preroll_samples: int) -> None:
        start_ms = self._heard_ms - _ms(preroll_samples, tokens.INPUT_SAMPLE_RATE_HZ)
        self._speech_item = self._new_id("item")
        self._send(
            "input_audio_buffer.speech_started",
            audio_start_ms=max(0, start_ms),
            item_id=self._speech_item,
        )
        if self._response is not None and self.settings.turn_detection.interrupt_response:
            self._cancel("turn_detected")

    def _speech_stopped(self) -> None:
        vad, item_id = self.settings.turn_detection, self._speech_item
        end_ms = max(0, self._heard_ms - vad.silence_duration_ms)
        self._send("input_audio_buffer.speech_stopped", audio_end_ms=end_ms, item_id=item_id)
        self._commit(item_id)
        if vad.create_response and self._response is None:
            self._start_response()

    def _commit(self, item_id: str | None = None) -> None:
        if self._typed is not None:
            message = "a typed message waits for its response: send response.create first"
            raise ClientError("conversation_has_pending_text", message)
        if self._turns is not None and self._turns.in_turn:  # the client commits mid-speech
            self._turns.end(time.monotonic())
            item_id, self._speech_item = self._speech_item, None
        if self._buffer_ms < MIN_COMMIT_MS:
            message = f"the input audio buffer holds {self._buffer_ms} ms; a commit needs 100"
            raise ClientError("input_audio_buffer_commit_empty", message)
        self._release_held()
        self._unanswered, self._buffer_ms = True, 0
        item = Item(item_id or self._new_id("item"), "user")
        self._spoken = item.id  # (two commits before one response: one turn, the last's words)
        previous = self._add_item(item)
        self._send("input_audio_buffer.committed", previous_item_id=previous, item_id=item.id)
        self._item_added(item, previous)
        if self.ga:
            self._send(self.names.item_done, previous_item_id=previous, item=item.describe(True))

    def _release_held(self) -> None:
        for pcm16 in self._held:
            self.handle.push_audio(from_pcm16(pcm16))
        self._held.clear()

    def _clear(self, event: dict) -> None:
        if self._unanswered:
            self._held.clear()
        else:
            self.handle.clear_input()
        self._turns, self._speech_item = self._detector(), None
        self._buffer_ms = 0
        self._send("input_audio_buffer.cleared")

    def _item_create(self, event: dict) -> None:
        """A user message: recorded speech, as if appended and committed, or typed text (the
        model answers it as a text-to-speech turn of its own)."""
        item = event.get("item")
        if not isinstance(item, dict) or item.get("type", "message") != "message":
            raise ClientError("unsupported", "only message items can be created", "item.type")
        content = item.get("content")
        if item.get("role") != "user" or not isinstance(content, list) or len(content) != 1:
            message = "an item is a user message with one input_audio or input_text part"
            raise ClientError("unsupported", message, "item.content")
        part = content[0] if isinstance(content[0], dict) else {}
        if part.get("type") not in ("input_audio", "input_text"):
            message = "a user message holds input_audio or input_text"
            raise ClientError("unsupported", message, "item.content")
        if self._buffer_ms or self._typed is not None:
            message = "commit or clear the input audio buffer (or answer the typed message) first"
            raise ClientError("input_audio_buffer_not_empty", message)
        item_id = item.get("id") if isinstance(item.get("id"), str) and item.get("id") else None
        if part["type"] == "input_text":
            self._type(part.get("text"), item_id)
            return
        audio = decode_base64(part.get("audio"), "item.content.audio")
        for frame in InputAudio(FORMATS[self.settings.input_format]).push(audio):
            self._buffer(frame)
        self._commit(item_id)

    def _type(self, text: object, item_id: str | None) -> None:
        if not isinstance(text, str) or not text.strip():
            message = "the text must be a non-empty string"
            raise ClientError("invalid_value", message, "item.content")
        if self._unanswered:
            message = "spoken audio waits for its response: send response.create first"
            raise ClientError("input_audio_buffer_not_empty", message)
        self._typed, self._unanswered = text, True
        item = Item(item_id or self._new_id("item"), "user", text=text)
        previous = self._add_item(item)
        self._item_added(item, previous)
        if self.ga:
            self._send(self.names.item_done, previous_item_id=previous, item=item.describe(True))

    # --- responses ----------------------------------------------------------------------------

    def _response_create(self, event: dict) -> None:
        if self._response is not None:
            message = f"response {self._response.id} is still in progress"
            raise ClientError("conversation_already_has_active_response", message)
        request = event.get("response") or {}
        if not isinstance(request, dict):
            raise ClientError("invalid_value", "response must be an object", "response")
        if not self._unanswered:
            message = "nothing to answer: commit the caller's audio first (the model hears speech)"
            raise ClientError("input_audio_buffer_empty", message)
        speak = speaks(request, "response")
        for exc in unsupported(request, "response"):
            self._error(exc, event.get("event_id"))
        self._start_response(speak)

    def _start_response(self, speak: bool | None = None) -> None:
        """Answer the turn, aloud or in text only as `speak` says (None: as the session does)."""
        speak = self.settings.speak if speak is None else speak
        self._engine_turn += 1
        if self._typed is not None:
            self.handle.submit_text(self._typed, speak)
        else:
            self.handle.end_turn(speak, self.settings.transcribe)
            if self.settings.transcribe:
                self._transcribing[self._engine_turn] = self._spoken
        self._unanswered, self._typed, self._spoken = False, None, None
        item = Item(self._new_id("item"), "assistant", status="in_progress", spoken=speak)
        output = OutputAudio(FORMATS[self.settings.output_format])
        response = self._response = Response(self._new_id("resp"), item, output)
        previous = self._add_item(item)
        self._send(
            "response.created", response=response.describe("in_progress", self.settings, self.ga)
        )
        self._send(
            "response.output_item.added",
            response_id=response.id,
            output_index=0,
            item=item.describe(self.ga),
        )
        self._item_added(item, previous)
        self._send(
            "response.content_part.added",
            response_id=response.id,
            item_id=item.id,
            part=_part(item),
            **CONTENT,
        )
        self._release_held()  # the start of the caller's next turn

    def _response_cancel(self, event: dict) -> None:
        wanted = event.get("response_id")
        if self._response is None or wanted not in (None, self._response.id):
            message = f"no response {wanted or ''} in progress"
            raise ClientError("response_cancel_not_active", message)
        self._cancel("client_cancelled")

    def _output_clear(self, event: dict) -> None:
        message = (
            "over a WebSocket the client holds the audio: stop playing it and send "
            "conversation.item.truncate"
        )
        raise ClientError("unsupported", message)

    def _cancel(self, reason: str) -> None:
        self.handle.cancel()
        self._finish("cancelled", reason)

    def _on_engine_event(self, event: events.Event) -> None:
        if isinstance(event, events.TRANSCRIPT):
            self._transcript(event)
            return
        if self.closed or event.turn != self._engine_turn:
            return  # a closed connection, or an answer that was cancelled or superseded
        response = self._response
        if isinstance(event, events.Error):
            self._error(ClientError("engine", event.message), kind="server_error")
            if response is not None:
                self._finish("failed", error=event.message)
        elif response is None:
            return
        elif isinstance(event, events.PrefillDone):
            response.input_tokens = event.positions
        elif isinstance(event, events.TextDelta):
            response.item.texts.append((response.item.samples, event.text))
            self._send(
                self.names.transcript_delta if response.item.spoken else self.names.text_delta,
                response_id=response.id,
                item_id=response.item.id,
                delta=event.text,
                **CONTENT,
            )
        elif isinstance(event, events.AudioChunk):
            self._audio(response, event.pcm)
        elif isinstance(event, events.Done):
            length = event.reason == "length"
            self._finish(
                "incomplete" if length else "completed",
                "max_output_tokens" if length else None,
                done=event,
            )

    def _transcript(self, event: events.Event) -> None:
        """The caller's words, for the item they spoke; they may come after its answer."""
        item_id = self._transcribing.get(event.turn)
        if self.closed or item_id is None:
            return
        kind = "conversation.item.input_audio_transcription"
        if isinstance(event, events.TranscriptDelta):
            self._send(kind + ".delta", item_id=item_id, content_index=0, delta=event.text)
            return
        del self._transcribing[event.turn]
        if isinstance(event, events.TranscriptFailed):
            error = {"type": "transcription_error", "code": "failed", "message": event.message}
            self._send(kind + ".failed", item_id=item_id, content_index=0, error=error)
            return
        if item_id in self._items:
            self._items[item_id].heard = event.text
        self._send(
            kind + ".completed",
            item_id=item_id,
            content_index=0,
            transcript=event.text,
            usage=transcription_usage(event),
        )

    def _audio(self, response: Response, pcm: np.ndarray) -> None:
        limit = None
        if self.options.max_answer_ms is not None:
            limit = self.options.max_answer_ms * tokens.OUTPUT_SAMPLE_RATE_HZ // 1000
            pcm = pcm[: max(0, limit - response.item.samples)]
        response.item.samples += pcm.size
        self._audio_delta(response, response.output.push(pcm))
        if limit is not None and response.item.samples >= limit:
            self.handle.cancel()
            self._finish("incomplete", "max_output_tokens")

    def _audio_delta(self, response: Response, data: bytes) -> None:
        if data:
            self._send(
                self.names.audio_delta,
                response_id=response.id,
                item_id=response.item.id,
                delta=base64.b64encode(data).decode(),
                **CONTENT,
            )

    def _finish(
        self,
        status: str,
        reason: str | None = None,
        error: str | None = None,
        done: events.Done | None = None,
    ) -> None:
        """The response's closing events, in the order OpenAI's server sends them."""
        response, self._response = self._response, None
        item, ids = response.item, {"response_id": response.id, "item_id": response.item.id}
        if status in ("completed", "incomplete"):  # (a cut answer's last few ms stay unsent)
            self._audio_delta(response, response.output.flush())
        item.status = "completed" if status == "completed" else "incomplete"
        if item.spoken:
            self._send(self.names.audio_done, **ids, **CONTENT)
            self._send(self.names.transcript_done, **ids, transcript=item.transcript, **CONTENT)
        else:
            self._send(self.names.text_done, **ids, text=item.transcript, **CONTENT)
        self._send("response.content_part.done", **ids, part=_part(item), **CONTENT)
        self._send(
            "response.output_item.done",
            response_id=response.id,
            output_index=0,
            item=item.describe(self.ga),
        )
        if self.names.item_done:
            self._send(self.names.item_done, item=item.describe(self.ga))
        details = {"type": status, "reason": reason}
        if error is not None:
            details["error"] = {"type": "server_error", "code": "engine", "message": error}
        described = response.describe(status, self.settings, self.ga, details, done)
        self._send("response.done", response=described)

    # --- the conversation's items -------------------------------------------------------------

    def _add_item(self, item: Item) -> str | None:
        """Append an item; the id of the one before it."""
        previous = next(reversed(self._items), None)
        self._items[item.id] = item
        return previous

    def _item_added(self, item: Item, previous: str | None) -> None:
        self._send(self.names.item_added, previous_item_id=previous, item=item.describe(self.ga))

    def _item(self, event: dict) -> Item:
        item = self._items.get(event.get("item_id"))
        if item is None:
            raise ClientError("item_not_found", f"no item {event.get('item_id')!r}", "item_id")
        return item

    def _truncate(self, event: dict) -> None:
        item, end_ms = self._item(event), event.get("audio_end_ms")
        if item.role != "assistant":
            raise ClientError("invalid_value", "only an answer's audio can be truncated", "item_id")
        if not item.spoken:
            raise ClientError("invalid_value", "that answer is text only: no audio", "item_id")
        if event.get("content_index", 0) != 0:
            raise ClientError("invalid_value", "an answer has one content part, 0", "content_index")
        if isinstance(end_ms, bool) or not isinstance(end_ms, int) or end_ms < 0:
            raise ClientError(
                "invalid_value", "audio_end_ms must be an integer >= 0", "audio_end_ms"
            )
        if end_ms > item.audio_ms:
            message = f"audio_end_ms {end_ms} is past the {item.audio_ms} ms of audio sent"
            raise ClientError("invalid_value", message, "audio_end_ms")
        if self._response is not None and self._response.item is item:
            self._cancel("client_cancelled")  # the caller stopped listening to it
        item.truncate(end_ms)
        self._send(
            "conversation.item.truncated", item_id=item.id, content_index=0, audio_end_ms=end_ms
        )

    def _delete(self, event: dict) -> None:
        item = self._item(event)
        if self._response is not None and self._response.item is item:
            raise ClientError(
                "invalid_value", "cancel the response before deleting its item", "item_id"
            )
        del self._items[item.id]
        self._send("conversation.item.deleted", item_id=item.id)

    def _retrieve(self, event: dict) -> None:
        self._send("conversation.item.retrieved", item=self._item(event).describe(self.ga))


def _part(item: Item) -> dict:
    """An answer's one content part, as response.content_part.added/done describe it."""
    if item.spoken:
        return {"type": "audio", "transcript": item.transcript}
    return {"type": "text", "text": item.transcript}

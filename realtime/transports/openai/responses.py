"""The response stream of one OpenAI Realtime connection: response.create and response.cancel,
the answer started on the engine (end_turn for spoken turns, submit_text for typed ones), and
the engine's events for it turned into the protocol's: text or transcript deltas, audio deltas
in the client's format (wire_audio.OutputAudio), and the closing events of an answer that
completes, is cut short, is cancelled or fails.

One response at a time, as the engine answers one turn at a time; its events carry the turn
they answer, so those of a cancelled or superseded answer are dropped here. Over a WebSocket
the client holds and plays the audio, so it is sent as fast as it is made, up to the server's
answer-length limit (max_answer_ms), which ends the response as `incomplete`.
"""

import base64

import numpy as np

from realtime.engine import events
from realtime.model import tokens
from realtime.transports.openai.conversation import Conversation
from realtime.transports.openai.items import CONTENT, Item, Response, describe_response, usage
from realtime.transports.openai.link import Link
from realtime.transports.openai.session import ClientError, speaks, unused_fields
from realtime.transports.wire_audio import FORMATS, OutputAudio


class Responses:
    """The response in progress (one at most), from its start on the engine to its end."""

    def __init__(self, link: Link, conversation: Conversation) -> None:
        self._link, self._conversation = link, conversation
        self._response: Response | None = None
        self._engine_turn = 0  # end_turn()/submit_text() calls so far: the number events carry

    @property
    def active(self) -> bool:
        """A response is in progress."""
        return self._response is not None

    def answers(self, item: Item) -> bool:
        """The response in progress is making this item."""
        return self._response is not None and self._response.item is item

    # --- the client's events --------------------------------------------------------------------

    def create(self, event: dict, quiet: bool) -> None:
        """response.create: answer the turn that waits (the caller of this lets the audio held
        since its commit go to the engine: the start of the caller's next turn). With none, a
        bot that speaks first: the response's instructions are answered as a typed turn, if the
        caller is `quiet` (no audio of theirs would be dropped); else the response completes
        with no output."""
        if self._response is not None:
            message = (
                f"Conversation already has an active response in progress: {self._response.id}."
                " Wait until the response is finished before creating a new one."
            )
            raise ClientError("conversation_already_has_active_response", message)
        request = event.get("response") or {}
        if not isinstance(request, dict):
            raise ClientError("invalid_value", "response must be an object", "response")
        speak = speaks(request, "response")
        instructions = request.get("instructions")
        if self._conversation.waiting:
            self._link.note_unused(unused_fields(request, "response"))
            self.start(speak)
        elif quiet and isinstance(instructions, str) and instructions.strip():
            self._link.note_unused(unused_fields({"tools": request.get("tools")}, "response"))
            self.start(speak, instructions)
        else:
            self._answer_nothing(speak)

    def cancel_request(self, event: dict) -> None:
        """response.cancel, of the response in progress (by its id, or any)."""
        wanted = event.get("response_id")
        if self._response is None or wanted not in (None, self._response.id):
            message = "Cancellation failed: no active response found"  # (OpenAI's words)
            raise ClientError("response_cancel_not_active", message)
        self.cancel("client_cancelled")

    def output_clear(self, event: dict) -> None:
        """output_audio_buffer.clear: WebRTC's; over a WebSocket there is no such buffer."""
        message = (
            "over a WebSocket the client holds the audio: stop playing it and send "
            "conversation.item.truncate"
        )
        raise ClientError("unsupported", message)

    # --- starting and stopping ------------------------------------------------------------------

    def start(self, speak: bool | None = None, text: str | None = None) -> None:
        """Answer the turn that waits (or `text`, outside the conversation), aloud or in text
        only as `speak` says (None: as the session does)."""
        speak = self._link.settings.speak if speak is None else speak
        self._engine_turn += 1
        turn = self._engine_turn if self._link.settings.history else None
        if text is None:
            asked = self._conversation.take_turn()
            asked.turn = turn
            self._ask(asked, speak)
        else:
            self._link.engine.submit_text(text, speak)
        item = Item(self._link.new_id("item"), "assistant", status="in_progress", spoken=speak)
        item.turn = turn
        output = OutputAudio(FORMATS[self._link.settings.output_format])
        self._response = Response(self._link.new_id("resp"), item, output, outside=text is not None)
        self._announce(self._response)

    def remember(self, answer: Item | None = None) -> None:
        """Put the turn that waits (if any) into the model's context unanswered, or answered
        by `answer`, an assistant message the client created (history on)."""
        waiting = self._conversation.take_turn() if self._conversation.waiting else None
        self._engine_turn += 1
        text = None if answer is None else answer.transcript
        self._link.engine.remember(text, None if waiting is None else waiting.text)
        for item in (waiting, answer):
            if item is not None:
                item.turn = self._engine_turn

    def _answer_nothing(self, speak: bool | None) -> None:
        """A response with nothing to answer: created and completed, with no output."""
        link = self._link
        speak = link.settings.speak if speak is None else speak
        response_id = link.new_id("resp")
        created = describe_response(response_id, "in_progress", link.settings, link.ga, speak)
        link.send("response.created", response=created)
        used = usage(0, None)
        done = describe_response(response_id, "completed", link.settings, link.ga, speak, used=used)
        link.send("response.done", response=done)

    def cancel(self, reason: str) -> None:
        """Stop the response in progress on the engine and end it as cancelled."""
        if self._response is None:
            raise RuntimeError("no response is in progress")
        self._link.engine.cancel(turn=self._engine_turn)
        self._finish(self._response, "cancelled", reason)

    def _ask(self, turn: Item, speak: bool) -> None:
        """Have the engine answer the turn (and transcribe spoken words, if the session asks)."""
        engine, transcribe = self._link.engine, self._link.settings.transcribe
        if turn.text is not None:
            engine.submit_text(turn.text, speak)
            return
        engine.end_turn(speak, transcribe)
        if transcribe:
            self._conversation.transcribe(self._engine_turn, turn.id)

    def _announce(self, response: Response) -> None:
        """A new response's opening events, in the order OpenAI's server sends them."""
        link, item = self._link, response.item
        previous = self._conversation.add(item)
        described = response.describe("in_progress", link.settings, link.ga)
        link.send("response.created", response=described)
        link.send(
            "response.output_item.added",
            response_id=response.id,
            output_index=0,
            item=item.describe(link.ga),
        )
        self._conversation.added(item, previous)
        ids = {"response_id": response.id, "item_id": item.id}
        link.send("response.content_part.added", **ids, part=_part(item), **CONTENT)

    # --- the engine's events --------------------------------------------------------------------

    def on_engine_event(self, event: events.Event) -> None:
        """One of the engine's events for the answers (the caller's words go elsewhere)."""
        if event.turn != self._engine_turn:
            return  # an answer that was cancelled or superseded
        if isinstance(event, events.Error):
            self._link.error(ClientError("engine", event.message), kind="server_error")
            if self._response is not None:
                self._finish(self._response, "failed", error=event.message)
        elif self._response is not None:
            self._answer_event(self._response, event)

    def _answer_event(self, response: Response, event: events.Event) -> None:
        if isinstance(event, events.PrefillDone):
            response.input_tokens = event.positions
        elif isinstance(event, events.TextDelta):
            self._text_delta(response, event.text)
        elif isinstance(event, events.AudioChunk):
            self._audio(response, event.pcm)
        elif isinstance(event, events.Done):
            length = event.reason == "length"
            status = "incomplete" if length else "completed"
            self._finish(response, status, "max_output_tokens" if length else None, done=event)

    def _text_delta(self, response: Response, text: str) -> None:
        item, names = response.item, self._link.names
        item.texts.append((item.samples, text))
        self._link.send(
            names.transcript_delta if item.spoken else names.text_delta,
            response_id=response.id,
            item_id=item.id,
            delta=text,
            **CONTENT,
        )

    def _audio(self, response: Response, pcm: np.ndarray) -> None:
        """Send the answer's audio, up to the server's limit on its length."""
        limit = None
        if self._link.options.max_answer_ms is not None:
            limit = self._link.options.max_answer_ms * tokens.OUTPUT_SAMPLE_RATE_HZ // 1000
            pcm = pcm[: max(0, limit - response.item.samples)]
        response.item.samples += pcm.size
        self._audio_delta(response, response.output.push(pcm))
        if limit is not None and response.item.samples >= limit:
            self._link.engine.cancel(turn=self._engine_turn)
            self._finish(response, "incomplete", "max_output_tokens")

    def _audio_delta(self, response: Response, data: bytes) -> None:
        if data:
            self._link.send(
                self._link.names.audio_delta,
                response_id=response.id,
                item_id=response.item.id,
                delta=base64.b64encode(data).decode(),
                **CONTENT,
            )

    # --- the end of a response ------------------------------------------------------------------

    def _finish(
        self,
        response: Response,
        status: str,
        reason: str | None = None,
        error: str | None = None,
        done: events.Done | None = None,
    ) -> None:
        """The response's closing events, in the order OpenAI's server sends them."""
        self._response = None
        if status == "failed" and response.item.turn is not None:
            self._conversation.detach(response.item.turn)  # the engine kept nothing of it
        elif response.outside and response.item.turn is not None:
            # the instructions it answered are no item: only the answer stays in the context
            self._link.engine.forget(response.item.turn, prompt=True, answer=False)
        if status in ("completed", "incomplete"):  # (a cut answer's last few ms stay unsent)
            self._audio_delta(response, response.output.flush())
        response.item.status = "completed" if status == "completed" else "incomplete"
        self._close_item(response)
        details: dict[str, object] = {"type": status, "reason": reason}
        if error is not None:
            details["error"] = {"type": "server_error", "code": "engine", "message": error}
        described = response.describe(status, self._link.settings, self._link.ga, details, done)
        self._link.send("response.done", response=described)

    def _close_item(self, response: Response) -> None:
        """The answer's content, its part and its item are done."""
        link, names, item = self._link, self._link.names, response.item
        ids = {"response_id": response.id, "item_id": item.id}
        if item.spoken:
            link.send(names.audio_done, **ids, **CONTENT)
            link.send(names.transcript_done, **ids, transcript=item.transcript, **CONTENT)
        else:
            link.send(names.text_done, **ids, text=item.transcript, **CONTENT)
        link.send("response.content_part.done", **ids, part=_part(item), **CONTENT)
        link.send(
            "response.output_item.done",
            response_id=response.id,
            output_index=0,
            item=item.describe(link.ga),
        )
        if names.item_done is not None:
            link.send(names.item_done, item=item.describe(link.ga))


def _part(item: Item) -> dict:
    """An answer's one content part, as response.content_part.added/done describe it."""
    if item.spoken:
        return {"type": "audio", "transcript": item.transcript}
    return {"type": "text", "text": item.transcript}

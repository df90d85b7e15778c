"""The conversation of one OpenAI Realtime connection: its items in order (the caller's
committed speech and typed messages, and the answers), the caller's turn that waits for an
answer, and the transcripts of the caller's spoken turns.

The engine answers everything the caller said since its last answer, so one turn at most
waits: two commits before one response make one turn, and the last commit's item carries its
words. A typed message is a turn of its own, answered by itself. Transcripts arrive on their
own clock, after their turn's answer or amid it, so they are matched to their items by the
engine turn that transcribes them, not by the answer in progress.
"""

from realtime.engine import events
from realtime.model import tokens
from realtime.transports.openai.items import Item, transcription_usage
from realtime.transports.openai.link import Link
from realtime.transports.openai.session import ClientError

# The engine's events for the caller's words (events.TRANSCRIPT), as this module takes them.
Transcript = events.TranscriptDelta | events.TranscriptDone | events.TranscriptFailed
TRANSCRIPTION = "conversation.item.input_audio_transcription"  # its events' common prefix


class Conversation:
    """The items, the turn that waits for an answer, and the transcripts in progress; the
    conversation.item.* events that read and change them (recorded audio that a client
    creates as an item is committed through input.py)."""

    def __init__(self, link: Link) -> None:
        self._link = link
        self._items: dict[str, Item] = {}  # the conversation, in order
        self._waiting: Item | None = None  # the caller's turn that waits for an answer
        self._transcribing: dict[int, str] = {}  # engine turn -> the item its transcript is of

    # --- the caller's turn ----------------------------------------------------------------------

    @property
    def waiting(self) -> bool:
        """Committed speech or a typed message waits for an answer."""
        return self._waiting is not None

    @property
    def text_waits(self) -> bool:
        """A typed message waits for its answer."""
        return self._waiting is not None and self._waiting.text is not None

    def add_turn(self, item: Item) -> str | None:
        """Append the caller's new turn, which now waits for an answer; the id of the item
        before it."""
        self._waiting = item
        return self.add(item)

    def turn_added(self, item: Item, previous: str | None) -> None:
        """Tell the client of the caller's new turn: added, and (GA) done at once."""
        self.added(item, previous)
        if (done := self._link.names.item_done) is not None:
            self._link.send(done, previous_item_id=previous, item=item.describe(True))

    def take_turn(self) -> Item:
        """The turn an answer starts for; after it none waits."""
        turn, self._waiting = self._waiting, None
        if turn is None:
            raise RuntimeError("no turn waits for an answer")
        return turn

    def type(self, text: object, item_id: str | None) -> None:
        """A typed user message (conversation.item.create with input_text): the model answers it
        as a text-to-speech turn of its own."""
        if not isinstance(text, str) or not text.strip():
            message = "the text must be a non-empty string"
            raise ClientError("invalid_value", message, "item.content")
        if self._waiting is not None:
            message = "spoken audio waits for its response: send response.create first"
            raise ClientError("input_audio_buffer_not_empty", message)
        item = Item(item_id or self._link.new_id("item"), "user", text=text)
        previous = self.add_turn(item)
        self.turn_added(item, previous)

    # --- the items ------------------------------------------------------------------------------

    def add(self, item: Item) -> str | None:
        """Append an item; the id of the one before it."""
        previous = next(reversed(self._items), None)
        self._items[item.id] = item
        return previous

    def added(self, item: Item, previous: str | None) -> None:
        """Tell the client of a new item."""
        link = self._link
        link.send(link.names.item_added, previous_item_id=previous, item=item.describe(link.ga))

    def truncation(self, event: dict) -> tuple[Item, int]:
        """The answer and the audio_end_ms that a conversation.item.truncate names, checked."""
        item, end_ms = self._find(event, "truncate"), event.get("audio_end_ms")
        if item.role != "assistant":
            raise ClientError("invalid_value", "only an answer's audio can be truncated", "item_id")
        if not item.spoken:
            raise ClientError("invalid_value", "that answer is text only: no audio", "item_id")
        if event.get("content_index", 0) != 0:
            raise ClientError("invalid_value", "an answer has one content part, 0", "content_index")
        if isinstance(end_ms, bool) or not isinstance(end_ms, int) or end_ms < 0:
            message = "audio_end_ms must be an integer >= 0"
            raise ClientError("invalid_value", message, "audio_end_ms")
        if end_ms > item.audio_ms:
            message = f"audio_end_ms {end_ms} is past the {item.audio_ms} ms of audio sent"
            raise ClientError("invalid_value", message, "audio_end_ms")
        return item, end_ms

    def truncate(self, item: Item, end_ms: int) -> None:
        """Keep the answer only as far as the client played it (in the model's context too)."""
        item.truncate(end_ms)
        if item.turn is not None:
            self._link.engine.truncate(item.turn, item.samples // tokens.FRAME_SAMPLES)
        self._link.send(
            "conversation.item.truncated", item_id=item.id, content_index=0, audio_end_ms=end_ms
        )

    def delete(self, event: dict) -> None:
        """conversation.item.delete; an answer still in progress stays."""
        item = self._find(event, "delete")
        if item.status == "in_progress":
            message = "cancel the response before deleting its item"
            raise ClientError("invalid_value", message, "item_id")
        del self._items[item.id]
        if item.turn is not None:  # its part of the turn leaves the model's context
            user = item.role == "user"
            self._link.engine.forget(item.turn, prompt=user, answer=not user)
        self._link.send("conversation.item.deleted", item_id=item.id)

    def forgotten(self, turns: tuple[int, ...]) -> None:
        """The engine let these turns go to make room: their items go too, so that the items
        and the model's context stay the same."""
        for item in [i for i in self._items.values() if i.turn in turns]:
            del self._items[item.id]
            self._link.send("conversation.item.deleted", item_id=item.id)

    def detach(self, turn: int | None = None) -> None:
        """The items of `turn` (None: every item) are no longer in the model's context (the
        turn failed, or history was switched off); they stay in the conversation."""
        for item in self._items.values():
            if turn is None or item.turn == turn:
                item.turn = None

    def retrieve(self, event: dict) -> None:
        """conversation.item.retrieve."""
        item = self._find(event, "retrieve")
        self._link.send("conversation.item.retrieved", item=item.describe(self._link.ga))

    def _find(self, event: dict, action: str) -> Item:
        """The item an event names; else OpenAI's error for the action (`item_{action}_
        invalid_item_id`, which clients match: pipecat's retrieve, for one)."""
        item_id = event.get("item_id")
        item = self._items.get(item_id) if isinstance(item_id, str) else None
        if item is None:
            doing = action.removesuffix("e") + "ing"
            message = f"Error {doing} item: the item with id {item_id!r} does not exist."
            raise ClientError(f"item_{action}_invalid_item_id", message, "item_id")
        return item

    # --- the caller's words ---------------------------------------------------------------------

    def transcribe(self, turn: int, item_id: str) -> None:
        """The engine's answer `turn` transcribes this item too: its transcript events carry
        that turn."""
        self._transcribing[turn] = item_id

    def on_transcript(self, event: Transcript) -> None:
        """The caller's words, for the item they spoke; they may come after its answer."""
        item_id = self._transcribing.get(event.turn)
        if item_id is None:
            return
        if isinstance(event, events.TranscriptDelta):
            self._link.send(
                TRANSCRIPTION + ".delta", item_id=item_id, content_index=0, delta=event.text
            )
        else:
            del self._transcribing[event.turn]
            self._transcript_ended(item_id, event)

    def _transcript_ended(
        self, item_id: str, event: events.TranscriptDone | events.TranscriptFailed
    ) -> None:
        if isinstance(event, events.TranscriptFailed):
            error = {"type": "transcription_error", "code": "failed", "message": event.message}
            kind = TRANSCRIPTION + ".failed"
            self._link.send(kind, item_id=item_id, content_index=0, error=error)
            return
        if item_id in self._items:
            self._items[item_id].heard = event.text
        self._link.send(
            TRANSCRIPTION + ".completed",
            item_id=item_id,
            content_index=0,
            transcript=event.text,
            usage=transcription_usage(event),
        )


def message_item(item: object) -> tuple[str, dict, str | None]:
    """The role and the one content part of the message a conversation.item.create holds, and
    the id the client gives it (None: ours). A user message holds input_audio or input_text;
    an assistant message (an earlier answer, for the model's context) its text, or audio with
    its transcript."""
    if not isinstance(item, dict) or item.get("type", "message") != "message":
        raise ClientError("unsupported", "only message items can be created", "item.type")
    content, role = item.get("content"), item.get("role")
    if role not in ("user", "assistant") or not isinstance(content, list) or len(content) != 1:
        message = "an item is a user or assistant message with one content part"
        raise ClientError("unsupported", message, "item.content")
    part = content[0] if isinstance(content[0], dict) else {}
    kinds = USER_PARTS if role == "user" else ASSISTANT_PARTS
    if part.get("type") not in kinds:
        message = f"a {role} message holds one of {', '.join(kinds)}"
        raise ClientError("unsupported", message, "item.content")
    if role == "assistant":
        words = part.get("text" if part["type"] in ("text", "output_text") else "transcript")
        if not isinstance(words, str) or not words.strip():
            message = "an assistant message's text (or its audio's transcript) must be given"
            raise ClientError("invalid_value", message, "item.content")
    item_id = item.get("id")
    return role, part, item_id if isinstance(item_id, str) and item_id else None


USER_PARTS = ("input_audio", "input_text")
ASSISTANT_PARTS = ("text", "output_text", "audio", "output_audio")  # (beta's names, GA's)

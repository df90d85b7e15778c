"""The input audio buffer of one OpenAI Realtime connection: the caller's appended audio,
decoded and resampled to the model's 16 kHz 20 ms frames (wire_audio.InputAudio), the turns
found in it (server_vad and semantic_vad: transports.turn_taking) or committed by the client,
and the audio clock that the speech events report (audio_start_ms / audio_end_ms: all the input
heard so far). At a pause in the caller's speech the engine begins the answer early, unheard:
the end of the turn confirms it, more speech drops it (SessionHandle.end_turn's `tentative`).

Audio goes to the engine as it arrives, so the model encodes and prefills it while the caller
talks. The engine answers everything it heard since its last answer, so audio appended after a
commit that has no response yet is held here: a later commit joins it to the waiting turn, and
once the response starts it begins the caller's next turn.
"""

import logging
import time

import numpy as np

from realtime.audio.io import from_pcm16
from realtime.model import tokens
from realtime.transports.openai.conversation import Conversation
from realtime.transports.openai.items import Item
from realtime.transports.openai.link import Link
from realtime.transports.openai.responses import Responses
from realtime.transports.openai.session import ClientError, Settings, TurnDetection, decode_base64
from realtime.transports.turn_taking import TurnTaking
from realtime.transports.wire_audio import FORMATS, InputAudio
from realtime.turns.detector import VAD_FRAME_MS, Turn, TurnEvent

MIN_COMMIT_MS = 100  # OpenAI's smallest commit

log = logging.getLogger("realtime.server")


def _ms(samples: int, rate_hz: int) -> int:
    return samples * 1000 // rate_hz


class InputBuffer:
    """The caller's audio from input_audio_buffer.append to the engine, the turns in it, and
    the buffer's commit and clear. With server_vad the detected turns drive the responses: the
    end of speech is committed and answered, its onset cuts the answer in progress."""

    def __init__(self, link: Link, conversation: Conversation, responses: Responses) -> None:
        self._link, self._conversation, self._responses = link, conversation, responses
        self._audio = InputAudio(FORMATS[link.settings.input_format])
        self._detector = self._new_detector()  # None: the client commits its turns
        self._speech_item: str | None = None  # the item the VAD's current speech will become
        self._heard_ms = 0  # every frame of input so far: the clock of audio_start/end_ms
        self._buffer_ms = 0  # in the input buffer: appended and not committed
        self._held: list[np.ndarray] = []  # appended after a commit that is not answered yet
        self._rolled_over = False  # the buffer overflowed once (and that was logged)
        self._early = False  # the engine began an answer at the caller's pause (_answer_early)

    @property
    def buffered_ms(self) -> int:
        """The audio in the buffer: appended and not committed."""
        return self._buffer_ms

    def settings_changed(self, old: Settings) -> None:
        """Follow a session.update: a new input format, or new turn detection (from scratch)."""
        new = self._link.settings
        if new.input_format != old.input_format:
            self._audio = InputAudio(FORMATS[new.input_format])
        if new.turn_detection != old.turn_detection:
            self._replace_detector()

    # --- the client's events --------------------------------------------------------------------

    def append(self, event: dict) -> None:
        """input_audio_buffer.append: its frames to the turn detector, or to the buffer."""
        audio = decode_base64(event.get("audio"), "audio")
        for frame in self._audio.push(audio):
            self._heard_ms += VAD_FRAME_MS
            self._detect(frame)

    def commit(self, item_id: str | None = None) -> None:
        """input_audio_buffer.commit, or the end of the VAD's speech: the buffer becomes the
        caller's turn, a user item that waits for its answer."""
        history = self._link.settings.history
        if self._conversation.text_waits and not history:
            message = "a typed message waits for its response: send response.create first"
            raise ClientError("conversation_has_pending_text", message)
        if self._early:  # the client commits more than the pause's answer heard
            self._early = False
            self._link.engine.resume_turn()
        if self._detector is not None and self._detector.in_turn:  # the client commits mid-speech
            self._detector.end(time.monotonic())
            item_id, self._speech_item = self._speech_item, None
        if self._buffer_ms < MIN_COMMIT_MS:
            message = (  # OpenAI's words
                "Error committing input audio buffer: buffer too small. Expected at least "
                f"{MIN_COMMIT_MS}ms of audio, but buffer only has {self._buffer_ms:.2f}ms of audio."
            )
            raise ClientError("input_audio_buffer_commit_empty", message)
        if history and self._conversation.waiting:
            # the turn that waits goes into the context unanswered, so that each user item is
            # a turn of its own there (without history, two commits make one turn)
            self._responses.remember()
        self.release_held()
        self._buffer_ms = 0
        self._add_turn(item_id or self._link.new_id("item"))

    def _add_turn(self, item_id: str) -> None:
        """The committed audio's user item, in the conversation and told to the client."""
        item = Item(item_id, "user")
        previous = self._conversation.add_turn(item)
        self._link.send("input_audio_buffer.committed", previous_item_id=previous, item_id=item.id)
        self._conversation.turn_added(item, previous)

    def clear(self, event: dict) -> None:
        """input_audio_buffer.clear: the audio not committed, and the speech in progress, go."""
        self._drop_uncommitted()
        self._replace_detector()
        self._link.send("input_audio_buffer.cleared")

    def _drop_uncommitted(self) -> None:
        self._early = False  # (clear_input drops the engine's early answer too)
        if self._conversation.waiting:
            self._held.clear()
        else:
            self._link.engine.clear_input()
        self._buffer_ms = 0

    def record(self, audio: bytes, item_id: str | None) -> None:
        """A recorded user message (conversation.item.create with input_audio): buffered and
        committed at once, past the turn detector and the audio clock."""
        for frame in InputAudio(FORMATS[self._link.settings.input_format]).push(audio):
            self._buffer(frame)
        self.commit(item_id)

    def release_held(self) -> None:
        """The audio held since the waiting turn's commit goes to the engine."""
        for pcm16 in self._held:
            self._link.engine.push_audio(from_pcm16(pcm16))
        self._held.clear()

    # --- turn detection -------------------------------------------------------------------------

    def _new_detector(self) -> TurnTaking | None:
        vad = self._link.settings.turn_detection
        if vad is None:
            return None
        return TurnTaking(vad.turn_options(self._link.options.turns), self._on_turn)

    def _replace_detector(self) -> None:
        """Turn detection from scratch (an early answer of the old detector's pause goes)."""
        if self._detector is not None:
            self._detector.close()
        if self._early:
            self._link.engine.resume_turn()
        self._detector, self._speech_item, self._early = self._new_detector(), None, False

    def close(self) -> None:
        if self._detector is not None:
            self._detector.close()

    def _detect(self, frame: np.ndarray) -> None:
        """One 20 ms frame through the turn detector (if the session has one)."""
        vad, detector = self._link.settings.turn_detection, self._detector
        if vad is None or detector is None:  # (both, or neither: a new vad, a new detector)
            self._buffer(frame, roll_over=True)
            return
        detector.push(frame, time.monotonic())

    def _on_turn(self, turn: Turn) -> None:
        vad = self._link.settings.turn_detection
        if vad is None or self._link.closed:  # (a late verdict of the end-of-turn model)
            return
        if turn.kind is TurnEvent.STARTED:  # its audio: the pre-roll, onset included
            self._speech_started(vad, 0 if turn.audio is None else len(turn.audio))
        if turn.audio is not None:
            self._buffer(turn.audio)
        if turn.kind is TurnEvent.PAUSED:
            self._answer_early(vad)
        if turn.kind is TurnEvent.RESUMED and self._early:
            self._early = False
            self._link.engine.resume_turn()
        if turn.kind is TurnEvent.ENDED:
            self._early = False
            self._speech_stopped(vad, turn.silence_ms)

    def _answer_early(self, vad: TurnDetection) -> None:
        """A pause: the engine begins the answer the end of the turn would ask for, held until
        then, when nothing stands between that end and its response."""
        conversation, settings = self._conversation, self._link.settings
        if not (vad.create_response and self._link.options.turns.preempt):
            return
        if self._responses.active or conversation.waiting or conversation.text_waits:
            return
        self._early = True
        self._link.engine.end_turn(settings.speak, settings.transcribe, tentative=True)

    def _speech_started(self, vad: TurnDetection, preroll_samples: int) -> None:
        start_ms = self._heard_ms - _ms(preroll_samples, tokens.INPUT_SAMPLE_RATE_HZ)
        self._speech_item = self._link.new_id("item")
        self._link.clock.touch()  # the caller speaks: not idle
        self._link.send(
            "input_audio_buffer.speech_started",
            audio_start_ms=max(0, start_ms),
            item_id=self._speech_item,
        )
        if self._responses.active and vad.interrupt_response:
            self._responses.cancel("turn_detected")

    def _speech_stopped(self, vad: TurnDetection, silence_ms: int) -> None:
        item_id = self._speech_item
        end_ms = max(0, self._heard_ms - silence_ms)
        self._link.send("input_audio_buffer.speech_stopped", audio_end_ms=end_ms, item_id=item_id)
        self.commit(item_id)
        if vad.create_response and not self._responses.active:
            self._responses.start()  # (the commit let the held audio go: none is left to hold)

    def _buffer(self, pcm16: np.ndarray, roll_over: bool = False) -> None:
        """Count a frame into the buffer and send it to the engine, or hold it. A full buffer
        is refused, or with `roll_over` (appended audio, no turn detection) emptied."""
        limit = self._link.options.turns.max_turn_ms
        if self._buffer_ms >= limit and roll_over:
            # The client commits its turns, and may stream without a pause (pipecat's locally
            # detected turns clear and commit around each utterance, and send the silence
            # between): the oldest uncommitted audio goes, rather than the session.
            if not self._rolled_over:
                log.info("an input audio buffer passed %d ms uncommitted: dropped, goes on", limit)
            self._rolled_over = True
            self._drop_uncommitted()
        elif self._buffer_ms >= limit:
            message = f"the input audio buffer holds {limit} ms, the most one turn may: commit it"
            raise ClientError("input_audio_buffer_full", message)
        self._buffer_ms += _ms(len(pcm16), tokens.INPUT_SAMPLE_RATE_HZ)
        if self._conversation.waiting:
            self._held.append(pcm16)
        else:
            self._link.engine.push_audio(from_pcm16(pcm16))

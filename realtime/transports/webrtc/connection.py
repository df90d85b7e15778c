"""One caller's conversation: their WebRTC peer connection on one side, an engine session on
the other. Runs on the event loop; the model runs on the engine's thread.

    mic ─RTP─► aiortc (opus decode) ─► turns.Framer ─► TurnDetector ─push_audio/end_turn─► engine
    engine ─sink (inference thread)─► loop ─► OutputBuffer ─► AgentAudioTrack ─RTP─► speaker
    data channel ◄─► JSON events (protocol.py)

The interrupt path (speech onset while the agent talks, or the client's "interrupt") overtakes
everything queued: the OutputBuffer is flushed so the next 20 ms frame is silence, the engine
is told to cancel between steps with how much was heard, and events of the cancelled answer
that were already on their way are dropped (every engine event names its answer's turn).
"""

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import cast

import numpy as np
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av import AudioFrame

from realtime.audio.io import from_pcm16
from realtime.engine import events
from realtime.engine.engine import SessionHandle
from realtime.model import tokens
from realtime.transports.lifetime import DRAIN_S, Clock, Closing
from realtime.transports.loop import loop_sink
from realtime.transports.options import CallOptions
from realtime.transports.turn_taking import TurnTaking
from realtime.transports.webrtc import protocol
from realtime.transports.webrtc.playout import AgentAudioTrack, OutputBuffer
from realtime.turns.detector import Framer, Turn, TurnEvent
from realtime.turns.options import TurnOptions

log = logging.getLogger("realtime.server")


@dataclass
class _Answer:
    """The answer to one turn, from the end of the turn until it has played (or was cut)."""

    id: int
    speech_end_t: float
    turn_end_t: float
    first_text_t: float | None = None
    samples: int = 0  # received from the engine
    held_text: tuple[str, ...] = ()  # text decoded before its audio: shown when speech starts


# Markers that travel in the OutputBuffer and are acted on when playback reaches them.
@dataclass(frozen=True)
class _Start:
    answer: _Answer


@dataclass(frozen=True)
class _Text:
    response: int
    text: str


@dataclass(frozen=True)
class _End:
    response: int
    reason: str
    text: str = ""


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


def _samples_ms(samples: int) -> float:
    return _ms(samples / tokens.OUTPUT_SAMPLE_RATE_HZ)


class Conversation:
    """Wires one RTCPeerConnection to one engine session."""

    def __init__(self, options: CallOptions, on_closed: Callable[["Conversation"], None]) -> None:
        self.options, self._on_closed = options, on_closed
        self.handle: SessionHandle | None = None
        self.pc = RTCPeerConnection()
        self.buffer = OutputBuffer()
        self.track = AgentAudioTrack(self.buffer, self._on_sent)
        self.turns = TurnTaking(options.turns, self._on_turn)
        self.max_answer_ms = options.max_answer_ms
        self.history = options.history  # the engine session's keep_history, as set
        self.closed = False
        self.clock = Clock()
        self.closing: Closing | None = None  # the server is ending the call, and why
        self.address = ""  # the client's, as the server sees it (server.client_address)
        self.sink = loop_sink(self._on_engine_event)  # the engine's, for open_session
        self._channel = None
        self._outbox: list[dict] = []  # messages produced before the data channel opened
        self._tasks: set[asyncio.Task] = set()
        self._turn = 0  # the caller's turns so far; an answer has its turn's number
        self._response = 0  # the latest answer
        self._answer: _Answer | None = None  # the engine is producing it
        self._playing: int | None = None  # the answer whose audio is going out
        self._played = 0  # its samples sent so far
        self._engine_turn = 0  # end_turn() calls so far: the number engine events carry
        self._heard: dict[int, int] = {}  # engine turn -> the caller's turn it transcribes
        self._remembered: dict[int, int] = {}  # engine turn -> caller's turn, with history on
        self._stopping: tuple[float, dict] | None = None  # interrupt waiting for silence
        self._speech_end_t: float | None = None  # the last voiced frame of the last turn
        self.pc.on("track", self._on_track)
        self.pc.on("datachannel", self._on_datachannel)
        self.pc.on("connectionstatechange", self._on_connection_state)

    @property
    def sid(self) -> int:
        return -1 if self.handle is None else self.handle.id

    @property
    def engine(self) -> SessionHandle:
        """`handle`, which the server sets before it answers the offer: no audio or message
        comes before."""
        if self.handle is None:
            raise RuntimeError("the conversation has no engine session")
        return self.handle

    # --- lifecycle --------------------------------------------------------------------------

    async def answer(self, sdp: str) -> str:
        """Take the client's offer (raises whatever aiortc raises if it cannot); our answer."""
        self.pc.addTrack(self.track)
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        await self.pc.setLocalDescription(await self.pc.createAnswer())
        return self.pc.localDescription.sdp

    @property
    def busy(self) -> bool:
        """An answer is being made or played: the call is not idle, and a shutdown lets it end."""
        playing = self._playing is not None or self.buffer.pending_samples > 0
        return self._answer is not None or playing

    async def hang_up(self, closing: Closing) -> None:
        """The server ends the call: session.closing on the data channel, then the close."""
        if self.closed or self.closing is not None:
            return
        self.closing = closing
        log.info("session %d: ending the call (%s): %s", self.sid, closing.reason, closing.message)
        closing_event = {"reason": closing.reason, "message": closing.message}
        self.send(protocol.message("session.closing", **closing_event))
        await self._flush_channel()
        await self.close(closing.message)

    async def _flush_channel(self) -> None:
        """Wait (briefly) until the data channel has handed what was sent to the transport."""
        channel = self._channel
        if channel is None or channel.readyState != "open" or not channel.bufferedAmount:
            return
        flushed = asyncio.Event()
        channel.once("bufferedamountlow", flushed.set)  # (its threshold: 0)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(flushed.wait(), DRAIN_S)

    async def close(self, reason: str) -> None:
        """Free the engine slot first (cheap, idempotent), then tear the connection down."""
        if self.closed:
            return
        self.closed = True
        if self.handle is not None:  # None: the engine was full, the caller was told so
            log.info("session %d closed: %s", self.sid, reason)
            self.handle.close()
        self.buffer.flush()
        self.track.stop()
        self.turns.close()
        for task in self._tasks:
            if task is not asyncio.current_task():
                task.cancel()
        try:
            await self.pc.close()
        except Exception as exc:  # aiortc fails closing a peer whose negotiation broke off halfway
            log.warning("session %d: closing its peer connection failed: %r", self.sid, exc)
        finally:
            self._on_closed(self)

    def _spawn(self, coro) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- the client's side: peer connection and data channel -------------------------------

    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind == "audio":
            self._spawn(self._listen(track))

    def _on_connection_state(self) -> None:
        if self.pc.connectionState in ("failed", "closed"):
            self._spawn(self.close(f"connection {self.pc.connectionState}"))

    def _on_datachannel(self, channel) -> None:
        self._channel = channel
        channel.on("message", self._on_message)
        channel.on("close", lambda: self._spawn(self.close("the client hung up")))
        self.send(
            protocol.message(
                "session.ready",
                session=self.sid,
                settings=self._settings(),
                limits={
                    "max_message_bytes": protocol.MAX_MESSAGE_BYTES,
                    "idle_timeout_s": self.options.idle_timeout_s,
                    "max_session_s": self.options.max_session_s,
                    "history_positions": self.options.history_positions,
                },
                transcripts=self.options.transcribe,
            )
        )
        for message in self._outbox:
            self.send(message)
        self._outbox.clear()

    def send(self, message: dict) -> None:
        if self._channel is None:
            self._outbox.append(message)
        elif self._channel.readyState == "open":
            self._channel.send(json.dumps(message))

    def _on_message(self, raw: str | bytes) -> None:
        self.clock.touch()
        try:
            message = protocol.parse_client_message(raw)
        except protocol.ProtocolError as exc:
            log.info("session %d: bad message (%s)", self.sid, exc)
            self.send(protocol.error(exc.code, str(exc)))
            return
        if isinstance(message, protocol.Interrupt):
            self.interrupt("client", time.monotonic())
        else:
            self._apply_settings(message)

    def _apply_settings(self, settings: protocol.Settings) -> None:
        now = self.turns.options
        wanted = replace(
            now, vad=settings.vad or now.vad, end_of_turn=settings.end_of_turn or now.end_of_turn
        )
        if wanted != now:
            self._detect_turns(wanted)
        if settings.vad_aggressiveness is not None:
            self.turns.set_aggressiveness(settings.vad_aggressiveness)
        if settings.max_answer_ms is not None:
            self.max_answer_ms = settings.max_answer_ms
        if settings.history is not None and settings.history != self.history:
            self.history = settings.history
            self.engine.set_history(settings.history)
            self._remembered.clear()
        self.send(protocol.message("settings.updated", settings=self._settings()))

    def _settings(self) -> dict:
        return {
            "vad_aggressiveness": self.turns.aggressiveness,
            "max_answer_ms": self.max_answer_ms,
            "history": self.history,
            "vad": self.turns.options.vad,
            "end_of_turn": self.turns.options.end_of_turn,
        }

    def _detect_turns(self, options: TurnOptions) -> None:
        """Turn detection anew (a half-heard turn, and an early answer to it, are dropped).
        What needs a model that cannot load falls back (turn_taking.usable), as the settings
        the page gets back show."""
        level, was_in_turn = self.turns.aggressiveness, self.turns.in_turn
        self.turns.close()
        self.turns = TurnTaking(options, self._on_turn)
        self.turns.set_aggressiveness(level)
        if was_in_turn:
            self.engine.clear_input()

    # --- the caller's speech ----------------------------------------------------------------

    async def _listen(self, track: MediaStreamTrack) -> None:
        """Decoded mic audio -> turns; a client whose audio stops arriving is gone."""
        framer, timeout = Framer(), self.options.setup_timeout_s
        try:
            while True:
                # aiortc types recv() as Frame | Packet: an audio track's are AudioFrames
                frame = cast(AudioFrame, await asyncio.wait_for(track.recv(), timeout))
                timeout, t = self.options.input_timeout_s, time.monotonic()
                for pcm in framer.push(frame):
                    self.turns.push(pcm, t)
        except TimeoutError:
            reason = f"no audio from the client for {timeout:.0f} s"
        except MediaStreamError:
            reason = "the client's audio ended"
        except Exception as exc:  # a bug here must not leave the slot taken
            log.exception("session %d: reading the caller's audio failed", self.sid)
            reason = f"internal error: {type(exc).__name__}"
        await self.close(reason)

    def _on_turn(self, turn: Turn) -> None:
        if self.closed:  # (a verdict of the end-of-turn model may come after the end)
            return
        if turn.kind is TurnEvent.STARTED:
            self.clock.touch()
            self._turn += 1
            rejoins = self.turns.rejoins(turn, self._speech_end_t)
            if self.interrupt("speech", turn.t):
                log.info("session %d: barge-in", self.sid)
            else:
                rejoins = False  # (its answer was over: the caller answers it)
            continues = {}
            if rejoins:  # a false end of turn: this speech goes on with that turn
                self.engine.rejoin_turn()
                self._remembered.pop(self._engine_turn, None)
                continues = {"continues": self._response}
            self.send(protocol.message("speech.started", turn=self._turn, **continues))
        if turn.audio is not None:
            self.engine.push_audio(from_pcm16(turn.audio))
        if self.turns.options.preempt and turn.kind is TurnEvent.PAUSED:
            self.engine.end_turn(tentative=True)  # held until ENDED confirms it
        if self.turns.options.preempt and turn.kind is TurnEvent.RESUMED:
            self.engine.resume_turn()
        if turn.kind is TurnEvent.ENDED:
            self.engine.end_turn()
            self._engine_turn += 1
            if self.options.transcribe:
                self._heard[self._engine_turn] = self._turn
            if self.history:
                self._remembered[self._engine_turn] = self._turn
            self._response = self._turn
            assert turn.speech_end_t is not None  # an ENDED turn carries it
            self._speech_end_t = turn.speech_end_t
            self._answer = _Answer(self._turn, turn.speech_end_t, turn.t)
            self.send(protocol.message("speech.stopped", turn=self._turn))

    # --- interrupts -------------------------------------------------------------------------

    def interrupt(self, reason: str, t0: float) -> bool:
        """Stop the answer now: silence from the next frame, cancel in the engine.

        `t0` is when the cause was detected; the interrupted event reports how long the
        outbound audio took to stop after it. Returns False if nothing was being answered.
        """
        if self._answer is None and self._playing is None and not self.buffer.pending_samples:
            return False
        played = self._played if self._playing is not None else 0
        self.buffer.flush()
        self._playing = None
        if self._answer is not None:
            self._cancel_engine(played // tokens.FRAME_SAMPLES)
        info = {"response": self._response, "reason": reason, "played_ms": _samples_ms(played)}
        self._stopping = (t0, info)
        return True

    def _cancel_engine(self, played_frames: int | None = None) -> None:
        self.engine.cancel(played_frames, self._engine_turn)
        self._answer = None  # its events already on their way find no answer to join

    # --- the engine's answer ----------------------------------------------------------------

    def _on_engine_event(self, event: events.Event) -> None:
        if isinstance(event, events.TRANSCRIPT):
            self._on_transcript(event)
            return
        if isinstance(event, events.Forgotten):  # the context was full: the oldest turns left
            turns = [self._remembered.pop(t) for t in event.turns if t in self._remembered]
            self.send(protocol.message("history.forgotten", turns=turns, positions=event.positions))
            return
        if self.closed or event.turn != self._engine_turn:
            return  # a closed call, or an answer a newer turn superseded
        if isinstance(event, events.Error):
            self.send(protocol.error("engine", event.message))
            if self._answer is not None:
                self._finish(self._answer, "error", "")
        elif self._answer is not None:
            self._on_answer_event(self._answer, event)

    def _on_transcript(
        self, event: events.TranscriptDelta | events.TranscriptDone | events.TranscriptFailed
    ) -> None:
        """The caller's words, sent as they are decoded (they need not wait for the audio)."""
        turn = self._heard.get(event.turn)
        if self.closed or turn is None:
            return
        if isinstance(event, events.TranscriptDelta):
            self.send(protocol.message("speech.transcript.delta", turn=turn, text=event.text))
            return
        del self._heard[event.turn]
        if isinstance(event, events.TranscriptDone):
            self.send(protocol.message("speech.transcript.done", turn=turn, text=event.text))
        else:
            message = protocol.message("speech.transcript.failed", turn=turn, message=event.message)
            self.send(message)

    def _on_answer_event(self, answer: _Answer, event: events.Event) -> None:
        if isinstance(event, events.AudioChunk):
            self._on_audio(answer, event.pcm)
        elif isinstance(event, events.TextDelta):
            if answer.samples == 0:
                answer.held_text += (event.text,)  # no audio yet: show it when speech starts
            else:
                self.buffer.add_marker(_Text(answer.id, event.text))
        elif isinstance(event, events.FirstText):
            answer.first_text_t = event.t
        elif isinstance(event, events.Done):
            self._finish(answer, event.reason, event.text)

    def _on_audio(self, answer: _Answer, pcm: np.ndarray) -> None:
        limit = self._limit_samples()
        if limit is not None:
            pcm = pcm[: max(0, limit - answer.samples)]
        if answer.samples == 0 and pcm.size:
            self.buffer.add_marker(_Start(answer))
            self._release_text(answer)
        self.buffer.add_audio(pcm)
        answer.samples += pcm.size
        if limit is not None and answer.samples >= limit:
            self._cancel_engine()
            self._end(answer, "length", "")

    def _limit_samples(self) -> int | None:
        if self.max_answer_ms is None:
            return None
        return self.max_answer_ms * tokens.OUTPUT_SAMPLE_RATE_HZ // 1000

    def _release_text(self, answer: _Answer) -> None:
        for text in answer.held_text:
            self.buffer.add_marker(_Text(answer.id, text))
        answer.held_text = ()

    def _finish(self, answer: _Answer, reason: str, text: str) -> None:
        """End `answer`, the one the engine is producing."""
        self._answer = None
        self._end(answer, reason, text)

    def _end(self, answer: _Answer, reason: str, text: str) -> None:
        self._release_text(answer)  # an answer without audio: its text still shows
        self.buffer.add_marker(_End(answer.id, reason, text))

    # --- playback (called by the track after each 20 ms frame) ------------------------------

    def _on_sent(self, samples: int, markers: list[object], t: float) -> None:
        for marker in markers:
            self._reached(marker, t)
        if self._playing is not None:
            self._played += samples
        if self._stopping is not None and samples == 0:
            t0, info = self._stopping
            self._stopping = None
            self.send(protocol.message("response.interrupted", stop_ms=_ms(t - t0), **info))

    def _reached(self, marker: object, t: float) -> None:
        if isinstance(marker, _Start):
            self._playing, self._played = marker.answer.id, 0
            self.send(protocol.message("response.started", response=marker.answer.id))
            self.send(_latency(marker.answer, t))
        elif isinstance(marker, _Text):
            self.send(
                protocol.message("response.text.delta", response=marker.response, text=marker.text)
            )
        elif isinstance(marker, _End):
            played = self._played if self._playing == marker.response else 0
            self._playing = None
            self.send(
                protocol.message(
                    "response.done",
                    response=marker.response,
                    reason=marker.reason,
                    played_ms=_samples_ms(played),
                    text=marker.text,
                )
            )


def _latency(answer: _Answer, first_audio_t: float) -> dict:
    """The turn's figures, each from the end of the caller's speech (its last voiced frame)."""
    start = answer.speech_end_t
    first_text = None if answer.first_text_t is None else _ms(answer.first_text_t - start)
    return protocol.message(
        "turn.latency",
        response=answer.id,
        end_of_turn_ms=_ms(answer.turn_end_t - start),
        first_text_ms=first_text,
        first_audio_ms=_ms(first_audio_t - start),
    )

"""Phone calls through Twilio Media Streams: a call's 8 kHz mu-law audio over a WebSocket on one
side, an engine session on the other. Runs on the event loop; the model runs on the engine's
thread.

    Twilio ── POST /twilio/voice (the number's voice webhook) ──► TwiML: <Connect><Stream>
    Twilio ══ WS /twilio/media ══► "media" (20 ms of mu-law) ─► InputAudio (16 kHz frames)
        ─► TurnTaking ─► push_audio / end_turn ─► engine
    engine ─sink─► loop ─► OutputAudio (mu-law) ─► "media" + a "mark" per chunk ─► Twilio,
        which buffers and plays it, and echoes each mark once the audio before it has played
    barge-in: speech onset while the answer plays ─► "clear" (Twilio drops what it holds)
        + engine cancel(frames heard, from the marks)

Every request Twilio makes is signed (X-Twilio-Signature: HMAC-SHA1 with the account's auth
token, over the URL it requested and the POST parameters); with an auth token the server checks
each one against its public URL, since behind a tunnel or proxy the URL it sees is not the one
Twilio signed. Twilio shows no errors to the caller: what goes wrong is logged.
"""

import base64
import binascii
import hashlib
import hmac
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import replace
from urllib.parse import urlsplit, urlunsplit
from xml.etree import ElementTree

import numpy as np
from aiohttp import WSMsgType, web

from realtime.audio.io import from_pcm16
from realtime.engine import events
from realtime.model import tokens
from realtime.transports.options import CallOptions
from realtime.transports.turn_taking import TurnTaking
from realtime.transports.websocket import WebSocketDoor
from realtime.transports.wire_audio import FORMATS, InputAudio, OutputAudio
from realtime.turns.detector import TurnEvent
from realtime.turns.options import END_OF_TURN, SPEECH_DETECTORS

VOICE_PATH, MEDIA_PATH = "/twilio/voice", "/twilio/media"
MEDIA_FORMAT = {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}
MAX_MESSAGE_BYTES = 64 * 1024  # a media message carries 20 ms (160 bytes) of audio
HEARTBEAT_S = 20.0
DEFAULT_PORTS = {"https": 443, "wss": 443, "http": 80, "ws": 80}
# A phone number's webhook may choose its calls' turn detection: /twilio/voice?end_of_turn=...
TURN_CHOICES = {"vad": SPEECH_DETECTORS, "end_of_turn": END_OF_TURN}

log = logging.getLogger("realtime.server")


# --- requests from Twilio ------------------------------------------------------------------------


def signature(auth_token: str, url: str, params: dict[str, list[str]]) -> str:
    """Twilio's X-Twilio-Signature: base64 HMAC-SHA1 of the URL followed by each POST parameter's
    name and value, names sorted (a repeated name's values sorted too)."""
    signed = url + "".join(
        name + value for name in sorted(params) for value in sorted(params[name])
    )
    signed_bytes = signed.encode(errors="surrogateescape")  # (aiohttp's text of any bytes)
    digest = hmac.new(auth_token.encode(), signed_bytes, hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


def signed_by_twilio(auth_token: str, url: str, params: dict[str, list[str]], given: str) -> bool:
    """Twilio signs the URL as written, with or without the scheme's default port: try both."""
    variants = _with_and_without_port(url)
    given_bytes = given.encode(errors="surrogateescape")  # (a header may hold any bytes)
    return any(
        hmac.compare_digest(signature(auth_token, v, params).encode(), given_bytes)
        for v in variants
    )


def _with_and_without_port(url: str) -> set[str]:
    variants = {url}
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port or DEFAULT_PORTS.get(parts.scheme)
    except ValueError:  # no URL (the Host header is the client's): only as written
        return variants
    for netloc in (host, f"{host}:{port}"):
        variants.add(urlunsplit(parts._replace(netloc=netloc)))
    return variants


def stream_url(public_url: str) -> str:
    """The media WebSocket's URL, as the TwiML names it and Twilio signs it."""
    try:
        parts = urlsplit(public_url.rstrip("/"))
    except ValueError:  # a client's Host header that makes no URL: Twilio signed none such
        return public_url + MEDIA_PATH
    scheme = "wss" if parts.scheme == "https" else "ws"
    return urlunsplit((scheme, parts.netloc, parts.path + MEDIA_PATH, "", ""))


def twiml(media_url: str, parameters: dict[str, str] | None = None) -> str:
    """Connect the call to a bidirectional media stream at `media_url`; Twilio hands the
    `parameters` back in the stream's start message (customParameters)."""
    response = ElementTree.Element("Response")
    connect = ElementTree.SubElement(response, "Connect")
    stream = ElementTree.SubElement(connect, "Stream", url=media_url)
    for name, value in (parameters or {}).items():
        ElementTree.SubElement(stream, "Parameter", name=name, value=value)
    return ElementTree.tostring(response, encoding="unicode", xml_declaration=True)


def turn_choices(given: Mapping[str, object]) -> dict[str, str]:
    """The turn detection a call asks for (TURN_CHOICES: the voice webhook's query, the stream's
    customParameters); raises ValueError for a value that is not a choice."""
    chosen = {}
    for name, allowed in TURN_CHOICES.items():
        value = given.get(name)
        if value is None:
            continue
        if value not in allowed:
            raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
        chosen[name] = str(value)
    return chosen


# --- one call ----------------------------------------------------------------------------------


class TwilioCall(WebSocketDoor):
    """Wires one Media Streams WebSocket to one engine session."""

    kind = "phone call"

    def __init__(self, ws: web.WebSocketResponse, options: CallOptions) -> None:
        super().__init__(ws)
        self.options = options
        self.stream_sid: str | None = None  # from the "start" message
        self._input = InputAudio(FORMATS["g711_ulaw"])
        self._turns = TurnTaking(options.turns, self._on_turn)
        self._engine_turn = 0  # end_turn() calls so far: the number engine events carry
        self._answering = False  # the engine is producing the answer to _engine_turn
        self._output = OutputAudio(FORMATS["g711_ulaw"])
        self._made = 0  # samples (24 kHz) of the latest answer taken from the engine
        self._sent = 0  # of them, sent to Twilio
        self._played = 0  # of them, played: the last mark Twilio echoed
        self._speech_end_t = 0.0  # the caller's last voiced frame of the turn answered
        self._first_audio_logged = False

    async def run(self) -> None:
        """Serve the call until Twilio stops the stream or the connection ends."""
        try:
            async for message in self.ws:
                if message.type is WSMsgType.TEXT:
                    self._on_text(message.data)
                elif message.type is WSMsgType.ERROR:
                    log.info("session %d: %s", self.sid, self.ws.exception())
                if self.closed:
                    break
        finally:
            self.close("the stream ended")
            self._turns.close()
        await self.ws.close()

    def _send(self, message: dict) -> None:
        if not self.closed and self.stream_sid is not None:
            self._out.put(json.dumps({**message, "streamSid": self.stream_sid}))

    # --- Twilio's messages --------------------------------------------------------------------

    def _on_text(self, raw: str) -> None:
        try:
            self._dispatch(json.loads(raw))
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError):  # not Twilio's
            log.info("session %d: ignored a malformed message", self.sid)

    def _dispatch(self, message: dict) -> None:
        kind = message["event"]
        if kind == "start":
            self._start(message)
        elif kind == "media" and self.stream_sid is not None:
            self._media(message.get("media") or {})
        elif kind == "mark":
            self._mark((message.get("mark") or {}).get("name", ""))
        elif kind == "stop":
            self.close("the call ended")
        elif kind == "dtmf":
            self.clock.touch()  # a key pressed: someone is there
        elif kind != "connected":
            log.info("session %d: ignored Twilio's %r", self.sid, kind)

    def _start(self, message: dict) -> None:
        start = message.get("start") or {}
        media_format = start.get("mediaFormat")
        if media_format != MEDIA_FORMAT:
            self.close(f"unexpected media format {media_format}; Twilio sends {MEDIA_FORMAT}")
            return
        stream_sid = start.get("streamSid") or message.get("streamSid") or self.stream_sid
        if not isinstance(stream_sid, str) or not stream_sid:
            self.close("a start message without a streamSid: nothing could be sent back")
            return
        self.stream_sid = stream_sid  # (a repeated start without one keeps the first's)
        log.info("session %d: call %s streaming", self.sid, start.get("callSid"))
        self._choose_turns(start.get("customParameters"))

    def _choose_turns(self, parameters: object) -> None:
        """The turn detection the call's webhook chose (turn_choices), before any audio."""
        if not isinstance(parameters, dict):
            return
        try:
            chosen = turn_choices(parameters)
        except ValueError as exc:
            log.info("session %d: ignored a customParameter: %s", self.sid, exc)
            return
        now = self._turns.options
        vad, end_of_turn = chosen.get("vad", now.vad), chosen.get("end_of_turn", now.end_of_turn)
        options = replace(now, vad=vad, end_of_turn=end_of_turn)
        if chosen and options != self._turns.options and not self._turns.in_turn:
            self._turns.close()
            self._turns = TurnTaking(options, self._on_turn)

    def _media(self, media: dict) -> None:
        if media.get("track", "inbound") != "inbound":
            return
        try:
            payload = base64.b64decode(media.get("payload", ""), validate=True)
        except (binascii.Error, TypeError):
            log.info("session %d: ignored media that is not base64", self.sid)
            return
        t = time.monotonic()
        for frame in self._input.push(payload):
            self._turns.push(frame, t)

    @property
    def busy(self) -> bool:
        return self._answering or self._sent > self._played

    def _on_turn(self, turn) -> None:
        if self.closed:  # (a verdict of the end-of-turn model may come after the end)
            return
        if turn.kind is TurnEvent.STARTED:
            self.clock.touch()
            if self.busy:
                rejoins = self._turns.rejoins(turn, self._speech_end_t or None)
                self._barge_in()
                if rejoins:  # a false end of turn: this speech goes on with that turn
                    log.info("session %d: the caller went on: one turn with the last", self.sid)
                    self.engine.rejoin_turn()
        if turn.audio is not None:
            self.engine.push_audio(from_pcm16(turn.audio))
        if self._turns.options.preempt and turn.kind is TurnEvent.PAUSED:
            self.engine.end_turn(tentative=True)  # held until ENDED confirms it
        if self._turns.options.preempt and turn.kind is TurnEvent.RESUMED:
            self.engine.resume_turn()
        if turn.kind is TurnEvent.ENDED:
            self.engine.end_turn()
            self._engine_turn += 1
            self._answering, self._made, self._sent, self._played = True, 0, 0, 0
            self._output = OutputAudio(FORMATS["g711_ulaw"])
            self._speech_end_t, self._first_audio_logged = turn.speech_end_t, False

    def _barge_in(self) -> None:
        """Silence the phone now (Twilio drops its buffer) and stop the engine's answer."""
        log.info("session %d: barge-in after %d ms of the answer", self.sid, self._heard_ms())
        self._send({"event": "clear"})
        if self._answering:
            self.engine.cancel(self._played // tokens.FRAME_SAMPLES, self._engine_turn)
        self._answering = False
        self._sent = self._played = 0  # marks of the dropped audio echo back: not played

    def _mark(self, name: str) -> None:
        """Twilio played the audio before a mark named "<turn>:<samples>" (or "<turn>:end")."""
        turn, _, at = name.partition(":")
        if turn != str(self._engine_turn) or not self._sent:
            return  # an older answer's, or echoed by a clear
        if at == "end":
            log.info("session %d: answer %s played (%d ms)", self.sid, turn, self._heard_ms())
            self._sent = self._played = 0
        elif at.isdigit():
            self._played = int(at)

    def _heard_ms(self) -> int:
        return self._played * 1000 // tokens.OUTPUT_SAMPLE_RATE_HZ

    # --- the engine's answer ------------------------------------------------------------------

    def _on_engine_event(self, event: events.Event) -> None:
        if self.closed or event.turn != self._engine_turn or not self._answering:
            return  # a closed call, or an answer that was cut or superseded
        if isinstance(event, events.AudioChunk):
            self._audio(event.pcm)
        elif isinstance(event, events.Done):
            self._end(f"done ({event.reason}): {event.text!r}")
        elif isinstance(event, events.Error):
            self._end(f"failed: {event.message}")

    def _audio(self, pcm: np.ndarray) -> None:
        """Send the answer's audio, up to the server's limit on its length; the engine stops
        there too (the resampler may hold a few samples back, so the samples made count, not
        those sent)."""
        limit = self.options.max_answer_ms
        room = None if limit is None else limit * tokens.OUTPUT_SAMPLE_RATE_HZ // 1000 - self._made
        if room is not None:
            pcm = pcm[: max(0, room)]
        self._made += pcm.size
        self._play(self._output.push(pcm), self._made)
        if not self._first_audio_logged and self._sent:
            self._first_audio_logged = True
            delay_ms = (time.monotonic() - self._speech_end_t) * 1000
            log.info("session %d: first audio %.0f ms after the end of speech", self.sid, delay_ms)
        if room is not None and pcm.size >= room:
            self.engine.cancel(turn=self._engine_turn)
            self._end("cut at the answer's length limit")

    def _play(self, mulaw: bytes, sent: int) -> None:
        if mulaw:
            payload = base64.b64encode(mulaw).decode()
            self._send({"event": "media", "media": {"payload": payload}})
            self._sent = sent
            self._send({"event": "mark", "mark": {"name": f"{self._engine_turn}:{sent}"}})

    def _end(self, how: str) -> None:
        self._play(self._output.flush(), self._made)
        self._answering = False
        if self._sent:
            self._send({"event": "mark", "mark": {"name": f"{self._engine_turn}:end"}})
        log.info("session %d: answer %d %s", self.sid, self._engine_turn, how)

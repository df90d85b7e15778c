"""A scripted caller over real WebRTC (aiortc): speaks a clip into a live session in real time,
records the reply and the events with their arrival times. `realtime call` is its command line;
tests and benchmarks drive `LoopbackClient` directly.

    WAV ─► SpeechTrack (16 kHz, 20 ms frames, paced; silence between clips so VAD ends turns)
        ─RTP─► server ─RTP─► recorder (24 kHz float, timestamped)    data channel ─► events

The server sends audio for the whole call, silence between answers, so a client that hears
nothing for SERVER_SILENCE_S knows the server is gone even where it died without a word; a
server that closes on purpose says `session.closing` first. Either way `hung_up` is set and
`wait_for` raises ServerHungUp instead of waiting on.
"""

import asyncio
import fractions
import json
import time
from collections import deque
from dataclasses import dataclass, field
from typing import cast

import aiohttp
import av
import numpy as np
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from realtime.audio.io import to_pcm16
from realtime.model import tokens
from realtime.transports.webrtc.protocol import DATA_CHANNEL_LABEL

SPEECH_FRAME_MS = 20
SPEECH_FRAME_SAMPLES = tokens.INPUT_SAMPLE_RATE_HZ * SPEECH_FRAME_MS // 1000  # 320
CONNECT_TIMEOUT_S = 30.0  # offer to session.ready; generous for a loaded machine
SERVER_SILENCE_S = 2.0  # no audio from the server this long: it is gone (PROTOCOL.md "Media")


class SignalingError(RuntimeError):
    """The server refused the offer; status and code are the server's."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"HTTP {status} {code}: {message}")
        self.status, self.code = status, code


class ServerHungUp(RuntimeError):
    """The server ended the call (`session.closing`, the connection closed) or went silent."""


class SpeechTrack(MediaStreamTrack):
    """A microphone that says what it is given, in real time, and is silent otherwise."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self._clips: deque[tuple[np.ndarray, asyncio.Future]] = deque()
        self._start: float | None = None
        self._pts = 0

    def say(self, pcm: np.ndarray) -> asyncio.Future:
        """Queue 16 kHz mono float speech; the future resolves when its last frame is sent."""
        pcm16 = to_pcm16(pcm)
        done = asyncio.get_running_loop().create_future()
        self._clips.append((pcm16, done))
        return done

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        now = time.monotonic()
        if self._start is None:
            self._start = now
        else:
            self._pts += SPEECH_FRAME_SAMPLES
            await asyncio.sleep(self._start + self._pts / tokens.INPUT_SAMPLE_RATE_HZ - now)
        frame = av.AudioFrame(format="s16", layout="mono", samples=SPEECH_FRAME_SAMPLES)
        frame.planes[0].update(self._next_samples().tobytes())
        frame.pts, frame.sample_rate = self._pts, tokens.INPUT_SAMPLE_RATE_HZ
        frame.time_base = fractions.Fraction(1, tokens.INPUT_SAMPLE_RATE_HZ)
        return frame

    def _next_samples(self) -> np.ndarray:
        out = np.zeros(SPEECH_FRAME_SAMPLES, np.int16)
        if self._clips:
            pcm, done = self._clips[0]
            out[: len(pcm[:SPEECH_FRAME_SAMPLES])] = pcm[:SPEECH_FRAME_SAMPLES]
            if len(pcm) <= SPEECH_FRAME_SAMPLES:
                self._clips.popleft()
                if not done.done():
                    done.set_result(time.monotonic())
            else:
                self._clips[0] = (pcm[SPEECH_FRAME_SAMPLES:], done)
        return out


@dataclass
class Recording:
    """Received audio as (arrival time, 24 kHz mono float32) chunks."""

    chunks: list[tuple[float, np.ndarray]] = field(default_factory=list)

    def audio(self, since: float = 0.0, until: float = float("inf")) -> np.ndarray:
        parts = [pcm for t, pcm in self.chunks if since <= t <= until]
        return np.concatenate(parts) if parts else np.zeros(0, np.float32)


class LoopbackClient:
    """One call to a `realtime serve` server at `url` (http://host:port)."""

    def __init__(self, url: str, token: str | None = None) -> None:
        self.url, self.token = url.rstrip("/"), token
        self.pc = RTCPeerConnection()
        self.mic = SpeechTrack()
        self.recording = Recording()
        self.events: list[dict] = []  # each with "_t": its arrival time (time.monotonic())
        self.channel = self.pc.createDataChannel(DATA_CHANNEL_LABEL)
        self.session: int | None = None
        self.spoken: float | None = None  # when the last thing we said ended (monotonic)
        self.hung_up = asyncio.Event()  # the server ended the call; `hangup_reason` says how
        self.hangup_reason: str | None = None
        self._closing = False  # we hang up ourselves: the connection's end is no news
        self._arrived = asyncio.Condition()
        self._tasks: set[asyncio.Task] = set()
        self.channel.on("message", self._on_message)
        self.channel.on("close", lambda: self._hang_up("the server closed the data channel"))
        self.pc.on("track", self._on_track)
        self.pc.on("connectionstatechange", self._on_connection_state)

    async def connect(self) -> dict:
        """Offer, answer, and wait for `session.ready`; raises SignalingError if refused."""
        self.pc.addTrack(self.mic)
        await self.pc.setLocalDescription(await self.pc.createOffer())
        answer = await post_offer(self.url, self.pc.localDescription.sdp, self.token)
        self.session = answer["session"]
        await self.pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], "answer"))
        async with asyncio.timeout(CONNECT_TIMEOUT_S):
            return await self.wait_for("session.ready")

    async def say(self, pcm: np.ndarray) -> float:
        """Speak 16 kHz mono float speech; returns when its last frame was sent (monotonic)."""
        self.spoken = await self.mic.say(pcm)
        return self.spoken

    def send(self, message: dict | str) -> None:
        self.channel.send(message if isinstance(message, str) else json.dumps(message))

    async def wait_for(self, kind: str | tuple[str, ...], after: float = 0.0) -> dict:
        """The first event of type `kind` (or one of several) that arrived at or after `after`;
        raises ServerHungUp once the server has ended the call without sending one.

        Waits as long as it takes: callers bound it with `asyncio.timeout`.
        """
        kinds = (kind,) if isinstance(kind, str) else kind

        def found() -> dict | None:
            return next((e for e in self.events if e["type"] in kinds and e["_t"] >= after), None)

        async with self._arrived:
            await self._arrived.wait_for(lambda: found() or self.hung_up.is_set())
        event = found()
        if event is None:
            raise ServerHungUp(self.hangup_reason)
        return event

    def of_type(self, kind: str) -> list[dict]:
        return [e for e in self.events if e["type"] == kind]

    async def close(self) -> None:
        self._closing = True
        for task in self._tasks:
            task.cancel()
        await self.pc.close()

    def _on_message(self, raw: str | bytes) -> None:
        event = json.loads(raw)
        event["_t"] = time.monotonic()
        self.events.append(event)
        if event.get("type") == "session.closing":
            reason, message = event.get("reason", "?"), event.get("message", "")
            self._hang_up(f"the server closed the call ({reason}): {message}")
        self._spawn(self._notify())

    def _on_connection_state(self) -> None:
        if self.pc.connectionState in ("failed", "closed"):
            self._hang_up(f"the connection to the server {self.pc.connectionState}")

    def _hang_up(self, reason: str) -> None:
        """The server has ended the call: the first reason stands; waiters wake up."""
        if self._closing or self.hung_up.is_set():
            return
        self.hangup_reason = reason
        self.hung_up.set()
        self._spawn(self._notify())

    async def _notify(self) -> None:
        async with self._arrived:
            self._arrived.notify_all()

    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind == "audio":
            self._spawn(self._record(track))

    async def _record(self, track: MediaStreamTrack) -> None:
        rate = tokens.OUTPUT_SAMPLE_RATE_HZ
        resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
        timeout: float | None = None  # until the first frame: connecting has its own bound
        try:
            while True:
                # aiortc types recv() as Frame | Packet: an audio track's are AudioFrames
                frame = cast(av.AudioFrame, await asyncio.wait_for(track.recv(), timeout))
                t, timeout = time.monotonic(), SERVER_SILENCE_S
                for out in resampler.resample(frame):
                    self.recording.chunks.append((t, out.to_ndarray().reshape(-1).copy()))
        except TimeoutError:
            self._hang_up(f"no audio from the server for {SERVER_SILENCE_S:.0f} s: it is gone")
        except MediaStreamError:
            self._hang_up("the server's audio ended")

    def _spawn(self, coro) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


async def post_offer(url: str, sdp: str, token: str | None = None) -> dict:
    """POST /offer; the server's answer, or SignalingError with its error code."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession() as http:
        body = {"type": "offer", "sdp": sdp}
        async with http.post(f"{url}/offer", json=body, headers=headers) as response:
            try:
                reply = await response.json(content_type=None)
            except ValueError:  # another kind of server, or a proxy's error page
                message = f"{url} answered {response.reason}, not JSON: is it `realtime serve`?"
                raise SignalingError(response.status, "not_json", message) from None
    if response.status != 200:
        err = reply.get("error", {}) if isinstance(reply, dict) else {}
        raise SignalingError(response.status, err.get("code", "?"), err.get("message", ""))
    return reply


async def call(
    url: str,
    speech: np.ndarray,
    token: str | None = None,
    settings: dict | None = None,
    client: LoopbackClient | None = None,
) -> tuple[LoopbackClient, float]:
    """Connect, speak `speech`, and wait until the reply has played (or was cut short), and
    the caller's words have come where the server sends them.

    Returns the (closed) client, with its events and recording, and when our speech ended.
    Raises ServerHungUp if the server ends the call or vanishes first. Bound it with
    `asyncio.timeout`; pass a `client` (for `url`) to keep what it got then.
    """
    client = client or LoopbackClient(url, token)
    try:
        await client.connect()
        if settings:
            client.send({"type": "settings", **settings})
            await client.wait_for("settings.updated")
        spoken = await client.say(speech)
        await client.wait_for(ENDINGS, after=spoken)
        if client.of_type("session.ready")[0].get("transcripts"):
            await client.wait_for(TRANSCRIPT_ENDINGS, after=spoken)
    finally:
        await client.close()
    return client, spoken


ENDINGS = ("response.done", "response.interrupted", "error")
TRANSCRIPT_ENDINGS = ("speech.transcript.done", "speech.transcript.failed")

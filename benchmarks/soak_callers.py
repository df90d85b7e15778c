"""The soak benchmark's callers: one over WebRTC, one over the OpenAI Realtime WebSocket, each
asking, listening, sometimes barging in, in a loop until the soak's deadline.

A caller counts what it hears into its door's `Tally`: answers that played to their end, answers
it cut short, turns that failed (no answer in time, an `error` or `session.closing` event, the
connection closing), the first-audio latency, and underruns as `Playout` defines them. A caller
that fails closes its connection and calls again; each failure is counted by kind in `Errors`.
"""

import asyncio
import base64
import json
import random
import time
from collections import Counter
from dataclasses import dataclass, field

import aiohttp
import numpy as np

from realtime.audio.io import load_audio
from realtime.model import tokens
from realtime.transports.webrtc.caller import LoopbackClient, SignalingError
from realtime.turns.detector import VAD_FRAME_MS
from tests.serving import DATA, speech

QUESTIONS = ("q_capital.wav", "q_weather.wav", "q_story.wav")
BARGE_IN = "bargein_stop.wav"
BARGE_IN_SHARE = 0.5  # of questions talked over
BARGE_IN_AFTER_S = 1.0  # of the answer heard
PAUSE_S = (0.3, 1.5)  # between an answer's end and the next question
MAX_ANSWER_MS = 3000  # asked for by WebRTC callers (and of a spawned server): turns cycle
JITTER_MS = 100  # what a caller's playout holds before it starts playing
TURN_TIMEOUT_S = 45.0  # for the answer to start, and again for it to end, on a loaded machine
BUSY_RETRY_S, BUSY_RETRIES = 1.0, 15  # a freed slot may take the server a few seconds
MESSAGES_PER_KIND = 5
WS_FRAME_BYTES = tokens.OUTPUT_SAMPLE_RATE_HZ * VAD_FRAME_MS // 1000 * 2  # pcm16, 20 ms
WEBRTC_ENDS = ("response.done", "response.interrupted")
FAILURES = ("error", "session.closing")


class CallerFailure(Exception):
    """A turn or a call went wrong; `kind` groups it in the report, the message says how."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass
class Playout:
    """A caller's playback of one answer: it starts JITTER_MS after the answer's first audio
    arrives and then plays in real time. Audio that arrives after everything before it has
    played is an underrun (the listener hears a dropout), as long as that wait."""

    first: float | None = None  # when its first audio arrived (monotonic)
    start: float | None = None
    end: float = 0.0  # when what has arrived so far has played
    received_s: float = 0.0
    gaps: list[tuple[float, float]] = field(default_factory=list)  # (arrival, seconds dry)

    def push(self, t: float, seconds: float) -> None:
        if self.start is None:
            self.first, self.start = t, t + JITTER_MS / 1000
            self.end = self.start
        elif t > self.end:
            self.gaps.append((t, t - self.end))
        self.end = max(self.end, t) + seconds
        self.received_s += seconds

    def gaps_ms(self, until: float = float("inf")) -> list[float]:
        """The dropouts heard by a listener who stopped at `until` (a barge-in)."""
        return [dry * 1000 for t, dry in self.gaps if t <= until]

    def played_ms(self, at: float) -> int:
        """How much of it has played by `at` (a truncate's audio_end_ms)."""
        if self.start is None:
            return 0
        return int(min(max(0.0, at - self.start), self.received_s) * 1000)


@dataclass
class Tally:
    """What the callers of one door heard."""

    answered: int = 0  # played to the end (or the server's length limit)
    interrupted: int = 0  # cut short by the caller's barge-in
    failed: int = 0
    silent: int = 0  # answered, but without any audio
    unfinished: int = 0  # still under way when the soak ended
    underruns: int = 0
    worst_gap_ms: float = 0.0
    underrun_log: list[tuple[float, float]] = field(default_factory=list)  # (monotonic s, ms)
    first_audio_ms: list[float] = field(default_factory=list)
    server_first_audio_ms: list[float] = field(default_factory=list)  # WebRTC's turn.latency

    def heard(self, gaps: list[float]) -> None:
        """Count an answer's dropouts (ms), noting when they were heard (to set them beside
        whatever else the machine was doing then)."""
        self.underruns += len(gaps)
        self.worst_gap_ms = max([self.worst_gap_ms, *gaps])
        self.underrun_log += [(time.monotonic(), ms) for ms in gaps]


@dataclass
class Errors:
    """Every failure by kind, with the first few distinct messages of each."""

    counts: Counter = field(default_factory=Counter)
    messages: dict[str, list[str]] = field(default_factory=dict)

    def add(self, door: str, failure: Exception) -> None:
        kind = f"{door}: {getattr(failure, 'kind', type(failure).__name__)}"
        self.counts[kind] += 1
        seen = self.messages.setdefault(kind, [])
        if str(failure) not in seen and len(seen) < MESSAGES_PER_KIND:
            seen.append(str(failure))


@dataclass
class Soak:
    """What every caller shares: the server, the deadline, and the counts."""

    url: str
    token: str | None
    deadline: float  # monotonic: no question is asked after it
    tallies: dict[str, Tally] = field(
        default_factory=lambda: {"webrtc": Tally(), "openai": Tally()}
    )
    errors: Errors = field(default_factory=Errors)
    began: float = field(default_factory=time.monotonic)

    def running(self) -> bool:
        return time.monotonic() < self.deadline


async def caller(soak: Soak, door: str, rng: random.Random) -> None:
    """Call over `door` and talk until the deadline, calling again after each failure."""
    call: type[WebRtcCall] | type[OpenAiCall] = WebRtcCall if door == "webrtc" else OpenAiCall
    while soak.running():
        in_turn = False
        try:
            async with call(soak) as line:
                while soak.running():
                    in_turn = True
                    await line.turn(soak.tallies[door], rng)
                    in_turn = False
                    await asyncio.sleep(rng.uniform(*PAUSE_S))
        except Exception as failure:  # counted, and the caller calls again: the soak goes on
            soak.errors.add(door, failure)
            soak.tallies[door].failed += in_turn
            await asyncio.sleep(BUSY_RETRY_S)
        except asyncio.CancelledError:  # the soak is over
            soak.tallies[door].unfinished += in_turn
            raise


async def _within(seconds: float, awaitable, what: str, lost: asyncio.Future | None = None):
    """`awaitable`'s result, unless the call is `lost` first (its result says how) or
    `seconds` pass."""
    task = asyncio.ensure_future(awaitable)
    watched = [task] if lost is None else [task, lost]
    try:
        await asyncio.wait(watched, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not task.done():
            task.cancel()
    if task.done() and not task.cancelled():
        return task.result()
    if lost is not None and lost.done():
        raise CallerFailure("call lost", lost.result())
    raise CallerFailure("timeout", f"no {what} within {seconds:.0f} s")


def _lose(lost: asyncio.Future, why: str) -> None:
    if not lost.done():
        lost.set_result(why)


class WebRtcCall:
    """A LoopbackClient call; underruns from its received frames' arrival times, and from
    silence the server filled in because its answer buffer ran dry (the answer took longer to
    play than the audio it played)."""

    QUESTIONS = [load_audio(DATA / clip) for clip in QUESTIONS]
    BARGE_IN = load_audio(DATA / BARGE_IN)

    def __init__(self, soak: Soak) -> None:
        self.soak = soak
        self.client: LoopbackClient
        self.lost = asyncio.get_running_loop().create_future()

    async def __aenter__(self) -> "WebRtcCall":
        try:
            return await self._open()
        except BaseException:
            await self.__aexit__()
            raise

    async def _open(self) -> "WebRtcCall":
        for attempt in range(BUSY_RETRIES):
            self.client = LoopbackClient(self.soak.url, self.soak.token)
            try:
                await _within(TURN_TIMEOUT_S, self.client.connect(), "session.ready")
                break
            except SignalingError as refused:
                await self.client.close()
                if refused.code != "busy" or attempt == BUSY_RETRIES - 1:
                    raise CallerFailure(f"refused {refused.code}", str(refused)) from None
                await asyncio.sleep(BUSY_RETRY_S)
        self.client.channel.on("close", lambda: _lose(self.lost, "the data channel closed"))
        self.client.pc.on("connectionstatechange", self._on_state)
        self.client.send({"type": "settings", "max_answer_ms": MAX_ANSWER_MS})
        await self._expect("settings.updated", 0.0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.client.close()

    async def turn(self, tally: Tally, rng: random.Random) -> None:
        asked = time.monotonic()
        spoken = await self._say(rng.choice(self.QUESTIONS))
        start = await self._expect(("response.started", "response.done"), asked)
        if start["type"] == "response.started" and rng.random() < BARGE_IN_SHARE:
            await asyncio.sleep(BARGE_IN_AFTER_S)
            asked = time.monotonic()
            spoken_again = await self._say(self.BARGE_IN)
            end = await self._answer(tally, start, spoken)
            start = await self._expect(("response.started", "response.done"), end["_t"])
            spoken = spoken_again
        await self._answer(tally, start, spoken)

    def _on_state(self) -> None:
        if self.client.pc.connectionState in ("failed", "closed"):
            _lose(self.lost, f"the peer connection {self.client.pc.connectionState}")

    async def _say(self, pcm: np.ndarray) -> float:
        seconds = pcm.size / tokens.INPUT_SAMPLE_RATE_HZ + TURN_TIMEOUT_S
        return await _within(seconds, self.client.say(pcm), "end of the speech sent", self.lost)

    async def _answer(self, tally: Tally, start: dict, spoken: float) -> dict:
        """Wait for the answer that `start` opened to end; count it and what was heard."""
        if start["type"] == "response.done":  # no audio: it never started
            tally.answered += 1
            tally.silent += 1
            return start
        end = await self._expect(WEBRTC_ENDS, start["_t"])
        tally.first_audio_ms.append((start["_t"] - spoken) * 1000)
        answer = start["response"]
        latency = [e for e in self.client.of_type("turn.latency") if e["response"] == answer]
        if latency:  # the server's own count, from the caller's last voiced frame it decoded
            tally.server_first_audio_ms.append(latency[0]["first_audio_ms"])
        if end["type"] == "response.interrupted":
            tally.interrupted += 1
        else:
            tally.answered += 1
        playout = Playout()
        for t, pcm in self.client.recording.chunks:
            if start["_t"] <= t <= end["_t"]:
                playout.push(t, pcm.size / tokens.OUTPUT_SAMPLE_RATE_HZ)
        starved_ms = (end["_t"] - start["_t"]) * 1000 - end["played_ms"]
        tally.heard(playout.gaps_ms() + ([starved_ms] if starved_ms > JITTER_MS else []))
        self._forget(end["_t"])
        return end

    def _forget(self, before: float) -> None:
        """Drop what was received before `before`: a soak's call lasts long."""
        client = self.client
        client.recording.chunks[:] = [c for c in client.recording.chunks if c[0] >= before]
        client.events[:] = [e for e in client.events if e["_t"] >= before]

    async def _expect(self, kinds: str | tuple[str, ...], after: float) -> dict:
        kinds = (kinds,) if isinstance(kinds, str) else kinds
        waiting = self.client.wait_for(kinds + FAILURES, after)
        event = await _within(TURN_TIMEOUT_S, waiting, " or ".join(kinds), self.lost)
        if event["type"] in FAILURES:
            error = event.get("error") or {}
            message = error.get("message") or json.dumps(event)
            raise CallerFailure(f"{event['type']} {error.get('code', '')}".strip(), message)
        return event


class OpenAiCall:
    """A /v1/realtime WebSocket (GA events, server VAD) with a microphone that appends pcm16 in
    real time, 20 ms at a time (silence between clips). Underruns: `Playout` of the audio deltas
    of an answer from its first to its response.done (or the caller's barge-in)."""

    QUESTIONS = [speech("pcm16", clip, silence_ms=0) for clip in QUESTIONS]
    BARGE_IN = speech("pcm16", BARGE_IN, silence_ms=0)
    AUDIO_DELTA = "response.output_audio.delta"

    def __init__(self, soak: Soak) -> None:
        self.soak = soak
        self.http = aiohttp.ClientSession()
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.events: list[dict] = []
        self.playouts: dict[str, Playout] = {}
        self.lost = asyncio.get_running_loop().create_future()
        self._arrived = asyncio.Event()
        self._clips: list[tuple[bytes, asyncio.Future]] = []
        self._tasks: list[asyncio.Task] = []

    async def __aenter__(self) -> "OpenAiCall":
        try:
            return await self._open()
        except BaseException:
            await self.__aexit__()
            raise

    async def _open(self) -> "OpenAiCall":
        url = self.soak.url.replace("http", "ws", 1) + "/v1/realtime"
        token = self.soak.token
        for attempt in range(BUSY_RETRIES):
            try:
                headers = {"Authorization": f"Bearer {token}"} if token else {}
                connecting = self.http.ws_connect(url, headers=headers)
                self.ws = await _within(TURN_TIMEOUT_S, connecting, "WebSocket handshake")
                break
            except aiohttp.WSServerHandshakeError as refused:
                if refused.status != 503 or attempt == BUSY_RETRIES - 1:
                    raise CallerFailure(f"refused {refused.status}", str(refused)) from None
                await asyncio.sleep(BUSY_RETRY_S)
        self._tasks = [asyncio.ensure_future(self._read()), asyncio.ensure_future(self._mic())]
        await self._expect("session.created", 0.0)
        vad = {"type": "server_vad"}
        audio = {"input": {"format": {"type": "audio/pcm", "rate": 24000}, "turn_detection": vad}}
        await self._send(
            {"type": "session.update", "session": {"type": "realtime", "audio": audio}}
        )
        await self._expect("session.updated", 0.0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        for task in self._tasks:
            task.cancel()
        if self.ws is not None:
            await self.ws.close()
        await self.http.close()

    async def turn(self, tally: Tally, rng: random.Random) -> None:
        asked = time.monotonic()
        spoken = await self.say(rng.choice(self.QUESTIONS))
        created = await self._expect("response.created", asked)
        if rng.random() < BARGE_IN_SHARE:
            first = await self._expect((self.AUDIO_DELTA, "response.done"), created["_t"])
            playout = self.playouts.get(created["response"]["id"])
            if first["type"] == self.AUDIO_DELTA and playout is not None and playout.start:
                await asyncio.sleep(max(0.0, playout.start + BARGE_IN_AFTER_S - time.monotonic()))
                barged = time.monotonic()
                spoken_again = await self.say(self.BARGE_IN)
                await self._answer(tally, created, spoken, barged)
                created = await self._expect("response.created", barged)
                spoken = spoken_again
        await self._answer(tally, created, spoken)

    async def _answer(self, tally: Tally, created: dict, spoken: float, cut: float = 0.0) -> None:
        """Wait for the response `created` opened to be done; count it and what was heard up to
        the caller's barge-in at `cut` (0: none, it listens to the end)."""
        rid = created["response"]["id"]
        done = await self._expect("response.done", created["_t"])
        response = done["response"]
        if response["id"] != rid or response["status"] == "failed":
            raise CallerFailure("response failed", json.dumps(response)[:300])
        playout = self.playouts.pop(rid, Playout())
        if playout.first is None:
            tally.answered += 1
            tally.silent += 1
            return
        tally.first_audio_ms.append((playout.first - spoken) * 1000)
        if cut and (response["status"] == "cancelled" or playout.end > cut):
            tally.interrupted += 1
            if response["status"] != "cancelled":  # made in full, but not all of it heard
                item = response["output"][0]["id"]
                ms = playout.played_ms(cut)
                truncate = {"item_id": item, "content_index": 0, "audio_end_ms": ms}
                await self._send({"type": "conversation.item.truncate", **truncate})
        else:
            tally.answered += 1
            await asyncio.sleep(max(0.0, playout.end - time.monotonic()))  # listen to it all
        tally.heard(playout.gaps_ms(until=cut or float("inf")))
        self.events[:] = [e for e in self.events if e["_t"] >= done["_t"]]

    async def say(self, pcm16: bytes) -> float:
        """Append `pcm16` (24 kHz) in real time; returns when its last piece was sent."""
        done = asyncio.get_running_loop().create_future()
        self._clips.append((pcm16, done))
        seconds = len(pcm16) / WS_FRAME_BYTES * VAD_FRAME_MS / 1000 + TURN_TIMEOUT_S
        return await _within(seconds, done, "end of the speech sent", self.lost)

    async def _mic(self) -> None:
        """Append 20 ms every 20 ms for the whole call: the clips, and silence between them."""
        silence, start = bytes(WS_FRAME_BYTES), time.monotonic()
        for n in range(1 << 62):
            await asyncio.sleep(max(0.0, start + n * VAD_FRAME_MS / 1000 - time.monotonic()))
            piece = silence
            if self._clips:
                pcm, done = self._clips[0]
                piece = pcm[:WS_FRAME_BYTES]
                if len(pcm) <= WS_FRAME_BYTES:
                    self._clips.pop(0)
                    if not done.done():  # (unless its say() gave up)
                        done.set_result(time.monotonic())
                else:
                    self._clips[0] = (pcm[WS_FRAME_BYTES:], done)
            audio = base64.b64encode(piece).decode()
            try:
                await self._send({"type": "input_audio_buffer.append", "audio": audio})
            except (ConnectionError, aiohttp.ClientError) as lost:
                _lose(self.lost, f"appending audio failed: {lost!r}")
                return

    async def _read(self) -> None:
        assert self.ws is not None, "read before the WebSocket opened"
        try:
            async for message in self.ws:
                if message.type is aiohttp.WSMsgType.TEXT:
                    self._on_event(json.loads(message.data))
        finally:
            _lose(self.lost, f"the WebSocket closed (code {self.ws.close_code})")

    def _on_event(self, event: dict) -> None:
        event["_t"] = t = time.monotonic()
        if event["type"] == self.AUDIO_DELTA:
            samples = len(base64.b64decode(event.pop("delta"))) // 2  # pcm16
            seconds = samples / tokens.OUTPUT_SAMPLE_RATE_HZ
            self.playouts.setdefault(event["response_id"], Playout()).push(t, seconds)
        self.events.append(event)
        self._arrived.set()

    async def _send(self, event: dict) -> None:
        assert self.ws is not None, "sent before the WebSocket opened"
        await self.ws.send_str(json.dumps(event))

    async def _expect(self, kinds: str | tuple[str, ...], after: float) -> dict:
        kinds = (kinds,) if isinstance(kinds, str) else kinds
        return await _within(
            TURN_TIMEOUT_S, self._next(kinds, after), " or ".join(kinds), self.lost
        )

    async def _next(self, kinds: tuple[str, ...], after: float) -> dict:
        while True:
            for event in self.events:
                if event["type"] == "error" and event["_t"] >= after:
                    error = event["error"]
                    raise CallerFailure(f"error {error.get('code')}", error.get("message", ""))
                if event["type"] in kinds and event["_t"] >= after:
                    return event
            self._arrived.clear()
            await self._arrived.wait()

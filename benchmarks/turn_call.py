"""One clip of the turn-taking benchmark over the OpenAI Realtime door: a fresh `/v1/realtime`
session set to one turn detection, the clip appended in real time (20 ms a message), then
silence, and the times on this client's clock at which each piece of audio went out and each
turn and response event came back.

The end of the caller's speech is the moment the piece that holds the clip's last speech
sample (clips.json's last segment end) was appended; the latencies run from it. Each
response is cancelled once its first audio has come: that is all that is measured of it, and a
random model's answer would run on to its length limit.
"""

import asyncio
import base64
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import numpy as np

from realtime.audio.io import load_audio, to_pcm16

CLIPS_DIR = Path(__file__).resolve().parents[1] / "tests" / "data" / "turns"
APPEND_MS = 20  # audio per input_audio_buffer.append, sent in real time
SILENCE_AFTER_MS = 3000  # appended after each clip, so any turn detection can end the turn
PCM16_BYTES = 2
SETTLE_S = 10.0  # after the silence, for every response to end (each is cancelled early)
CONNECT_TRIES = 20  # a slot held by the clip before is freed soon after it hangs up
CONNECT_RETRY_S = 0.5
AUDIO_DELTAS = ("response.output_audio.delta", "response.audio.delta")  # GA, beta


@dataclass(frozen=True)
class Clip:
    """A clips.json entry: its speech segments in ms from the clip's start."""

    name: str
    kind: str  # complete | paused
    text: str
    pause_ms: int | None
    speech_ms: tuple[tuple[int, int], ...]

    @property
    def speech_end_ms(self) -> int:
        return self.speech_ms[-1][1]

    @property
    def last_speech_start_ms(self) -> int:
        return self.speech_ms[-1][0]


def load_clips(names: list[str] | None = None) -> list[Clip]:
    """The manifest's clips (those named, if `names`), in its order."""
    manifest = json.loads((CLIPS_DIR / "clips.json").read_text())
    clips = [
        Clip(
            name=entry["file"].removesuffix(".wav"),
            kind=entry["kind"],
            text=entry["text"],
            pause_ms=entry["pause_ms"],
            speech_ms=tuple((start, end) for start, end in entry["speech_ms"]),
        )
        for entry in manifest["clips"]
    ]
    if names is None:
        return clips
    unknown = set(names) - {clip.name for clip in clips}
    if unknown:
        raise ValueError(f"no such clips: {', '.join(sorted(unknown))}")
    return [clip for clip in clips if clip.name in names]


def pcm16(clip: Clip, rate_hz: int) -> bytes:
    """The clip, then SILENCE_AFTER_MS, as the door's pcm16 at `rate_hz` (resampled by
    libswresample, through PyAV)."""
    audio = load_audio(CLIPS_DIR / f"{clip.name}.wav", rate_hz=rate_hz)  # (samples,) float32
    audio = np.concatenate([audio, np.zeros(rate_hz * SILENCE_AFTER_MS // 1000, np.float32)])
    return to_pcm16(audio).astype("<i2").tobytes()


@dataclass
class Session:
    """One `/v1/realtime` connection: the events that came, each with the time it arrived."""

    ws: aiohttp.ClientWebSocketResponse
    events: list[tuple[float, dict]] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def read(self) -> None:
        """Keep every event; cancel each response at its first audio (measured enough)."""
        heard: set[str] = set()  # the responses whose audio has begun
        async for message in self.ws:
            if message.type is not aiohttp.WSMsgType.TEXT:
                break
            event = json.loads(message.data)
            self.events.append((time.monotonic(), event))
            self.arrived.set()
            if event["type"] in AUDIO_DELTAS and event["response_id"] not in heard:
                heard.add(event["response_id"])
                await self.send({"type": "response.cancel", "response_id": event["response_id"]})

    async def send(self, event: dict) -> None:
        await self.ws.send_str(json.dumps(event))

    async def wait_for(self, kinds: tuple[str, ...], timeout_s: float) -> dict:
        """The first event of `kinds` since the connection opened."""
        async with asyncio.timeout(timeout_s):
            while True:
                found = next((e for _, e in self.events if e["type"] in kinds), None)
                if found is not None:
                    return found
                self.arrived.clear()
                await self.arrived.wait()

    async def settle(self, timeout_s: float) -> bool:
        """Wait until every response created has ended (response.done); False if one has not
        within `timeout_s`."""
        try:
            async with asyncio.timeout(timeout_s):
                while self.count("response.created") > self.count("response.done"):
                    self.arrived.clear()
                    await self.arrived.wait()
        except TimeoutError:
            return False
        return True

    def count(self, kind: str) -> int:
        return sum(e["type"] == kind for _, e in self.events)

    async def stream(self, audio: bytes, rate_hz: int) -> list[float]:
        """Append `audio` in real time, APPEND_MS a message; when each message went out."""
        step = rate_hz * APPEND_MS // 1000 * PCM16_BYTES
        sent: list[float] = []
        start = time.monotonic()
        for n, i in enumerate(range(0, len(audio), step)):
            await asyncio.sleep(max(0.0, start + n * APPEND_MS / 1000 - time.monotonic()))
            piece = base64.b64encode(audio[i : i + step]).decode()
            await self.send({"type": "input_audio_buffer.append", "audio": piece})
            sent.append(time.monotonic())
        return sent


async def connect(http: aiohttp.ClientSession, url: str, token: str | None):
    """A `/v1/realtime` WebSocket (GA events), retried while the server is busy (503)."""
    ws_url = url.replace("http", "ws", 1).rstrip("/") + "/v1/realtime"
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    for _ in range(CONNECT_TRIES - 1):
        try:
            return await http.ws_connect(ws_url, headers=headers)
        except aiohttp.WSServerHandshakeError as refused:
            if refused.status != 503:
                raise
            await asyncio.sleep(CONNECT_RETRY_S)
    return await http.ws_connect(ws_url, headers=headers)


async def run_clip(
    http: aiohttp.ClientSession, url: str, token: str | None, detection: dict, clip: Clip
) -> dict:
    """`clip` over a fresh session set to `detection`: the session it echoed and the clip's
    record (see clip_record); or the error that refused the update."""
    ws = await connect(http, url, token)
    session = Session(ws)
    reader = asyncio.ensure_future(session.read())
    try:
        created = await session.wait_for(("session.created",), SETTLE_S)
        audio_in = created["session"]["audio"]["input"]
        if audio_in["format"]["type"] != "audio/pcm":
            raise RuntimeError(f"the session's input is {audio_in['format']}, not pcm16")
        rate_hz = int(audio_in["format"]["rate"])
        update = {"type": "realtime", "audio": {"input": {"turn_detection": detection}}}
        await session.send({"type": "session.update", "session": update})
        answer = await session.wait_for(("session.updated", "error"), SETTLE_S)
        if answer["type"] == "error":
            return {"refused": answer["error"]}
        echoed = answer["session"]["audio"]["input"]["turn_detection"]
        sent = await session.stream(pcm16(clip, rate_hz), rate_hz)
        settled = await session.settle(SETTLE_S)
    finally:
        await ws.close()
        reader.cancel()
    record = clip_record(clip, sent, session.events)
    return {"echoed": echoed, "record": record | {"settled": settled}}


Events = list[tuple[float, dict]]  # (time.monotonic() it arrived, event)


def clip_record(clip: Clip, sent: list[float], events: Events) -> dict:
    """A clip's figures in ms. Latencies run from the end of its speech: the append that held
    its last speech sample. A false end is a commit or a response created before that append:
    the server ended the turn inside the caller's speech (on a paused clip, in its pause)."""
    end_t = sent[(clip.speech_end_ms - 1) // APPEND_MS]
    early = [t for t, e in events if e["type"] in TURN_ENDS and t < end_t]
    stopped = first(events, ("input_audio_buffer.speech_stopped",), end_t)
    commit = first(events, ("input_audio_buffer.committed",), end_t)
    created = commit and first(events, ("response.created",), commit[0])
    audio = created and first(events, AUDIO_DELTAS, created[0], created[1]["response"]["id"])
    record = {
        "clip": clip.name,
        "kind": clip.kind,
        "pause_ms": clip.pause_ms,
        "speech_end_ms": clip.speech_end_ms,
        "vad_end_ms": stopped[1]["audio_end_ms"] if stopped else None,  # the server's clock
        "confirm_ms": _since(commit, end_t),
        "response_created_ms": _since(created, end_t),
        "first_audio_ms": _since(audio, end_t),
        "false_end": bool(early),
        "false_end_into_pause_ms": None,
        "responses": sum(e["type"] == "response.created" for _, e in events),
        "append_late_max_ms": round(lateness_s(sent) * 1000, 1),
        "timeline": timeline(events, sent[0]),
    }
    if early and clip.pause_ms:
        pause_t = sent[(clip.speech_ms[0][1] - 1) // APPEND_MS]  # the first segment's end
        record["false_end_into_pause_ms"] = round((early[0] - pause_t) * 1000, 1)
    return record


TURN_ENDS = ("input_audio_buffer.committed", "response.created")
TIMELINE = (  # the events a clip's timeline lists
    "input_audio_buffer.speech_started",
    "input_audio_buffer.speech_stopped",
    "input_audio_buffer.committed",
    "response.created",
    "response.done",
    "error",
)


def first(
    events: Events, kinds: tuple[str, ...], after: float, response_id: str | None = None
) -> tuple[float, dict] | None:
    """The first event of `kinds` that came at or after `after` (of that response)."""
    return next(
        (
            (t, e)
            for t, e in events
            if e["type"] in kinds and t >= after and response_id in (None, e.get("response_id"))
        ),
        None,
    )


def _since(found: tuple[float, dict] | None, t: float) -> float | None:
    return None if not found else round((found[0] - t) * 1000, 1)


def lateness_s(sent: list[float]) -> float:
    """How far behind real time the appends fell, at worst."""
    return max(at - (sent[0] + n * APPEND_MS / 1000) for n, at in enumerate(sent))


def timeline(events: Events, t0: float) -> list[dict]:
    """The turn and response events, at ms since the clip's first append (with the first
    audio delta of each response), and what each says of the audio clock or the response."""
    listed, answered = [], set()
    for t, e in events:
        kind = e["type"]
        if kind in AUDIO_DELTAS and e["response_id"] not in answered:
            answered.add(e["response_id"])
            kind = "first_audio"
        elif kind not in TIMELINE:
            continue
        entry = {"at_ms": round((t - t0) * 1000, 1), "type": kind.split(".")[-1]}
        for name in ("audio_start_ms", "audio_end_ms"):
            if name in e:
                entry[name] = e[name]
        if "response" in e:
            entry["status"] = e["response"].get("status")
        if kind == "error":
            entry["code"] = e["error"].get("code")
        listed.append(entry)
    return listed

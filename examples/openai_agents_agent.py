"""A voice agent written with OpenAI's Agents SDK (`openai-agents`, module `agents.realtime`),
talking to `realtime serve` instead of OpenAI.

The SDK's realtime layer speaks OpenAI's Realtime protocol (its GA shape) over a WebSocket. Its
model config takes the URL to open, as is, and an API key (sent as `Authorization: Bearer`):
given `ws://HOST:PORT/v1/realtime` and our `--token`, the SDK quickstart's agent talks to us
with nothing else changed. It keeps the SDK's default session settings (semantic_vad turn
detection, pcm16 at 24 kHz, input transcription); the server runs its server_vad for
semantic_vad and answers in Mini-Omni's one voice.

The SDK has no audio devices of its own, so this script is its own caller: `--say a.wav b.wav`
plays the clips as the caller's turns, paced in real time like a microphone, with silence in
between so the server's VAD ends each turn. With `--barge-in` the caller is impatient: each
question after the first starts while the agent is still answering the one before, so the
server's VAD cuts that answer (only the last answer plays in full). One line is printed per
event worth seeing; the exit status is 0 when every turn was answered (with `--barge-in`, every
answer but the last cut) and no `error` event came.

For a live microphone, the SDK repository's examples/realtime/cli/demo.py (sounddevice in and
out) works the same way: give its `runner.run()` the `model_config` url and api_key used here.
No audio device is needed below: `Caller` stands in for the microphone.

    realtime serve --model /tmp/tiny --offline --token secret --port 8080
    python examples/openai_agents_agent.py --api-key secret --barge-in \\
        --say tests/data/q_capital.wav tests/data/q_weather.wav tests/data/q_story.wav
"""

import argparse
import asyncio
import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import numpy as np
import soundfile as sf
import soxr
from agents.realtime import RealtimeAgent, RealtimeRunner, RealtimeSession, RealtimeSessionEvent

SAMPLE_RATE_HZ = 24_000  # the protocol's pcm16: 16-bit mono at 24 kHz
FRAME_MS = 20  # one microphone buffer
FRAME_SAMPLES = SAMPLE_RATE_HZ * FRAME_MS // 1000
PAUSE_MS = 1_200  # the caller's silence after a question: the server's VAD ends the turn on it
BARGE_IN_AFTER_MS = 600  # how long into an answer's audio the barging question starts
TURN_TIMEOUT_S = 120.0  # a turn not answered by then fails the run (a busy CPU is slow)
STARTED_S = time.monotonic()

agent = RealtimeAgent(
    name="Assistant",
    instructions="You are a helpful voice assistant. Keep your answers short and friendly.",
)


def show(line: str) -> None:
    """One line of the conversation, stamped with the seconds since the script started."""
    print(f"{time.monotonic() - STARTED_S:6.1f}s  {line}", flush=True)


def load_clip(path: str) -> bytes:
    """A WAV file as the protocol's pcm16: mono, 24 kHz, 16-bit little-endian."""
    audio, rate_hz = sf.read(path, dtype="float32", always_2d=True)
    mono = audio.mean(axis=1)  # (T,)
    mono = soxr.resample(mono, rate_hz, SAMPLE_RATE_HZ)
    return (np.clip(mono, -1.0, 1.0) * 32767).astype("<i2").tobytes()


def realtime_url(base_url: str) -> str:
    """http(s)://host:port (a base URL) -> the ws(s)://host:port/v1/realtime the SDK opens."""
    parts = urlsplit(base_url)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    path = parts.path.rstrip("/")
    path = path if path.endswith("/v1/realtime") else f"{path}/v1/realtime"
    return f"{scheme}://{parts.netloc}{path}"


class Caller:
    """Stands in for a microphone: a steady stream of 20 ms buffers, silence unless a clip
    is queued, sent to the session in real time."""

    def __init__(self, session: RealtimeSession) -> None:
        self.session = session
        self.clips: asyncio.Queue[bytes] = asyncio.Queue()
        self.clip_sent = asyncio.Event()

    async def say(self, pcm: bytes) -> None:
        """Speak one clip, then PAUSE_MS of silence; returns once both are sent."""
        self.clip_sent.clear()
        await self.clips.put(pcm + bytes(2 * SAMPLE_RATE_HZ * PAUSE_MS // 1000))
        await self.clip_sent.wait()

    async def stream(self) -> None:
        """Send a buffer every FRAME_MS, on a clock that does not drift, until cancelled."""
        loop = asyncio.get_running_loop()
        frame_bytes, speech, next_frame_s = 2 * FRAME_SAMPLES, b"", loop.time()
        while True:
            if not speech and not self.clips.empty():
                speech = self.clips.get_nowait()
            frame, speech = speech[:frame_bytes], speech[frame_bytes:]
            await self.session.send_audio(frame.ljust(frame_bytes, b"\0"))
            if frame and not speech:
                self.clip_sent.set()
            next_frame_s += FRAME_MS / 1000
            await asyncio.sleep(max(0.0, next_frame_s - loop.time()))


@dataclass
class Conversation:
    """What the session's events said so far; the script waits on `progress` for them."""

    answers: list[str] = field(default_factory=list)  # each finished answer's status
    voiced: int = 0  # answers whose audio has begun
    cut: set[str] = field(default_factory=set)  # answers (item ids) cancelled or truncated
    errors: list[str] = field(default_factory=list)
    responding: bool = False  # an answer is in progress
    speech_ms: float = 0.0  # of the answer in progress
    progress: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def on_event(self, event: RealtimeSessionEvent) -> None:
        """One session event: printed if worth seeing, counted, waiters woken."""
        if event.type == "audio":
            self.voiced += self.speech_ms == 0
            self.speech_ms += 1000 * len(event.audio.data) / (2 * SAMPLE_RATE_HZ)
        elif event.type == "error":
            self.errors.append(str(event.error))
            show(f"error: {event.error}")
        elif event.type == "raw_model_event" and event.data.type == "raw_server_event":
            self._on_server_event(event.data.data)
        async with self.progress:
            self.progress.notify_all()

    def _on_server_event(self, data: dict) -> None:
        """The server's own events that the SDK folds away: how each answer ended, the
        transcripts, a barge-in."""
        kind = data.get("type")
        if kind == "response.created":
            self.responding = True
        elif kind == "response.done":
            response = data["response"]
            self.answers.append(response["status"])
            if response["status"] == "cancelled":
                self.cut.update(item["id"] for item in response.get("output", []))
            speech_s = self.speech_ms / 1000
            show(f"answered: turn {len(self.answers)}, {response['status']}, {speech_s:.1f} s")
            self.responding, self.speech_ms = False, 0.0
        elif kind == "input_audio_buffer.speech_started" and self.responding:
            show(f"barge-in: the caller spoke {self.speech_ms / 1000:.1f} s into the answer")
        elif kind == "conversation.item.truncated":
            self.cut.add(data["item_id"])
            show(f"truncated: the answer is kept up to {data['audio_end_ms']} ms, as played")
        elif kind == "response.output_audio_transcript.done":
            show(f"agent said: {data.get('transcript', '')!r}")
        elif kind == "conversation.item.input_audio_transcription.completed":
            show(f"caller said: {data.get('transcript', '')!r}")

    async def wait(self, done: Callable[[], bool]) -> None:
        """Until the events make `done()` true; TimeoutError after TURN_TIMEOUT_S."""
        async with asyncio.timeout(TURN_TIMEOUT_S), self.progress:
            await self.progress.wait_for(done)


async def converse(session: RealtimeSession, clips: list[str], barge_in: bool) -> Conversation:
    """Say each clip and wait for its answer; with barge_in, each clip but the last is
    followed by the next one while its answer is still playing."""
    conversation, caller = Conversation(), Caller(session)

    async def read_events() -> None:
        async for event in session:
            await conversation.on_event(event)

    async with asyncio.TaskGroup() as tasks:
        reader, microphone = tasks.create_task(read_events()), tasks.create_task(caller.stream())
        for turn, path in enumerate(clips, start=1):
            show(f"caller: {os.path.basename(path)} (turn {turn})")
            await caller.say(load_clip(path))
            if barge_in and turn < len(clips):
                await conversation.wait(lambda turn=turn: conversation.voiced >= turn)
                await asyncio.sleep(BARGE_IN_AFTER_MS / 1000)  # the answer is playing
            else:
                await conversation.wait(lambda turn=turn: len(conversation.answers) >= turn)
        microphone.cancel()
        await session.close()
        await reader
    return conversation


async def main(args: argparse.Namespace) -> int:
    runner = RealtimeRunner(agent)
    session = await runner.run(
        model_config={"url": realtime_url(args.url), "api_key": args.api_key}
    )
    async with session:
        show(f"connected: {realtime_url(args.url)}")
        try:
            conversation = await converse(session, args.say, args.barge_in)
        except* TimeoutError:
            conversation = None
    if conversation is None:
        show(f"failed: a turn was not answered within {TURN_TIMEOUT_S:.0f} s")
        return 1
    answers, cut, errors = len(conversation.answers), len(conversation.cut), conversation.errors
    show(f"done: {answers} answers, {cut} cut, {len(errors)} errors")
    answered = answers == len(args.say)
    barged = cut == len(args.say) - 1 if args.barge_in else cut == 0
    return 0 if answered and barged and not errors else 1


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8080", help="realtime serve's URL")
    parser.add_argument(
        "--api-key",
        default=os.environ.get("REALTIME_TOKEN", "none"),  # the SDK will not connect without
        help="realtime serve's --token (default: $REALTIME_TOKEN; any, for a server without one)",
    )
    parser.add_argument("--say", nargs="+", required=True, metavar="WAV", help="caller's turns")
    parser.add_argument(
        "--barge-in", action="store_true", help="start each turn but the first mid-answer"
    )
    return parser.parse_args()


if __name__ == "__main__":
    # the SDK logs to "openai.agents": its warnings and errors go to stderr, as lines to find
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    sys.exit(asyncio.run(main(parse_args())))

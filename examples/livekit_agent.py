"""A LiveKit Agents voice agent whose realtime model is `realtime serve` (Mini-Omni), not OpenAI.

LiveKit's OpenAI plugin speaks OpenAI's Realtime protocol to whatever base URL it is given, so
the agent is written as LiveKit's docs write one (an `Agent` with instructions, an
`AgentSession` on `openai.realtime.RealtimeModel` with the plugin's default settings); only
`base_url` and `api_key` point it at our server. No LiveKit server or room is needed: the
session's audio input and output are set directly.

Without a microphone (what CI runs), `--say` plays WAV files as the caller's turns, paced in
real time with silence between them (so the server's VAD ends each turn), and a virtual
speaker plays the answers out in real time. `--barge-in` starts the last question while the
agent is still answering the one before, so the server's VAD cuts that answer:

    realtime serve --model /tmp/tiny --token secret --port 8080
    python examples/livekit_agent.py --api-key secret --barge-in \\
        --say tests/data/q_capital.wav tests/data/q_weather.wav tests/data/q_story.wav

It prints one line per event worth seeing (the caller's turns and their transcripts, the
agent's answers, barge-ins, the server's error events) and exits 0 once every turn was
answered (and, with --barge-in, an answer was cut) with no error reported by the framework.
The framework's own warnings and errors go to stderr, with their level.

To talk to it yourself, LiveKit's console mode runs the same session on your microphone and
speakers (it needs PortAudio): start the same `AgentSession` in an entrypoint given to
`livekit.agents.cli.run_app(...)` and run `python my_agent.py console`.
"""

import argparse
import asyncio
import contextlib
import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import soundfile
from livekit import rtc
from livekit.agents import Agent, AgentSession
from livekit.agents.voice.io import AudioInput, AudioOutput, AudioOutputCapabilities
from livekit.plugins import openai

INSTRUCTIONS = "You are a friendly voice assistant. Answer in one or two short sentences."
FRAME_MS = 20  # the virtual microphone's frame
ANSWER_TIMEOUT_S = 120.0  # the tiny model on a busy 2-core CPU is slow, but not this slow
BARGE_IN_AFTER_S = 0.5  # how far into an answer the next question cuts in (it still runs)


class Assistant(Agent):
    def __init__(self) -> None:
        super().__init__(instructions=INSTRUCTIONS)


class ScriptedMicrophone(AudioInput):
    """The caller's microphone: speech queued by `say`, else silence, one frame every
    FRAME_MS of wall time (the server's VAD needs the silence to end a turn)."""

    def __init__(self, rate_hz: int) -> None:
        super().__init__(label="scripted microphone")
        self.rate_hz = rate_hz
        self._frame_samples = rate_hz * FRAME_MS // 1000
        self._pending = np.zeros(0, dtype=np.int16)  # (samples,) of speech still to play
        self._next_at: float | None = None  # monotonic time the next frame is due
        self._played = asyncio.Event()  # set when the queued speech has all been played

    async def say(self, speech: np.ndarray) -> None:
        """Play `speech` (int16 samples at this microphone's rate); returns once it is played."""
        self._pending = np.concatenate([self._pending, speech])
        self._played.clear()
        await self._played.wait()

    async def __anext__(self) -> rtc.AudioFrame:
        now = time.monotonic()
        self._next_at = now if self._next_at is None else self._next_at + FRAME_MS / 1000
        await asyncio.sleep(max(0.0, self._next_at - now))
        frame = np.zeros(self._frame_samples, dtype=np.int16)
        speech = self._pending[: self._frame_samples]
        frame[: len(speech)] = speech
        self._pending = self._pending[len(speech) :]
        if len(speech) and not len(self._pending):
            self._played.set()
        return rtc.AudioFrame(frame.tobytes(), self.rate_hz, 1, self._frame_samples)


class VirtualSpeaker(AudioOutput):
    """Plays the agent's audio nowhere, in real time, keeping LiveKit's contract for an audio
    sink: a segment (the frames between two flushes) reports playback_finished once, after its
    flush, when its duration has passed since its first frame or, if the framework cleared it
    (a barge-in), at once, at the point reached. It cannot pause, so the session warns that
    resume_false_interruption is ignored (a LiveKit room's output can pause)."""

    def __init__(self) -> None:
        super().__init__(label="virtual speaker", capabilities=AudioOutputCapabilities(pause=False))
        self._started_at = 0.0  # monotonic time of the segment's first frame
        self._pushed_s = 0.0  # of the segment's audio so far
        self._cleared = asyncio.Event()  # the framework cut the segment
        self._playout: asyncio.Task | None = None

    async def capture_frame(self, frame: rtc.AudioFrame) -> None:
        await super().capture_frame(frame)
        if not self._pushed_s:
            self._started_at = time.monotonic()
            self.on_playback_started(created_at=time.time())
        self._pushed_s += frame.duration

    def flush(self) -> None:
        super().flush()
        if self._pushed_s and self._playout is None:
            self._playout = asyncio.create_task(self._play_out())

    def clear_buffer(self) -> None:
        if self._pushed_s:
            self._cleared.set()

    async def _play_out(self) -> None:
        """Until the segment has played, or is cleared; then report where it got to."""
        remaining_s = self._started_at + self._pushed_s - time.monotonic()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._cleared.wait(), max(0.0, remaining_s))
        interrupted = self._cleared.is_set()
        played_s = min(self._pushed_s, time.monotonic() - self._started_at)
        self._pushed_s, self._playout = 0.0, None
        self._cleared.clear()
        self.on_playback_finished(playback_position=played_s, interrupted=interrupted)


class Transcript:
    """Prints the conversation as it goes, and keeps what the script waits for and checks."""

    def __init__(self) -> None:
        self.agent_state = "initializing"
        self.answers = 0  # times the agent started speaking
        self.barge_ins = 0  # answers the server cut (response.done "cancelled")
        self.server_errors = 0  # `error` events from the server (the plugin ignores some)
        self.framework_errors = 0  # errors the framework reported (AgentSession's "error")
        self.closed: str | None = None  # why the session closed, once it has

    def watch(self, session: AgentSession) -> None:
        session.on("agent_state_changed", self._on_agent_state)
        session.on("user_input_transcribed", self._on_user_transcript)
        session.on("conversation_item_added", self._on_item)
        session.on("error", self._on_error)
        session.on("close", self._on_close)

    def on_server_event(self, event: dict) -> None:
        """One of the server's raw events, as the plugin receives it."""
        if event["type"] == "error":
            self.server_errors += 1
            print(f"error event from the server: {event['error']}")
        elif event["type"] == "conversation.item.input_audio_transcription.failed":
            print(f"server: the caller's turn {event['item_id']} was not transcribed")
        elif event["type"] == "response.done":
            response = event["response"]
            reason = (response.get("status_details") or {}).get("reason")
            print(f"server: {response['id']} {response['status']} ({reason})")
            if response["status"] == "cancelled":
                self.barge_ins += 1
                print(f"barge-in: the server cut answer {response['id']}")

    async def until(self, condition: Callable[[], bool], what: str) -> None:
        """Wait for `condition`, at most ANSWER_TIMEOUT_S, while the session lasts."""
        deadline = time.monotonic() + ANSWER_TIMEOUT_S
        while not condition():
            if self.closed is not None:
                raise RuntimeError(f"the session closed ({self.closed}) before the {what}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {what} within {ANSWER_TIMEOUT_S:.0f} s")
            await asyncio.sleep(0.05)

    def _on_agent_state(self, event) -> None:
        self.agent_state = event.new_state
        if event.new_state == "speaking":
            self.answers += 1
            print(f"agent: answering (answer {self.answers})")

    def _on_user_transcript(self, event) -> None:
        if event.is_final:
            print(f"caller said: {event.transcript!r}")

    def _on_item(self, event) -> None:
        item = event.item
        if getattr(item, "role", None) == "assistant":
            cut = " (interrupted)" if item.interrupted else ""
            print(f"agent said{cut}: {item.text_content!r}")

    def _on_error(self, event) -> None:
        self.framework_errors += 1
        print(f"error reported by the framework: {event.error}")

    def _on_close(self, event) -> None:
        self.closed = str(event.reason)


class TappedRealtimeModel(openai.realtime.RealtimeModel):
    """The plugin's RealtimeModel, its sessions' raw server events also handed to `tap`."""

    def __init__(self, tap: Callable[[dict], None], **options) -> None:
        super().__init__(**options)
        self._tap = tap

    def session(self, **options) -> openai.realtime.RealtimeSession:
        session = super().session(**options)
        session.on("openai_server_event_received", self._tap)
        return session


def load_speech(path: Path, rate_hz: int) -> np.ndarray:
    """A mono WAV file's samples as int16; it must be at the microphone's rate."""
    samples, file_rate_hz = soundfile.read(path, dtype="int16", always_2d=True)
    if file_rate_hz != rate_hz:
        raise ValueError(f"{path}: {file_rate_hz} Hz, but the microphone runs at {rate_hz} Hz")
    return samples[:, 0]


async def converse(
    mic: ScriptedMicrophone, transcript: Transcript, clips: list[Path], barge_in: bool
) -> None:
    """The caller's side: each clip, then its answer heard out (or, before the last clip with
    `barge_in`, cut into BARGE_IN_AFTER_S into the answer)."""
    for n, clip in enumerate(clips):
        speech = load_speech(clip, mic.rate_hz)
        print(f"caller: {clip.name} ({len(speech) / mic.rate_hz:.1f} s)")
        await mic.say(speech)
        await transcript.until(lambda n=n: transcript.answers > n, f"answer to {clip.name}")
        if barge_in and n == len(clips) - 2:
            await asyncio.sleep(BARGE_IN_AFTER_S)
            print("caller: asks the next question while the agent is speaking")
            continue
        await transcript.until(lambda: transcript.agent_state != "speaking", "end of the answer")


async def run(args: argparse.Namespace) -> bool:
    """The scripted conversation; True if it went as it should."""
    transcript = Transcript()
    # the server's root is the base URL's host; the plugin appends /realtime to its /v1
    model = TappedRealtimeModel(
        transcript.on_server_event, base_url=f"{args.url}/v1", api_key=args.api_key
    )
    session = AgentSession(llm=model)
    mic = ScriptedMicrophone(soundfile.info(args.say[0]).samplerate)
    session.input.audio, session.output.audio = mic, VirtualSpeaker()
    transcript.watch(session)
    await session.start(Assistant())
    try:
        await converse(mic, transcript, args.say, args.barge_in)
    except (TimeoutError, RuntimeError) as exc:
        print(f"failed: {exc}")
        return False
    finally:
        await session.aclose()
        await model.aclose()  # (its HTTP session: outside a LiveKit job, the model owns one)
    print(
        f"done: {len(args.say)} turns, {transcript.answers} answers, "
        f"{transcript.barge_ins} barge-ins, {transcript.server_errors} error events from the "
        f"server, {transcript.framework_errors} errors reported by the framework"
    )
    # (an error event the plugin ignores is no failure here: it is printed, the test judges it)
    return transcript.framework_errors == 0 and (transcript.barge_ins > 0 or not args.barge_in)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8080", help="the realtime server")
    parser.add_argument(
        "--api-key",
        default=os.environ.get("REALTIME_TOKEN", "no-token"),
        help="the server's --token (default: $REALTIME_TOKEN)",
    )
    parser.add_argument(
        "--say", nargs="+", type=Path, required=True, help="WAV files: the caller's turns"
    )
    parser.add_argument(
        "--barge-in", action="store_true", help="ask the last question over the answer before"
    )
    args = parser.parse_args()
    if args.barge_in and len(args.say) < 2:
        parser.error("--barge-in needs at least two --say clips")
    return args


def main() -> int:
    args = parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    return 0 if asyncio.run(run(args)) else 1


if __name__ == "__main__":
    sys.exit(main())

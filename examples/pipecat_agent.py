"""A pipecat voice agent whose speech-to-speech model is `realtime serve` (Mini-Omni), reached
through pipecat's own OpenAI Realtime service by its base URL: the agent is written as pipecat's
docs write one (a system prompt, the service's default session settings, a context aggregator
pair around the service), only the URL and the key differ.

    realtime serve --token secret                     # Mini-Omni, on port 8080
    REALTIME_TOKEN=secret python examples/pipecat_agent.py \\
        --say tests/data/q_capital.wav tests/data/q_weather.wav tests/data/q_story.wav --barge-in

No microphone is needed: a scripted caller (the transport below) plays the WAV files in real
time as the caller's turns, each followed by silence so the server's VAD ends the turn, and
otherwise sends silence as an open microphone would. Each question waits for the answer to the
one before to end (or, with --listen S, for S seconds of it); with --barge-in the last one
starts a second into the answer, and the server's VAD cuts that answer. The answers go to a
simulated speaker that plays them in real time. For a live conversation, swap the transport for
pipecat's LocalAudioTransport (`pip install "pipecat-ai[local]"`, PortAudio): the pipeline is
the same. As in pipecat's examples, the agent is asked to speak first; Mini-Omni only answers
speech, so that response ends at once with nothing said.

It prints one line per conversation event (a caller turn, an answer and its text, a barge-in,
an error) and exits 0 once the scripted conversation is done with every turn answered, no
error and, with --barge-in, an answer cut. pipecat's warnings and errors go to stderr.
"""

import argparse
import asyncio
import contextlib
import os
import sys
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile
from loguru import logger
from pipecat.audio.utils import create_file_resampler
from pipecat.frames.frames import (
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
    CancelFrame,
    EndFrame,
    ErrorFrame,
    InputAudioRawFrame,
    InterruptionFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMRunFrame,
    OutputAudioRawFrame,
    StartFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
)
from pipecat.observers.base_observer import BaseObserver, FramePushed
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineWorker
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.aggregators.llm_response_universal import LLMContextAggregatorPair
from pipecat.processors.frame_processor import FrameDirection
from pipecat.services.openai.realtime.llm import OpenAIRealtimeLLMService
from pipecat.transports.base_input import BaseInputTransport
from pipecat.transports.base_output import BaseOutputTransport
from pipecat.transports.base_transport import BaseTransport, TransportParams
from pipecat.workers.runner import WorkerRunner

SYSTEM_PROMPT = "You are a friendly voice assistant. Answer briefly, in one or two sentences."
FRAME_MS = 20  # the scripted microphone's frame
TRAILING_SILENCE_MS = 1200  # after each question: more than the server VAD's 500 ms of silence
QUIET_S = 1.5  # the agent has said nothing for this long: its turn is over
BARGE_IN_AFTER_S = 1.0  # how far into an answer the barging question starts
WAIT_S = 60.0  # the longest the script waits for the agent (the tiny model on a busy CPU)


# --- the scripted caller: a transport that plays WAV files and listens in real time -----------


async def load_pcm16(path: str, rate_hz: int) -> bytes:
    """A WAV file as mono 16-bit PCM at `rate_hz` (pipecat's own resampler)."""
    audio, file_rate_hz = soundfile.read(path, dtype="float32", always_2d=True)
    pcm = (audio.mean(axis=1) * 32767).astype(np.int16).tobytes()  # (samples,) mono
    return await create_file_resampler().resample(pcm, file_rate_hz, rate_hz)


class ScriptedMicrophone(BaseInputTransport):
    """An always-open microphone: sends what it is given to say, else silence, in real time."""

    def __init__(self, params: TransportParams) -> None:
        super().__init__(params)
        self._chunks: deque[bytes] = deque()
        self._said = asyncio.Event()
        self._task: asyncio.Task | None = None

    async def start(self, frame: StartFrame) -> None:
        await super().start(frame)
        await self.set_transport_ready(frame)
        self._task = self.create_task(self._stream())

    async def stop(self, frame: EndFrame) -> None:
        await self._stop_streaming()
        await super().stop(frame)

    async def cancel(self, frame: CancelFrame) -> None:
        await self._stop_streaming()
        await super().cancel(frame)

    async def cleanup(self) -> None:
        await self._stop_streaming()
        await super().cleanup()

    async def say(self, pcm: bytes) -> None:
        """Speak `pcm` (16-bit, at this transport's rate), then silence; returns once sent."""
        size = self._frame_bytes
        silence = bytes(self.sample_rate * TRAILING_SILENCE_MS // 1000 * 2)
        speech = pcm + silence
        self._said.clear()
        self._chunks.extend(speech[i : i + size] for i in range(0, len(speech), size))
        await self._said.wait()

    @property
    def _frame_bytes(self) -> int:
        return self.sample_rate * FRAME_MS // 1000 * 2

    async def _stream(self) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            chunk = self._chunks.popleft() if self._chunks else bytes(self._frame_bytes)
            chunk = chunk.ljust(self._frame_bytes, b"\0")
            await self.push_audio_frame(InputAudioRawFrame(chunk, self.sample_rate, 1))
            if not self._chunks:
                self._said.set()
            next_at += FRAME_MS / 1000
            await asyncio.sleep(max(0.0, next_at - loop.time()))

    async def _stop_streaming(self) -> None:
        if self._task:
            await self.cancel_task(self._task)
            self._task = None


class SimulatedSpeaker(BaseOutputTransport):
    """Plays the agent's audio to nobody, at the pace a loudspeaker would."""

    async def start(self, frame: StartFrame) -> None:
        await super().start(frame)
        await self.set_transport_ready(frame)

    async def write_audio_frame(self, frame: OutputAudioRawFrame) -> bool:
        samples = len(frame.audio) // (2 * frame.num_channels)
        await asyncio.sleep(samples / frame.sample_rate)
        return True


class ScriptedCallTransport(BaseTransport):
    """A call with a scripted caller: its microphone in, a simulated speaker out."""

    def __init__(self, params: TransportParams) -> None:
        super().__init__()
        self.microphone = ScriptedMicrophone(params)
        self.speaker = SimulatedSpeaker(params)

    def input(self) -> ScriptedMicrophone:
        return self.microphone

    def output(self) -> SimulatedSpeaker:
        return self.speaker


# --- what the caller notices of the agent -----------------------------------------------------


class CallWatcher(BaseObserver):
    """Follows the agent from the pipeline's frames: whether it is answering or speaking, the
    answers it began after each caller turn, and the answers the caller's speech cut."""

    def __init__(self) -> None:
        super().__init__()
        self.responding = self.speaking = False
        # the caller began a turn; it ended; the bot began speaking after the caller did
        self._caller_spoke = self._turn_ended = self._bot_began = False
        self.answers = self.barge_ins = 0
        self.changed = asyncio.Condition()

    async def on_push_frame(self, data: FramePushed) -> None:
        frame = data.frame
        if not data.first_push or data.direction != FrameDirection.DOWNSTREAM:
            return  # (each frame once; a broadcast frame has an upstream twin)
        async with self.changed:
            if isinstance(frame, LLMFullResponseStartFrame | LLMFullResponseEndFrame):
                self.responding = isinstance(frame, LLMFullResponseStartFrame)
            elif isinstance(frame, UserStartedSpeakingFrame):
                self._caller_spoke, self._turn_ended, self._bot_began = True, False, False
            elif isinstance(frame, UserStoppedSpeakingFrame):
                self._turn_ended = True  # the server's VAD ended the caller's turn
                self._count_answer()
            elif isinstance(frame, BotStartedSpeakingFrame):
                self.speaking = True
                self._bot_began = self._caller_spoke
                self._count_answer()
            elif isinstance(frame, BotStoppedSpeakingFrame):
                self.speaking = False
            elif isinstance(frame, InterruptionFrame) and (self.responding or self.speaking):
                self.barge_ins += 1
                print("barge-in: the server heard the caller and cut the answer", flush=True)
            self.changed.notify_all()

    def _count_answer(self) -> None:
        """An answer to the caller's turn: the bot began speaking after the caller did, and the
        turn has ended, in either order (the server's audio may come with its end of turn, as
        the answer began at the caller's pause, before pipecat resolves the turn's end)."""
        if self._caller_spoke and self._turn_ended and self._bot_began:
            self._caller_spoke = self._turn_ended = self._bot_began = False
            self.answers += 1
            print(f"agent answers turn {self.answers}", flush=True)

    async def quiet(self) -> None:
        """Until the agent has neither answered nor spoken for QUIET_S."""
        while True:
            await self._until(lambda: not (self.responding or self.speaking), "go quiet")
            await asyncio.sleep(QUIET_S)
            if not (self.responding or self.speaking):
                return

    async def hear(self, answers: int, listen_s: float | None) -> None:
        """Until the agent has begun its `answers`th answer and then gone quiet, or spoken
        for `listen_s` (None: as long as it takes)."""
        await self._until(lambda: self.answers >= answers, f"answer turn {answers}")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(listen_s):
                await self.quiet()

    async def _until(self, predicate, what: str) -> None:
        try:
            async with asyncio.timeout(WAIT_S), self.changed:
                await self.changed.wait_for(predicate)
        except TimeoutError:
            state = f"responding={self.responding}, speaking={self.speaking}"
            raise TimeoutError(f"the agent did not {what} in {WAIT_S:.0f} s ({state})") from None


def print_transcripts(aggregators: LLMContextAggregatorPair) -> None:
    """Print what each side said, as pipecat's context aggregators record it."""

    @aggregators.user().event_handler("on_user_turn_message_added")
    async def on_user_message(aggregator, message) -> None:
        if message.content:
            print(f"caller said: {message.content!r}", flush=True)

    @aggregators.assistant().event_handler("on_assistant_turn_stopped")
    async def on_answer(aggregator, message) -> None:
        if message.content:
            print(f"agent said: {message.content!r}", flush=True)


# --- the agent ----------------------------------------------------------------------------------


def realtime_url(url: str) -> str:
    """`realtime serve`'s Realtime door for its http(s) address: ws(s)://host/v1/realtime."""
    return url.replace("http", "ws", 1).rstrip("/") + "/v1/realtime"


@dataclass
class Outcome:
    """How the call went, beyond what the CallWatcher saw."""

    finished: bool = False  # the script ran to its end
    errors: int = 0


async def converse(args: argparse.Namespace) -> tuple[Outcome, CallWatcher]:
    """Run the agent and the scripted caller to the end of the script (or the first error)."""
    transport = ScriptedCallTransport(
        TransportParams(audio_in_enabled=True, audio_out_enabled=True)
    )
    llm = OpenAIRealtimeLLMService(
        api_key=args.api_key,
        base_url=realtime_url(args.url),
        settings=OpenAIRealtimeLLMService.Settings(system_instruction=SYSTEM_PROMPT),
    )
    aggregators = LLMContextAggregatorPair(LLMContext())
    pipeline = Pipeline(
        [
            transport.input(),
            aggregators.user(),
            llm,
            transport.output(),
            aggregators.assistant(),
        ]
    )
    outcome, agent = Outcome(), CallWatcher()
    print_transcripts(aggregators)
    worker = PipelineWorker(pipeline, observers=[agent])

    @worker.event_handler("on_pipeline_error")
    async def on_error(worker: PipelineWorker, frame: ErrorFrame) -> None:
        outcome.errors += 1
        print(f"error: {frame.error}", flush=True)
        await worker.cancel(reason="an error")  # (pipecat's Realtime service stops reading)

    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(worker)
    caller = asyncio.create_task(call(args, transport.microphone, agent, worker, outcome))
    await runner.run()
    caller.cancel()
    return outcome, agent


async def call(
    args: argparse.Namespace,
    microphone: ScriptedMicrophone,
    agent: CallWatcher,
    worker: PipelineWorker,
    outcome: Outcome,
) -> None:
    """The caller's script: the agent greets, then each question waits for the answer to the
    one before (with --barge-in, the last one starts BARGE_IN_AFTER_S into it)."""
    try:
        await worker.queue_frames([LLMRunFrame()])  # the agent speaks first, as in the docs
        await agent.quiet()
        for number, path in enumerate(args.say):
            barging = args.barge_in and number == len(args.say) - 1
            if number:
                await agent.hear(number, BARGE_IN_AFTER_S if barging else args.listen)
            verb = "barges in with" if agent.speaking else "asks"
            print(f"caller {verb} {Path(path).name}", flush=True)
            await microphone.say(await load_pcm16(path, microphone.sample_rate))
        await agent.hear(len(args.say), args.listen)
        outcome.finished = True
    except TimeoutError as exc:
        print(f"error: {exc}", flush=True)
    finally:
        await worker.queue_frame(EndFrame())


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8080", help="realtime serve's address")
    parser.add_argument(
        "--api-key",
        default=os.environ.get("REALTIME_TOKEN", ""),
        help="the server's --token (default: $REALTIME_TOKEN)",
    )
    parser.add_argument("--say", nargs="+", required=True, metavar="WAV", help="caller's turns")
    parser.add_argument("--barge-in", action="store_true", help="the last question interrupts")
    parser.add_argument(
        "--listen",
        type=float,
        metavar="S",
        help="hear at most S seconds of an answer before the next question (default: all)",
    )
    parser.add_argument("--verbose", action="store_true", help="pipecat's debug log")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logger.remove()  # pipecat logs with loguru: its warnings and errors go to stderr
    logger.add(sys.stderr, level="DEBUG" if args.verbose else "WARNING")
    outcome, agent = asyncio.run(converse(args))
    print(f"done: {agent.answers} answers, {agent.barge_ins} barge-ins, {outcome.errors} errors")
    answered = agent.answers >= len(args.say)
    barged = agent.barge_ins > 0 or not args.barge_in
    return 0 if outcome.finished and answered and barged and not outcome.errors else 1


if __name__ == "__main__":
    sys.exit(main())

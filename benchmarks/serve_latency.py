"""Live-call latency of `realtime serve`, measured over real WebRTC on this machine, and over
its OpenAI-Realtime-compatible WebSocket.

Per call: the loopback client says a question, lets the answer play 1 s, then talks over it
(barge-in), and the interrupting turn gets its own answer. Reported, as the server measures
them: end of the caller's speech (last voiced frame) -> turn ended (the VAD hangover), -> first
text token, -> first audio sample sent; and speech onset detected -> outbound audio stopped.
Plus the cost of resampling and turn detection per 20 ms frame, which run on the event loop.

The question alone over the WebSocket (`realtime_api`): the audio is appended in real time,
20 ms at a time, and the figures are the client's, from the end of speech as the server's VAD
placed it (speech_stopped's audio_end_ms on the client's clock) to speech_stopped, the first
transcript delta and the first audio delta received. (No barge-in figure: there the client
stops its own playback, and the server sends the cancelled response.done with speech_started.)

    python -m benchmarks.serve_latency [--calls 5]                  # tiny random model, spawned
    python -m benchmarks.serve_latency --url http://HOST:8080 --token T    # a running server

Writes benchmarks/results/serve_latency.json.
"""

import argparse
import asyncio
import base64
import fractions
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import aiohttp
import av
import numpy as np

from realtime.audio.io import load_audio
from realtime.model import tokens
from realtime.transports.webrtc.caller import LoopbackClient
from realtime.transports.wire_audio import FORMATS, OutputAudio
from realtime.turns.detector import VAD_FRAME_MS, VAD_FRAME_SAMPLES, Framer, TurnDetector
from realtime.turns.options import TurnOptions

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "tests" / "data"
RESULTS = REPO / "benchmarks" / "results" / "serve_latency.json"
CALL_TIMEOUT_S = 120


async def one_call(url: str, token: str | None) -> tuple[list[dict], dict]:
    """Latency events of both answers, and the barge-in's interrupted event."""
    client = LoopbackClient(url, token)
    try:
        async with asyncio.timeout(CALL_TIMEOUT_S):
            await client.connect()
            client.send({"type": "settings", "max_answer_ms": 60_000})
            await client.say(load_audio(DATA / "q_capital.wav"))
            started = await client.wait_for("response.started")
            await asyncio.sleep(1.0)
            await client.say(load_audio(DATA / "bargein_stop.wav"))
            cut = await client.wait_for("response.interrupted", after=started["_t"])
            await client.wait_for("turn.latency", after=cut["_t"])
    finally:
        await client.close()
    return client.of_type("turn.latency"), cut


def pcm16_24k(clip: str, silence_ms: int) -> bytes:
    pcm = load_audio(DATA / clip, rate_hz=tokens.OUTPUT_SAMPLE_RATE_HZ)
    pcm = np.concatenate([pcm, np.zeros(silence_ms * tokens.OUTPUT_SAMPLE_RATE_HZ // 1000)])
    return OutputAudio(FORMATS["pcm16"]).push(pcm.astype(np.float32))


async def realtime_api_call(url: str, token: str | None) -> dict:
    """One call over /v1/realtime; figures in ms, on the client's clock."""
    ws_url = url.replace("http", "ws", 1) + "/v1/realtime"
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    received: list[tuple[float, dict]] = []
    arrived = asyncio.Event()
    async with aiohttp.ClientSession() as http, http.ws_connect(ws_url, headers=headers) as ws:

        async def read() -> None:
            async for message in ws:
                received.append((time.monotonic(), json.loads(message.data)))
                arrived.set()

        def first(kind: str, after: float = 0.0) -> tuple[float, dict] | None:
            return next(((t, e) for t, e in received if e["type"] == kind and t > after), None)

        async def wait_for(kind: str, after: float = 0.0) -> tuple[float, dict]:
            while (found := first(kind, after)) is None:
                arrived.clear()
                await arrived.wait()
            return found

        async def say(audio: bytes) -> float:
            """Append in real time; returns when the first sample was due."""
            step = tokens.OUTPUT_SAMPLE_RATE_HZ * VAD_FRAME_MS // 1000 * 2  # bytes a frame
            start = time.monotonic()
            for n, i in enumerate(range(0, len(audio), step)):
                await asyncio.sleep(max(0.0, start + n * VAD_FRAME_MS / 1000 - time.monotonic()))
                piece = base64.b64encode(audio[i : i + step]).decode()
                await ws.send_str(json.dumps({"type": "input_audio_buffer.append", "audio": piece}))
            return start

        reader = asyncio.ensure_future(read())
        async with asyncio.timeout(CALL_TIMEOUT_S):
            start = await say(pcm16_24k("q_capital.wav", 1000))
            t_stop, stopped = await wait_for("input_audio_buffer.speech_stopped")
            t_audio, _ = await wait_for("response.output_audio.delta")
            t_text = first("response.output_audio_transcript.delta")
            # enough measured: a random model's answer would run to its length limit
            await ws.send_str(json.dumps({"type": "response.cancel"}))
            await wait_for("response.done")
        reader.cancel()
    speech_end = start + stopped["audio_end_ms"] / 1000
    return {
        "end_of_turn_ms": round((t_stop - speech_end) * 1000, 1),
        "first_text_ms": None if t_text is None else round((t_text[0] - speech_end) * 1000, 1),
        "first_audio_ms": round((t_audio - speech_end) * 1000, 1),
        "first_audio_after_turn_end_ms": round((t_audio - t_stop) * 1000, 1),
    }


def vad_us_per_frame(frames: int = 5000) -> float:
    detector = TurnDetector(TurnOptions())
    pcm = (load_audio(DATA / "q_story.wav") * 32767).astype(np.int16)
    chunks = pcm[: len(pcm) // VAD_FRAME_SAMPLES * VAD_FRAME_SAMPLES].reshape(-1, VAD_FRAME_SAMPLES)
    start = time.perf_counter()
    for i in range(frames):
        detector.push(chunks[i % len(chunks)], float(i))
    return (time.perf_counter() - start) / frames * 1e6


def framer_us_per_frame(frames: int = 2000) -> float:
    """Resampling what aiortc decodes (48 kHz stereo, 20 ms) to 16 kHz mono frames."""
    framer, rng = Framer(), np.random.default_rng(0)
    pcm = (rng.standard_normal((1, 2 * 960)) * 1000).astype(np.int16)
    decoded = []
    for i in range(frames):
        frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="stereo")
        frame.sample_rate, frame.pts = 48_000, i * 960
        frame.time_base = fractions.Fraction(1, 48_000)
        decoded.append(frame)
    start = time.perf_counter()
    for frame in decoded:
        framer.push(frame)
    return (time.perf_counter() - start) / frames * 1e6


def summary(values: list[float]) -> dict | None:
    if not values:  # (the tiny random model may never decode a whole word)
        return None
    return {"median": round(statistics.median(values), 1), "max": max(values), "n": len(values)}


async def measure(url: str, token: str | None, calls: int) -> dict:
    latencies, cuts = [], []
    for _ in range(calls):
        turns, cut = await one_call(url, token)
        latencies += turns
        cuts.append(cut)
    figures = ("end_of_turn_ms", "first_text_ms", "first_audio_ms")
    result = {f: summary([t[f] for t in latencies if t[f] is not None]) for f in figures}
    result["first_audio_after_turn_end_ms"] = summary(
        [t["first_audio_ms"] - t["end_of_turn_ms"] for t in latencies]
    )
    result["barge_in_stop_ms"] = summary([c["stop_ms"] for c in cuts])
    api = [await realtime_api_call(url, token) for _ in range(calls)]
    result["realtime_api"] = {f: summary([c[f] for c in api if c[f] is not None]) for f in api[0]}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="a running server; default: spawn one on a tiny model")
    parser.add_argument("--token")
    parser.add_argument("--calls", type=int, default=5)
    args = parser.parse_args()
    record = {"machine": machine(), "calls": args.calls, "turn_options": TurnOptions().__dict__}
    record["vad_us_per_frame"] = round(vad_us_per_frame(), 2)
    record["framer_us_per_frame"] = round(framer_us_per_frame(), 2)
    if args.url:
        record["server"] = args.url
        record.update(asyncio.run(measure(args.url, args.token, args.calls)))
    else:
        record["server"] = "spawned: tiny random model, float32, cpu"
        record.update(spawned(args.calls))
    RESULTS.write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps(record, indent=1))


def spawned(calls: int) -> dict:
    from realtime.model.config import PRESETS
    from realtime.model.init_random import write_random_model
    from tests.serving import TOKEN, ServerProcess  # the tests' harness for the subprocess

    with tempfile.TemporaryDirectory() as tmp:
        write_random_model(Path(tmp) / "tiny", PRESETS["tiny"], seed=0, log=lambda _: None)
        server = ServerProcess.start(Path(tmp) / "tiny", Path(tmp))
        try:
            return asyncio.run(measure(server.url, TOKEN, calls))
        finally:
            server.stop()


def machine() -> dict:
    return {"platform": platform.platform(), "cpu_count": os.cpu_count()}


if __name__ == "__main__":
    main()

"""Turn-taking latency and false ends of turn, per turn-detection setting, over the OpenAI
Realtime door (`/v1/realtime`).

For each setting, each clip of tests/data/turns/ (benchmarks/turn_clips.py) is said on a fresh
session set to it, in real time, 20 ms an append, then 3 s of silence (benchmarks/turn_call.py).
Timed on this client's clock from the end of the caller's speech (the append holding the
clip's last speech sample, clips.json): the turn confirmed (input_audio_buffer.committed,
which comes with speech_stopped), the response created, and its first audio delta; p50/p90
over the complete questions. False ends: the questions with a pause in mid-sentence (400 to
1200 ms) that the server committed, or answered, before their last words were appended.

Each setting's `turn_detection` is reported as the session echoed it back (session.updated),
so a setting the server runs as another (semantic_vad as server_vad) shows as such.

    python -m benchmarks.turn_taking                      # a spawned server, tiny random model
    python -m benchmarks.turn_taking --preset mini-omni   # the released model's shapes
    python -m benchmarks.turn_taking --url http://127.0.0.1:8080 --token T

Writes benchmarks/results/turn_taking-<model>-<machine>.json (--out), prints a Markdown table.
"""

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import numpy as np

from benchmarks.machine import describe, machine_tag
from benchmarks.random_model import add_model_arguments, temporary_model
from benchmarks.turn_call import CLIPS_DIR, Clip, load_clips, run_clip

RESULTS = Path(__file__).resolve().parent / "results"
ANSWER_STEPS = 32  # steps per answer of a spawned server (each is cancelled at its first audio)
SETTINGS = {  # name -> the session's turn_detection
    "server_vad_500": {"type": "server_vad", "silence_duration_ms": 500},  # the default
    "server_vad_300": {"type": "server_vad", "silence_duration_ms": 300},
    "server_vad_800": {"type": "server_vad", "silence_duration_ms": 800},
    "semantic_low": {"type": "semantic_vad", "eagerness": "low"},
    "semantic_medium": {"type": "semantic_vad", "eagerness": "medium"},
    "semantic_high": {"type": "semantic_vad", "eagerness": "high"},
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="a running server (default: spawn one on 127.0.0.1)")
    parser.add_argument("--token", help="the running server's --token")
    names = ",".join(SETTINGS)
    parser.add_argument("--settings", default=names, help=f"comma-separated, of: {names}")
    parser.add_argument("--clips", help="comma-separated clip names (default: all)")
    parser.add_argument("--repeat", type=int, default=1, help="times each clip is said")
    parser.add_argument("--out", type=Path, help="the JSON result")
    parser.add_argument(
        "--serve-args",
        default="",
        help='more flags for the spawned `realtime serve`, e.g. --serve-args="--no-preempt"',
    )
    add_model_arguments(parser, steps=ANSWER_STEPS)
    parser.set_defaults(preset="tiny", dtype="float32")
    args = parser.parse_args(argv)
    args.settings = args.settings.split(",")
    if unknown := set(args.settings) - set(SETTINGS):
        parser.error(f"unknown settings: {', '.join(sorted(unknown))}")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    clips = load_clips(args.clips.split(",") if args.clips else None)
    began = time.monotonic()
    if args.url:
        model, settings = "served", asyncio.run(measure(args, clips, args.url, args.token))
    else:
        model, settings = spawned(args, clips)
    record = {
        "machine": describe(args.device) | {"tag": machine_tag()},
        "model": model,
        "server": args.url or f"spawned: {args.device}, {args.dtype} {args.serve_args}".strip(),
        "smart_turn_ms": smart_turn_cost(clips),
        "repeat": args.repeat,
        "clips": [clip.name for clip in clips],
        "settings": settings,
        "wall_s": round(time.monotonic() - began, 1),
    }
    tag = "served" if args.url else args.model.name if args.model else args.preset
    out = args.out or RESULTS / f"turn_taking-{tag}-{machine_tag()}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1) + "\n")
    print(table(settings))
    print(f"wrote {out}")


def spawned(args: argparse.Namespace, clips: list[Clip]) -> tuple[str, dict]:
    """Measure a `realtime serve` of the model those options name, on 127.0.0.1, a free port."""
    from tests.serving import TOKEN, ServerProcess  # the tests' harness for the subprocess

    model = args.model or Path(temporary_model(args.preset))
    extra = ["--dtype", args.dtype, "--device", args.device, "--max-new-tokens", str(args.steps)]
    extra += args.serve_args.split()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            server = ServerProcess.start(model, Path(tmp), extra=extra)
            try:
                settings = asyncio.run(measure(args, clips, server.url, TOKEN))
            finally:
                server.stop()
    finally:
        if not args.model:  # (the random weights written for this run)
            shutil.rmtree(model, ignore_errors=True)
    described = f"{args.model}" if args.model else f"random {args.preset} (seed 0)"
    return described, settings


async def measure(args: argparse.Namespace, clips: list[Clip], url: str, token: str | None):
    """Every setting over every clip, `args.repeat` times: setting name -> its results."""
    results = {}
    async with aiohttp.ClientSession() as http:
        for name in args.settings:
            results[name] = await one_setting(http, url, token, name, clips, args.repeat)
    return results


async def one_setting(
    http: aiohttp.ClientSession, url: str, token: str | None, name: str, clips, repeat: int
) -> dict:
    detection = SETTINGS[name]
    echoed, records = None, []
    steps_before = await engine_steps(http, url)
    for _ in range(repeat):
        for clip in clips:
            result = await run_clip(http, url, token, detection, clip)
            if "refused" in result:
                print(f"{name}: session.update refused: {result['refused']}", file=sys.stderr)
                return {"asked": detection, "refused": result["refused"]}
            echoed = result["echoed"]
            records.append(result["record"])
            print(f"{name:16} {progress(result['record'])}", file=sys.stderr)
    steps_after = await engine_steps(http, url)
    steps = {k: steps_after[k] - steps_before[k] for k in steps_before}
    return {"asked": detection, "echoed": echoed} | summary(records) | steps | {"clips": records}


async def engine_steps(http: aiohttp.ClientSession, url: str) -> dict:
    """The server's decode steps so far, and those of early answers it dropped (/healthz)."""
    async with http.get(f"{url}/healthz") as response:
        health = await response.json()
    return {k: health.get(k, 0) for k in ("decode_steps", "discarded_steps")}


def smart_turn_cost(clips: list[Clip]) -> dict | None:
    """Smart Turn's time per call on this machine (one thread), over the clips: what each pause
    costs a server that runs it (measured before any server work, alone)."""
    from realtime.audio.io import load_audio
    from realtime.turns.models import TurnModelError
    from realtime.turns.smart_turn import EndOfTurnModel

    try:
        model = EndOfTurnModel()
    except TurnModelError:
        return None
    times = []
    for clip in clips:
        audio = load_audio(CLIPS_DIR / f"{clip.name}.wav")
        began = time.perf_counter()
        model.probability(audio)
        times.append((time.perf_counter() - began) * 1000)
    return percentiles(times)


def progress(record: dict) -> str:
    """A clip's result, in a line."""
    line = f"{record['clip']:18} confirm {record['confirm_ms']} ms, "
    line += f"first audio {record['first_audio_ms']} ms, {record['responses']} response(s)"
    if record["false_end"]:
        line += f"; FALSE END {record['false_end_into_pause_ms']} ms into the pause"
    if not record["settled"]:
        line += "; a response never ended (no response.done)"
    return line


def summary(records: list[dict]) -> dict:
    """p50/p90 of the complete clips' latencies; the paused clips' false ends."""
    complete = [r for r in records if r["kind"] == "complete"]
    paused = [r for r in records if r["kind"] == "paused"]
    return {
        "confirm_ms": percentiles([r["confirm_ms"] for r in complete]),
        "first_audio_ms": percentiles([r["first_audio_ms"] for r in complete]),
        "false_ends": sum(r["false_end"] for r in paused),
        "paused_clips": len(paused),
        "false_ends_by_pause_ms": {
            str(ms): sum(r["false_end"] for r in paused if r["pause_ms"] == ms)
            for ms in sorted({r["pause_ms"] for r in paused})
        },
        "complete_false_ends": sum(r["false_end"] for r in complete),  # (0 unless a clip splits)
        "unsettled": sum(not r["settled"] for r in records),  # a response that never ended
    }


def percentiles(values: list[float | None]) -> dict | None:
    """p50 and p90 (linear interpolation) of the values present; None if there is none."""
    present = [v for v in values if v is not None]
    if not present:
        return None
    p50, p90 = np.percentile(present, [50, 90])
    return {"p50": round(float(p50), 1), "p90": round(float(p90), 1), "n": len(present)}


def table(settings: dict) -> str:
    """The results as a Markdown table."""
    lines = [
        "| setting | echoed turn_detection | confirm p50 / p90 ms | first audio p50 / p90 ms "
        "| false ends | steps discarded / run |",
        "|---|---|---|---|---|---|",
    ]
    for name, result in settings.items():
        if "refused" in result:
            lines.append(f"| {name} | refused: {result['refused'].get('code')} | | | | |")
            continue
        lines.append(
            f"| {name} | {short(result['echoed'])} | {pair(result['confirm_ms'])} "
            f"| {pair(result['first_audio_ms'])} "
            f"| {result['false_ends']} / {result['paused_clips']} "
            f"| {result['discarded_steps']} / {result['decode_steps']} |"
        )
    return "\n".join(lines)


def short(detection: dict | None) -> str:
    if detection is None:
        return "none"
    shown = [detection.get("type", "?")]
    for key in ("silence_duration_ms", "eagerness"):
        if key in detection:
            shown.append(f"{key.removesuffix('_duration_ms')} {detection[key]}")
    return ", ".join(shown)


def pair(figures: dict | None) -> str:
    return "-" if figures is None else f"{figures['p50']:.0f} / {figures['p90']:.0f}"


if __name__ == "__main__":
    main()

"""How many live conversations one engine keeps in real time, and how fast each is answered.

For N = 1, 2, 4, ... concurrent sessions: every caller speaks the same clip in real time (20 ms
pieces, so the chunked encoder prefills while they talk), all turns end together, and each
answer runs `--steps` decode steps. Per N we report the engine's batched step time, each
session's decode rate and whether its audio arrived without gaps when played from its first
sample (real time: >= 11.72 steps/s and no gaps, for every session), and end of turn -> first
audio sample (median, p90). Then cancel -> quiet: the time from `cancel()` to the Cancelled
event, after which a session gets no more audio. Stops doubling N once real time is lost.
With --transcribe each turn is transcribed too (realtime.engine.transcript: one more row per session
in the steps while its transcript runs), to weigh what the callers' words cost their answers.

    python -m benchmarks.engine_speed --model DIR [--device cuda] [--max-sessions 256]
    python -m benchmarks.engine_speed --preset mini-omni --device cuda   # random weights
    python -m benchmarks.engine_speed --max-sessions 1 [--transcribe]

Writes benchmarks/results/engine_speed-<model or preset>-<device>[-transcribe].json, after every
round (a run cut short keeps the rounds it finished).
"""

import argparse
import json
import sys
import threading
import time
from pathlib import Path

import numpy as np

from benchmarks.machine import describe
from benchmarks.random_model import add_model_arguments, load_runtime
from realtime.audio.io import load_audio
from realtime.decoding.options import DecodingOptions
from realtime.decoding.runtime import Runtime
from realtime.engine import events
from realtime.engine.engine import Engine, EngineOptions
from realtime.engine.session import SessionOptions
from realtime.model import tokens

HERE = Path(__file__).resolve().parent
CLIP = HERE.parent / "tests" / "data" / "q_capital.wav"
PIECE = tokens.INPUT_SAMPLE_RATE_HZ // 50  # 20 ms, as a WebRTC caller delivers it


class Caller:
    """One session's events with their arrival times."""

    def __init__(self) -> None:
        self.events: list[events.Event] = []
        self.done = threading.Event()
        self.turn_end_s = 0.0

    def __call__(self, event: events.Event) -> None:
        self.events.append(event)
        if isinstance(event, (events.Done, events.Cancelled, events.Error)):
            self.done.set()

    def first(self, kind) -> events.Event | None:
        return next((e for e in self.events if isinstance(e, kind)), None)

    def audio_gaps_ms(self) -> float:
        """Silence a listener hears, playing from the first chunk at real-time speed."""
        chunks = [e for e in self.events if isinstance(e, events.AudioChunk)]
        if not chunks:
            return float("inf")
        clock, gaps = chunks[0].t, 0.0
        for chunk in chunks:
            if chunk.t > clock:
                gaps, clock = gaps + (chunk.t - clock), chunk.t
            clock += len(chunk.pcm) / tokens.OUTPUT_SAMPLE_RATE_HZ
        return gaps * 1000

    def steps_per_s(self) -> float:
        done, start = self.first(events.Done), self.first(events.PrefillDone)
        if done is None or start is None or done.t <= start.t:
            return 0.0
        return (done.steps - 1) / (done.t - start.t)


def speak_together(handles, pcm: np.ndarray, callers) -> None:
    """All callers talk at once in real time, then their turns end together."""
    began = time.monotonic()
    for index, start in enumerate(range(0, len(pcm), PIECE)):
        for handle in handles:
            handle.push_audio(pcm[start : start + PIECE])
        time.sleep(
            max(0.0, began + (index + 1) * PIECE / tokens.INPUT_SAMPLE_RATE_HZ - time.monotonic())
        )
    for handle, caller in zip(handles, callers, strict=True):
        caller.turn_end_s = time.monotonic()
        handle.end_turn()


def run_round(
    runtime: Runtime, sessions: int, steps: int, pcm: np.ndarray, transcribe: bool = False
) -> dict:
    engine = Engine(runtime, EngineOptions(max_sessions=sessions)).start()
    try:
        decoding = DecodingOptions(max_new_tokens=steps)
        options = SessionOptions(decoding=decoding, transcribe=transcribe)
        callers = [Caller() for _ in range(sessions)]
        handles = [engine.open_session(options, caller) for caller in callers]
        speak_together(handles, pcm, callers)
        for caller in callers:
            caller.done.wait(timeout=600)
        ended = (events.TranscriptDone, events.TranscriptFailed)
        while transcribe and not all(c.first(ended) for c in callers):
            time.sleep(0.01)  # (a transcript may outlast its answer; its steps count too)
        decode_steps = list(engine.step_log)
    finally:
        engine.stop()
    return summarize(sessions, callers, decode_steps)


def summarize(sessions: int, callers: list[Caller], steps: list[tuple[int, float]]) -> dict:
    """`steps`: the engine's (rows, ms) of each batched step."""
    step_ms = [ms for _, ms in steps]
    by_rows = {}
    for rows in sorted({rows for rows, _ in steps}):
        by_rows[str(rows)] = float(np.median([ms for r, ms in steps if r == rows]))
    latencies = sorted(
        (c.first(events.FirstAudio).t - c.turn_end_s) * 1000
        for c in callers
        if c.first(events.FirstAudio)
    )
    rates = [c.steps_per_s() for c in callers]
    gaps = [c.audio_gaps_ms() for c in callers]
    realtime = all(r >= tokens.REALTIME_STEPS_PER_S for r in rates) and max(gaps) == 0
    return {
        "sessions": sessions,
        "real_time": realtime,
        "engine_step_ms_median": float(np.median(step_ms)) if step_ms else None,
        # (rows: sessions' answer rows, and transcripts' while they run)
        "engine_step_ms_median_by_rows": by_rows,
        "session_steps_per_s_min": min(rates),
        "audio_gap_ms_max": max(gaps),
        "turn_end_to_first_audio_ms_median": _pct(latencies, 50),
        "turn_end_to_first_audio_ms_p90": _pct(latencies, 90),
        "answers_with_audio": len(latencies),
        "transcripts": sum(bool(c.first(events.TranscriptDone)) for c in callers),
        "errors": [e.message for c in callers for e in c.events if isinstance(e, events.Error)],
    }


def cancel_to_quiet(runtime: Runtime, sessions: int, pcm: np.ndarray) -> dict:
    """Cancel one of `sessions` answering callers; how long until the engine confirms."""
    engine = Engine(runtime, EngineOptions(max_sessions=sessions)).start()
    try:
        options = SessionOptions(decoding=DecodingOptions(max_new_tokens=10_000))
        callers = [Caller() for _ in range(sessions)]
        handles = [engine.open_session(options, caller) for caller in callers]
        speak_together(handles, pcm, callers)
        while callers[0].first(events.FirstAudio) is None and not callers[0].done.is_set():
            time.sleep(0.005)
        asked = time.monotonic()
        handles[0].cancel()
        callers[0].done.wait(timeout=60)
        cancelled = callers[0].first(events.Cancelled)
        time.sleep(0.5)
        late = [
            e
            for e in callers[0].events
            if isinstance(e, events.AudioChunk) and cancelled and e.t > cancelled.t
        ]
    finally:
        engine.stop()
    return {
        "sessions": sessions,
        "cancel_to_quiet_ms": (cancelled.t - asked) * 1000 if cancelled else None,
        "audio_chunks_after_cancel": len(late),
    }


def _pct(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_arguments(parser, steps=48)
    parser.add_argument("--max-sessions", type=int, default=256)
    parser.add_argument("--transcribe", action="store_true", help="transcribe every turn too")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    runtime, name, model = load_runtime(args)
    suffix = "-transcribe" if args.transcribe else ""
    out = args.out or HERE / "results" / f"engine_speed-{name}-{args.device}{suffix}.json"
    pcm = load_audio(CLIP)
    rounds, sessions, cancels = [], 1, []
    while sessions <= args.max_sessions:
        rounds.append(run_round(runtime, sessions, args.steps, pcm, args.transcribe))
        print(json.dumps(rounds[-1]), file=sys.stderr, flush=True)
        write(out, args, model, rounds, cancels)
        if not rounds[-1]["real_time"]:
            break
        sessions *= 2
    last_ok = most_real_time(rounds)
    cancels = [cancel_to_quiet(runtime, n, pcm) for n in sorted({1, max(last_ok, 1)})]
    write(out, args, model, rounds, cancels)
    print(f"real time up to {last_ok} sessions; wrote {out}", file=sys.stderr)


def most_real_time(rounds: list[dict]) -> int:
    return max([r["sessions"] for r in rounds if r["real_time"]], default=0)


def write(out: Path, args, model: str, rounds: list[dict], cancels: list[dict]) -> None:
    result = {
        "machine": describe(args.device),
        "model": model,
        "dtype": args.dtype,
        "clip": CLIP.name,
        "steps": args.steps,
        "transcribe": args.transcribe,
        "max_real_time_sessions": most_real_time(rounds),
        "rounds": rounds,
        "cancel": cancels,
    }
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()

"""A soak of `realtime serve`: as many callers as it takes sessions (half over WebRTC, half over
the OpenAI Realtime WebSocket) talk to it for a set time, and the server is watched throughout.

Each caller asks a question (a clip of tests/data, in real time), listens, and now and then
talks over the answer after 1 s with another clip (barge-in), then pauses 0.3 to 1.5 s and asks
again; WebRTC callers ask for answers of at most 3 s, and a spawned server is given that limit
for its OpenAI door too, so turns cycle. A caller whose turn fails (no answer within 45 s, an
`error` or `session.closing` event, the connection closing) counts it and calls again. Turns
still under way 15 s after the set time are cut and counted as unfinished.

Underruns are counted at the caller, for each answer from its first audio to its end, against a
listener that holds JITTER_MS (100 ms) of audio before playing and then plays in real time:
audio that arrives after everything before it has played is a dropout, as long as the wait.
  - WebRTC: the server sends a 20 ms frame every 20 ms, silence included, so the frames'
    arrival times feed that playout (a gap of more than 120 ms between frames is a dropout);
    and where the server's own answer buffer ran dry it sends silence inside the answer, which
    no arrival time shows: the answer then takes longer to play (response.started to its end,
    on the caller's clock) than the audio it played (`played_ms`), and more than 100 ms longer
    counts as a dropout too. Silence the model itself speaks is not told apart from that.
  - OpenAI door: the audio deltas come as fast as they are made; each feeds the playout with
    its duration when it arrives, until response.done, or the caller's barge-in.
First audio is timed from the end of the caller's question (its last 20 ms sent) to the
answer's first audio arriving; it includes the server VAD's 500 ms hangover. For WebRTC the
server's own figure (turn.latency's first_audio_ms, from the last voiced frame it decoded)
comes beside it: the difference is time spent in transit, jitter buffers and decoders.

The server's resident memory (VmRSS), threads and open file descriptors are read from /proc
every 10 s. Its memory growth is the slope of a straight line fitted to RSS after the warm-up
(the first 20 % of the run or 2 minutes, whichever is longer, at most half of it), in % of the
fitted RSS at the warm-up's end per hour. Targets: no failed turns, no underruns, growth < 1 %/h.

    python -m benchmarks.soak [--minutes 30] [--sessions N]       # a tiny random model, spawned
    python -m benchmarks.soak --url http://127.0.0.1:8080 --token T     # a running server here

Writes benchmarks/results/soak-<machine>.json (--out). Its exit status is 0 whether or not the
targets are met; not 0 if the soak itself broke.
"""

import argparse
import asyncio
import json
import random
import shlex
import signal
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

from benchmarks.machine import cpu_name, machine_tag
from benchmarks.server_health import HealthSeries, listening_pid
from benchmarks.soak_callers import (
    MAX_ANSWER_MS,
    Soak,
    Tally,
    caller,
)

HERE = Path(__file__).resolve().parent
EXIT_BAD_INPUT = 2
SPAWNED_SESSIONS = 4  # `realtime serve`'s default --max-sessions
PROGRESS_S = 30.0
FINISH_S = 15.0  # for the turns under way at the deadline to end; then they are cut
MAX_GROWTH_PCT_PER_H = 1.0


def main() -> None:
    args = parse_args()
    began = time.monotonic()
    if args.url:
        record = asyncio.run(soak(args, args.url, args.token, args.pid or listening_pid(args.url)))
        record["server"] = args.url
    else:
        record = spawned(args)
    record["wall_s"] = round(time.monotonic() - began, 1)
    out = args.out or HERE / "results" / f"soak-{machine_tag()}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1) + "\n")
    print(summary(record, out))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0, help="how long callers talk")
    parser.add_argument("--sessions", type=int, help="callers (default: the server's maximum)")
    parser.add_argument("--url", help="a running server on 127.0.0.1 (default: spawn one)")
    parser.add_argument("--token", help="the running server's --token")
    parser.add_argument("--pid", type=int, help="the running server's process (default: found)")
    parser.add_argument("--model", type=Path, help="for the spawned server (default: tiny random)")
    parser.add_argument("--serve-args", default="", help="more options for the spawned server")
    parser.add_argument("--out", type=Path, help="the JSON result")
    parser.add_argument("--seed", type=int, default=0, help="of the callers' choices")
    args = parser.parse_args()
    if args.url and urlsplit(args.url).hostname != "127.0.0.1":
        host = urlsplit(args.url).hostname
        print(
            f"soak: error: --url must be on 127.0.0.1, not {host}: a soak loads a server "
            "on this machine only",
            file=sys.stderr,
        )
        sys.exit(EXIT_BAD_INPUT)
    return args


def spawned(args: argparse.Namespace) -> dict:
    """Soak a `realtime serve` on a tiny random model, with the tests' harness."""
    from realtime.model.config import PRESETS
    from realtime.model.init_random import write_random_model
    from tests.serving import TOKEN, ServerProcess

    # a soak stopped with SIGTERM unwinds as from Ctrl-C, through the server.stop() below
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    sessions = args.sessions or SPAWNED_SESSIONS
    extra = ["--max-sessions", str(sessions), "--max-answer-ms", str(MAX_ANSWER_MS)]
    extra += shlex.split(args.serve_args)
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or Path(tmp) / "tiny"
        if not args.model:
            write_random_model(model, PRESETS["tiny"], seed=0, log=lambda _: None)
        server = ServerProcess.start(model, Path(tmp), extra=extra)
        try:
            record = asyncio.run(soak(args, server.url, TOKEN, server.process.pid, sessions))
            if server.process.poll() is not None:  # it died under the soak
                record["server_exit"] = server.process.returncode
                record["server_log_tail"] = server.log.read_text()[-3000:]
        finally:
            server.stop()
    record["model"] = str(args.model) if args.model else "random tiny (seed 0)"
    record["server"] = "spawned: float32, cpu"
    record["serve_args"] = extra
    return record


async def soak(
    args: argparse.Namespace, url: str, token: str | None, pid: int | None, sessions: int = 0
) -> dict:
    sessions = sessions or args.sessions or await asyncio.to_thread(max_sessions, url)
    run_s = args.minutes * 60
    state = Soak(url, token, time.monotonic() + run_s)
    health = HealthSeries(pid)
    doors = ["webrtc" if i % 2 == 0 else "openai" for i in range(sessions)]
    callers = [caller(state, door, random.Random(args.seed + i)) for i, door in enumerate(doors)]
    watchers = [
        asyncio.ensure_future(health.sample_every()),
        asyncio.ensure_future(progress(state, health)),
    ]
    try:
        async with asyncio.timeout(run_s + FINISH_S):
            await asyncio.gather(*callers)
    except TimeoutError:
        pass  # the turns still under way are counted as unfinished
    finally:
        for task in watchers:
            task.cancel()
    return report(state, health, sessions, args.minutes, pid)


def max_sessions(url: str) -> int:
    with urllib.request.urlopen(f"{url.rstrip('/')}/healthz", timeout=10) as reply:
        return int(json.load(reply)["max_sessions"])


async def progress(state: Soak, health: HealthSeries) -> None:
    """A line on stderr every PROGRESS_S."""
    began = time.monotonic()
    while True:
        await asyncio.sleep(PROGRESS_S)
        turns = {door: t.answered + t.interrupted for door, t in state.tallies.items()}
        failed = sum(t.failed for t in state.tallies.values())
        last = health.samples[-1] if health.samples else {}
        print(
            f"soak {(time.monotonic() - began) / 60:5.1f} min: turns {turns}, failed {failed}, "
            f"errors {sum(state.errors.counts.values())}, RSS {last.get('rss_mib', '?')} MiB, "
            f"threads {last.get('threads', '?')}, fds {last.get('fds', '?')}",
            file=sys.stderr,
        )


def report(state: Soak, health: HealthSeries, sessions: int, minutes: float, pid: int | None):
    tallies = state.tallies
    failed = sum(t.failed for t in tallies.values())
    underruns = sum(t.underruns for t in tallies.values())
    growth = health.growth_pct_per_hour(minutes * 60)
    return {
        "machine": {"processor": cpu_name(), "tag": machine_tag()},
        "model": None,  # (the spawned one's is filled in)
        "sessions": sessions,
        "minutes": minutes,
        "doors": {door: door_report(t, state.began) for door, t in tallies.items()},
        "errors": {
            "count": sum(state.errors.counts.values()),
            "by_kind": dict(state.errors.counts),
            "messages": state.errors.messages,
        },
        "underruns": {
            "count": underruns,
            "worst_gap_ms": round(max(t.worst_gap_ms for t in tallies.values()), 1),
        },
        "first_audio_ms": percentiles([ms for t in tallies.values() for ms in t.first_audio_ms]),
        "health": {
            "pid": pid,
            "samples": health.samples,
            "rss_growth_pct_per_hour": growth,
            "warmup_s": health.warmup_s(minutes * 60),
        },
        "targets": {
            "no_failed_turns": failed == 0,
            "no_underruns": underruns == 0,
            "rss_flat": None if growth is None else growth < MAX_GROWTH_PCT_PER_H,
        },
    }


def door_report(tally: Tally, began: float) -> dict:
    return {
        "answered": tally.answered,
        "interrupted": tally.interrupted,
        "failed": tally.failed,
        "silent": tally.silent,
        "unfinished": tally.unfinished,
        "underruns": tally.underruns,
        "worst_gap_ms": round(tally.worst_gap_ms, 1),
        "first_audio_ms": percentiles(tally.first_audio_ms),
        "server_first_audio_ms": percentiles(tally.server_first_audio_ms),
        # [s into the soak, ms] of each underrun, as its answer ended
        "underrun_log": [[round(t - began, 1), round(ms, 1)] for t, ms in tally.underrun_log],
    }


def percentiles(values: list[float]) -> dict | None:
    if not values:
        return None
    deciles = statistics.quantiles(values, n=10) if len(values) > 1 else values * 9
    return {
        "p50": round(statistics.median(values), 1),
        "p90": round(deciles[8], 1),
        "n": len(values),
    }


def summary(record: dict, out: Path) -> str:
    doors = ", ".join(
        f"{door} {d['answered']} answered / {d['interrupted']} interrupted / {d['failed']} failed"
        for door, d in record["doors"].items()
    )
    health, targets = record["health"], record["targets"]
    met = ", ".join(
        f"{name} {'yes' if ok else 'no' if ok is False else '?'}" for name, ok in targets.items()
    )
    return (
        f"soak of {record['minutes']} min, {record['sessions']} callers: {doors}; "
        f"{record['errors']['count']} errors; {record['underruns']['count']} underruns "
        f"(worst {record['underruns']['worst_gap_ms']} ms); "
        f"first audio {record['first_audio_ms']}; "
        f"RSS growth {health['rss_growth_pct_per_hour']} %/h over {len(health['samples'])} "
        f"samples\ntargets: {met}\nwrote {out}"
    )


if __name__ == "__main__":
    main()

"""What remembering a conversation costs (SessionOptions.keep_history): the model's work grows
with the context the earlier turns fill; its memory does not.

- model: at context lengths L, one turn's prompt (2 s of speech: 100 positions) prefilled after
  L positions, one decode step (one row) at position L, and the refill of L positions from 0
  (what a session pays, at its next turn, when the oldest turns leave and the rest move);
- conversation: one engine session with history, the same 2 s question spoken in real time
  turn after turn (answers of --steps steps) until the context is full and the oldest turns
  leave: per turn, the positions its answer starts from (its own prompt included), the end of
  the caller's speech -> first audio (a refill the turn waits for included), the median step;
- memory: the KV cache of one row at the model's block size. The engine allocates every
  session's rows at full length when it starts, so history costs no memory, only time.

    python -m benchmarks.history_cost [--preset mini-omni | --model DIR] [--device cpu]

Writes benchmarks/results/history_cost-<model or preset>-<device>.json.
"""

import argparse
import json
import statistics
import threading
import time
from pathlib import Path

import torch

from benchmarks.engine_speed import CLIP, PIECE
from benchmarks.machine import describe
from benchmarks.random_model import add_model_arguments, load_runtime
from realtime.audio.io import load_audio
from realtime.decoding.generate import decode_step
from realtime.decoding.options import DecodingOptions
from realtime.decoding.runtime import Runtime
from realtime.engine import events
from realtime.engine.engine import Engine, EngineOptions
from realtime.engine.session import SessionOptions
from realtime.model import tokens

HERE = Path(__file__).resolve().parent
TURN_POSITIONS = 100  # 2 s of the caller's speech
TIMEOUT_S = 600


def kv_bytes_per_position(runtime: Runtime) -> int:
    """K and V of every layer for one position of one row, in the cache's dtype."""
    cfg, cache = runtime.lm.cfg, runtime.cache
    return 2 * cfg.n_layer * cfg.n_query_groups * cfg.head_size * cache.k.element_size()


def model_costs(runtime: Runtime, lengths: list[int]) -> list[dict]:
    """Prompt, step and refill times at each context length (ms; steps: median of 10)."""
    lm, cache = runtime.lm, runtime.cache
    device = cache.k.device
    slots = torch.tensor([0], device=device)
    pad = torch.tensor(
        [tokens.layer_shift(tokens.PAD_A, i) for i in range(tokens.AUDIO_LAYERS)] + [tokens.PAD_T],
        device=device,
    )

    def forward(start: int, count: int) -> float:
        ids = pad.expand(1, count, -1)
        positions = torch.arange(start, start + count, device=device)[None]
        began = time.perf_counter()
        lm(lm.embed(ids), positions, slots, cache)
        _sync(device)
        return (time.perf_counter() - began) * 1000

    rows = []
    with torch.inference_mode():
        forward(0, 16)  # warm up
        for length in lengths:
            refill = forward(0, length) if length else 0.0
            prompt = forward(length, TURN_POSITIONS)
            steps = []
            for k in range(10):
                position = torch.tensor([length + TURN_POSITIONS + k], device=device)
                began = time.perf_counter()
                decode_step(lm, cache, pad[None], position, slots)
                _sync(device)
                steps.append((time.perf_counter() - began) * 1000)
            row = {
                "context": length,
                "refill_ms": round(refill, 1),
                "prompt_ms": round(prompt, 1),
                "step_ms": round(statistics.median(steps), 2),
            }
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Conversation:
    """One session's events, a turn at a time."""

    def __init__(self) -> None:
        self.events: list[events.Event] = []
        self.answered = threading.Event()

    def __call__(self, event: events.Event) -> None:
        self.events.append(event)
        if isinstance(event, (events.Done, events.Error)):
            self.answered.set()

    def of_turn(self, kind, turn: int) -> list:
        return [e for e in self.events if isinstance(e, kind) and e.turn == turn]


def conversation(runtime: Runtime, steps: int, turns: int) -> list[dict]:
    """A session that remembers, fed the same question turn after turn in real time."""
    pcm = load_audio(CLIP)[: 2 * tokens.INPUT_SAMPLE_RATE_HZ]
    engine = Engine(runtime, EngineOptions(max_sessions=1)).start()
    rows = []
    try:
        record = Conversation()
        options = SessionOptions(keep_history=True, decoding=DecodingOptions(max_new_tokens=steps))
        handle = engine.open_session(options, record)
        for turn in range(1, turns + 1):
            record.answered.clear()
            began = time.perf_counter()
            for start in range(0, len(pcm), PIECE):
                handle.push_audio(pcm[start : start + PIECE])
                time.sleep(max(0.0, began + (start + PIECE) / 16000 - time.perf_counter()))
            steps_before = engine.steps
            spoken = time.monotonic()  # (events carry monotonic times)
            handle.end_turn()
            if not record.answered.wait(TIMEOUT_S):
                raise TimeoutError(f"turn {turn} was not answered within {TIMEOUT_S} s")
            if errors := record.of_turn(events.Error, turn):
                raise RuntimeError(errors[0].message)
            first = record.of_turn(events.FirstAudio, turn)
            prefill = record.of_turn(events.PrefillDone, turn)[0]
            taken = engine.steps - steps_before  # (the log keeps the latest steps only)
            step_ms = [ms for _, ms in list(engine.step_log)[-taken:]] if taken else []
            forgotten = [e for e in record.events if isinstance(e, events.Forgotten)]
            row = {
                "turn": turn,
                "positions": prefill.positions,  # the context the answer starts from
                # from the end of the caller's speech: a refill before it is heard here
                "first_audio_ms": round((first[0].t - spoken) * 1000, 1) if first else None,
                "step_ms": round(statistics.median(step_ms), 2) if step_ms else None,
                "turns_forgotten_so_far": sum(len(e.turns) for e in forgotten),
            }
            print(json.dumps(row), flush=True)
            rows.append(row)
    finally:
        engine.stop()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_arguments(parser, steps=24)
    parser.add_argument("--turns", type=int, default=20, help="turns of the conversation")
    parser.add_argument("--lengths", default="0,512,1024,1536,1920", help="context lengths")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    runtime, name, model = load_runtime(args)
    out = args.out or HERE / "results" / f"history_cost-{name}-{args.device}.json"
    block = runtime.lm.cfg.block_size
    per_position = kv_bytes_per_position(runtime)
    lengths = [int(n) for n in args.lengths.split(",")]
    if max(lengths) + TURN_POSITIONS + 10 > block:
        parser.error(f"--lengths: the model holds {block} positions")
    row_mib = per_position * block / 2**20
    print(f"KV cache: {per_position} bytes a position, {row_mib:.1f} MiB a row at {block}")
    result = {
        "machine": describe(args.device),
        "model": model,
        "dtype": args.dtype,
        "block_size": block,
        "kv_bytes_per_position": per_position,
        "kv_mib_per_row": round(per_position * block / 2**20, 2),
        "turn_positions": TURN_POSITIONS,
        "model_costs": model_costs(runtime, lengths),
        "steps": args.steps,
        "conversation": conversation(runtime, args.steps, args.turns),
    }
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

"""One request's speed, ours against the Mini-Omni reference on the same weights and machine.

Ours (in this process): the decode step (forward + heads + sampling) for a2a (1 row) and
a2a-batch (2 rows), while the text is still running (text and audio heads) and after it ended
(audio head only), in bf16 and float32; the prefill of a 2 s utterance; the time from a WAV
path to the first audio sample through `Runtime.run`; peak memory. The reference (in its own
environment, through benchmarks/reference.py): its per-step forward + sampling for the same
tasks and its streaming server path's first audio. Results go to
benchmarks/results/generate_speed-<device>.json with the ratios.

    python -m benchmarks.generate_speed --model DIR \
        [--reference-dir MINI_OMNI_CHECKOUT --reference-python ITS_VENV/bin/python]

DIR is a `realtime init-random DIR --preset mini-omni` directory (the released shapes).
"""

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

from benchmarks.machine import cpu_name
from kernels import cpu_decode
from realtime.audio.io import load_audio
from realtime.decoding.generate import decode_step
from realtime.decoding.options import ENCODER_MODES, DecodingOptions
from realtime.decoding.runtime import AudioChunk, Request, Runtime
from realtime.decoding.sampling import sample
from realtime.model import checkpoint, tokens
from realtime.model.prompts import TASKS, Task, build_prompt

HERE = Path(__file__).resolve().parent
CLIP = HERE.parent / "tests" / "data" / "q_capital.wav"
STEP_TASKS = (Task.A2A, Task.A2A_BATCH)
GREEDY = DecodingOptions()


def time_steps(runtime: Runtime, task: Task, steps: int, text_running: bool) -> dict:
    """Decode steps of `task` from a prompt-length position, each step timed end to end."""
    lm, spec = runtime.lm, TASKS[task]
    prompt = build_prompt(task, audio_frames=tokens.whisper_frames(2 * 16000))
    rows = torch.arange(spec.rows)
    ids = prompt.ids[:, -1].clone()  # (rows, 8): any ids cost the same
    times = []
    with torch.inference_mode():
        for step in range(steps + 2):  # the first two warm up
            began = time.perf_counter()
            positions = torch.full((spec.rows,), prompt.length + step)
            hidden = decode_step(lm, runtime.cache, ids, positions, rows)
            if text_running:
                sample(lm.text_logits(hidden[spec.text_row : spec.text_row + 1]), GREEDY, 0, 0)
            sample(lm.audio_logits(hidden[spec.audio_row : spec.audio_row + 1])[0], GREEDY, 0, 0)
            times.append((time.perf_counter() - began) * 1000)
    return summary(times[2:])


def summary(times_ms: list[float]) -> dict:
    ordered = sorted(times_ms)
    return {
        "step_ms_median": ordered[len(ordered) // 2],
        "step_ms_mean": sum(ordered) / len(ordered),
        "step_ms_min": ordered[0],
        "steps": len(ordered),
    }


def best_of_rounds(rounds: list[dict]) -> dict:
    """The round with the lowest median (this shared VM's speed drifts by +-20% over minutes;
    rounds of every configuration are interleaved so each gets its quiet moments)."""
    best = min(rounds, key=lambda r: r["step_ms_median"])
    return best | {
        "rounds": len(rounds),
        "round_medians_ms": [round(r["step_ms_median"], 2) for r in rounds],
    }


def first_audio(runtime: Runtime, task: Task, encoder: str, repeats: int) -> dict:
    """WAV path -> first audio sample through Runtime.run (best of `repeats`), with timings."""
    best = None
    for _ in range(repeats):
        began = time.perf_counter()
        request = Request(
            task,
            audio=load_audio(CLIP),
            encoder=encoder,
            options=DecodingOptions(max_new_tokens=tokens.MAX_AUDIO_DELAY + 8),
        )
        events = runtime.run(request)
        first = next((e for e in events if isinstance(e, AudioChunk)), None)
        ms = (time.perf_counter() - began) * 1000 if first is not None else None
        result = [e for e in events][-1]  # drain; the Result comes last
        run = {"first_audio_ms": ms} | {k: result.timings[k] for k in ("encode_ms", "prefill_ms")}
        if best is None or (ms or float("inf")) < (best["first_audio_ms"] or float("inf")):
            best = run
    return best


def ours(args: argparse.Namespace) -> dict:
    files = checkpoint.resolve(str(args.model), offline=True)
    result = {}
    for dtype_name in args.dtypes:
        runtime = Runtime(files, "cpu", checkpoint.DTYPES[dtype_name])
        configs = [
            (task, phase) for task in STEP_TASKS for phase in ("text_and_audio", "audio_only")
        ]
        rounds = {config: [] for config in configs}
        for _ in range(args.rounds):
            for task, phase in configs:
                text_running = phase == "text_and_audio"
                rounds[task, phase].append(time_steps(runtime, task, args.steps, text_running))
        per_task = {task.value: {} for task in STEP_TASKS}
        for (task, phase), runs in rounds.items():
            per_task[task.value][phase] = best_of_rounds(runs)
        log(f"ours {dtype_name} steps: {per_task}")
        per_task["first_audio"] = {
            f"{task.value}/{encoder}": first_audio(runtime, task, encoder, args.repeats)
            for task in STEP_TASKS
            for encoder in ENCODER_MODES
        }
        log(f"ours {dtype_name} first audio: {per_task['first_audio']}")
        result[dtype_name] = per_task
        del runtime
    result["peak_rss_MB"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result


def reference(args: argparse.Namespace) -> dict | None:
    if args.reference_dir is None:
        return None
    command = [
        str(args.reference_python),
        str(HERE / "reference.py"),
        "--reference-dir",
        str(args.reference_dir),
        "--model",
        str(args.model),
        "speed",
        "--steps",
        str(args.steps),
        "--repeats",
        str(args.repeats),
        "--rounds",
        str(args.rounds),
        "--clip",
        str(CLIP),
    ]
    log("running the reference: " + " ".join(command))
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def ratios(ours_result: dict, ref: dict | None) -> dict:
    if ref is None:
        return {}
    out = {}
    for dtype_name in ("bfloat16", "float32"):
        if dtype_name not in ours_result:
            continue
        for task in STEP_TASKS:
            ours_step = ours_result[dtype_name][task.value]["text_and_audio"]["step_ms_median"]
            out[f"{task.value} step, reference / ours {dtype_name}"] = (
                ref[task.value]["step_ms_median"] / ours_step
            )
        ours_first = ours_result[dtype_name]["first_audio"]
        ref_first = ref["server_stream"]["first_audio_ms"]
        for key, run in ours_first.items():
            if ref_first and run["first_audio_ms"]:
                out[f"first audio, reference server / ours {dtype_name} {key}"] = (
                    ref_first / run["first_audio_ms"]
                )
    return out


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--reference-dir", type=Path)
    parser.add_argument("--reference-python", type=Path, default=Path(sys.executable))
    parser.add_argument("--dtypes", nargs="+", default=["bfloat16", "float32"])
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=2, help="first-audio runs (best)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved step timing rounds")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "generate_speed-cpu.json")
    args = parser.parse_args()
    ours_result = ours(args)
    ref = reference(args)
    result = {
        "machine": {
            "platform": platform.platform(),
            "processor": cpu_name(),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "our_cpu_decode_kernels": cpu_decode.available(),
        },
        "model": str(args.model),
        "clip": CLIP.name,
        "ours": ours_result,
        "reference": ref,
        "ratios": ratios(ours_result, ref),
    }
    args.out.parent.mkdir(exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result["ratios"], indent=1))
    log(f"wrote {args.out}")


if __name__ == "__main__":
    main()

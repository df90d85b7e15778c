"""The whole decode step at the released shapes: our kernels (launched, and replayed from a
CUDA graph) against torch eager and torch.compile on the same GPU, plus end of turn to first
audio sample.

A step is what the engine runs per batch: embeddings, 24 blocks, final norm, the text and
audio heads with greedy selection, and the feedback of the picked ids into the next input.

- `eager`: the engine's torch path (realtime.decoding.generate.decode_step, then both heads'
argmax);
- `compiled`: the same arithmetic written with static shapes (attention over the whole cache
  under a mask, so nothing syncs), under torch.compile(mode="reduce-overhead"), which captures
  its own CUDA graphs: the strongest plain-PyTorch contender (gpt-fast's recipe);
- `kernels`: realtime.decoding.gpu.step.KernelStep.forward, every launch from the host;
- `graph`: the same step replayed from its CUDA graph, as the engine runs it;
- `graph+sampling`: the same with every row drawing top-k 40 / temperature 0.9 / top-p 0.95
  on the device (kernels/head_sample.py), as a sampling session's batch runs; its bytes are
  counted as the greedy step's (the sampling rows' logits written and reread come on top);
- `kernels[fused]`, `graph[fused]`, `graph+sampling[fused]`: the same three on our own
  products (kernels/gemv.py, KernelStep(products="fused")) instead of cuBLAS's;
- `decoder`, `decoder+ahead` (and `[fused]`): while the text runs, a step as the engine's loop
  sees it: KernelDecoder.decode (the graph's replay, the ids' copy to the host) and the host's
  stop rules for every request; without and with each step launched before the host has taken
  the last one's ids (realtime/decoding/gpu/decoder.py's run_ahead, the default on CUDA).

Each step's HBM traffic is counted (every weight once, the text head's 325 MB only while some
row needs text, each row's keys and values) and reported as GB/s and % of the GPU's peak.
Then end of turn to first audio sample: a 2 s utterance is prefilled, its answer decoded on
the kernel step (on either products, with steps run ahead and without) and vocoded until the
first PCM sample, with the encoder's share given apart.

    python -m benchmarks.decode_step [--model DIR] [--batches 1,8,64] [--context 256]

Without --model a random mini-omni directory is written to a temporary folder first. Writes
benchmarks/results/decode_step-<gpu>.json. `--dry-run` runs everything once at the tiny
preset on a CPU (kernels in Triton's interpreter) to check the script, and writes nothing.
"""

import argparse
import json
import os
import platform
import statistics
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
CLIP = Path(__file__).resolve().parents[1] / "tests" / "data" / "q_capital.wav"
# Peak HBM bandwidth by GPU name (the vendors' datasheets), for the % of peak column.
PEAK_GB_PER_S = {"H100 80GB HBM3": 3350, "H100 PCIe": 2000, "H200": 4800, "A100-SXM4-80GB": 2039}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a model directory (default: a random mini-omni one)")
    parser.add_argument("--batches", default="1,8,64", help="batch sizes (rows), comma-separated")
    parser.add_argument("--context", type=int, default=256, help="cached positions per row")
    parser.add_argument("--steps", type=int, default=200, help="timed steps per contender")
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    parser.add_argument("--dry-run", action="store_true", help="tiny preset on a CPU, no file")
    parser.add_argument("--out", type=Path, help="results file (default: results/...-<gpu>.json)")
    args = parser.parse_args(argv)
    if args.dry_run:
        os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported
        args.steps, args.batches, args.context = 1, "1,3", 16
    import torch

    if not args.dry_run and not torch.cuda.is_available():
        print("decode_step needs a CUDA GPU (or --dry-run to check the script on a CPU)")
        return 2
    from benchmarks import step_contenders as sc
    from realtime.decoding.options import STEP_PRODUCTS

    device = torch.device("cpu" if args.dry_run else "cuda")
    runtime = sc.load_runtime(args.model, device, "tiny" if args.dry_run else "mini-omni")
    batches = [int(b) for b in args.batches.split(",")]
    sc.compile_steps_ahead(runtime.lm, batches)  # on every CPU core, not at first launches
    settings = vars(args).copy()
    out = settings.pop("out")
    cases, first_audio = [], {}
    for batch in batches:
        for text_running in (True, False):
            case = sc.time_contenders(
                runtime.lm, batch, args.context, text_running, args.steps, not args.no_compile
            )
            cases.append(add_peak(case, device))
            print(format_case(case), flush=True)
            if not args.dry_run:  # after each case: a run cut short keeps what it measured
                write(out, cases, first_audio, settings)
    for products in STEP_PRODUCTS:
        for run_ahead in (False, True):
            name = products + ("+ahead" if run_ahead else "")
            first_audio[name] = result = sc.end_of_turn_to_first_audio(
                runtime, CLIP, 1 if args.dry_run else 5, products, run_ahead
            )
            print(
                f"end of turn -> first audio sample ({products} products"
                f"{', steps run ahead' if run_ahead else ''}): "
                f"{result['after_encode_ms']:.1f} ms after the encoder "
                f"({result['total_ms']:.1f} ms with it; {result['steps']} steps)"
            )
    if not args.dry_run:
        print(f"wrote {write(out, cases, first_audio, settings)}")
    return 0


def add_peak(case: dict, device) -> dict:
    import torch

    peak = None
    if device.type == "cuda":
        name = torch.cuda.get_device_name()
        peak = next((v for k, v in PEAK_GB_PER_S.items() if k in name), None)
    for result in case["contenders"].values():
        gbps = result.get("GB_per_s")
        result["pct_of_peak"] = None if peak is None or gbps is None else 100 * gbps / peak
    case["peak_GB_per_s"] = peak
    return case


def format_case(case: dict) -> str:
    cells = []
    for name, r in case["contenders"].items():
        if r.get("ms") is None:
            cells.append(f"{name} -")
            continue
        pct = "" if r.get("pct_of_peak") is None else f" {r['pct_of_peak']:.0f}%"
        cells.append(f"{name} {r['ms']:.3f} ms{pct}")
    phase = "text+audio" if case["text_running"] else "audio only"
    return f"batch {case['batch']:>3} {phase:<10} {case['bytes'] / 1e6:7.0f} MB  " + "  ".join(
        cells
    )


def write(out: Path | None, cases: list[dict], first_audio: dict[str, dict], args: dict) -> Path:
    """The results so far to `out` (default: results/decode_step-<gpu>.json) -> its path."""
    import torch
    import triton

    gpu = torch.cuda.get_device_name()
    out = out or RESULTS / f"decode_step-{gpu.replace(' ', '_')}.json"
    result = {
        "machine": {
            "gpu": gpu,
            "platform": platform.platform(),
            "python": sys.version.split()[0],
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "triton": triton.__version__,
        },
        "args": args,
        "steps": cases,
        "end_of_turn_to_first_audio": first_audio,
        "median_of": statistics.median.__name__,
    }
    RESULTS.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    return out


if __name__ == "__main__":
    sys.exit(main())

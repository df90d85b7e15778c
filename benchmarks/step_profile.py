"""Where a GPU decode step and an end of turn spend their time, kernel by kernel and phase by
phase: the guide for tuning benchmarks/decode_step.py's numbers.

- per kernel: the kernel step's launches at each batch size under torch.profiler (device time
  per launch, launches per step), the sum of device time against the CUDA graph's replay time
  (the difference is the gaps between kernels; with --pdl, kernels that overlap make it
  smaller, or negative);
- per phase: a 2 s utterance's prefill, first pick, each decode step and each vocoder call up
  to the first audio sample, synchronised one by one (so no step is launched ahead).

    python -m benchmarks.step_profile [--model DIR] [--batches 1,64] [--context 256]

Prints tables only (it writes no results file: the timed numbers are decode_step's).
`--dry-run` goes through all of it once at the tiny preset on a CPU (kernels in Triton's
interpreter, eager steps instead of graph replays, host ops instead of kernels; batches 1,3 at
16 positions unless given) to check the script before a GPU's time is spent on it.
"""

import argparse
import os
import sys
import time
from collections import defaultdict

import numpy as np

from realtime.decoding.options import (
    STEP_PRODUCTS,  # (no torch or triton: the dry run sets up those)
)

# What one profile takes: steps profiled, graph replays timed, end-of-turn runs (the last
# one printed); a dry run takes one of each.
FULL = {"steps": 20, "replays": 200, "attempts": 3}
DRY = {"steps": 1, "replays": 1, "attempts": 1}


def kernels_of_step(
    lm, batch: int, context: int, top: int, products: str, pdl: bool, counts: dict
) -> None:
    import torch

    from benchmarks import step_contenders as sc
    from realtime.decoding.gpu.step import StepGraphs

    cache, ids, positions, slots = sc.step_inputs(lm, batch, context)
    step = sc.kernel_step(lm, cache, ids, positions, slots, True, products, pdl)
    cuda = cache.k.is_cuda
    sync = sc.sync_for(cache.k.device)
    # on a CPU (a dry run) there are no graphs or kernels: eager steps and host ops stand in
    activity = torch.profiler.ProfilerActivity.CUDA if cuda else torch.profiler.ProfilerActivity.CPU
    device_type = torch.autograd.DeviceType.CUDA if cuda else torch.autograd.DeviceType.CPU
    steps = counts["steps"]
    with torch.inference_mode():
        if cuda:
            graphs = StepGraphs({batch: step})
            replay = sc.wall_ms(lambda: graphs.replay(batch, False), counts["replays"], sync)
        else:
            replay = sc.wall_ms(lambda: step.forward(batch), counts["replays"], sync)
        for _ in range(3):
            step.forward(batch)
        sync()
        with torch.profiler.profile(activities=[activity]) as prof:
            for _ in range(steps):
                step.forward(batch)
            sync()
    per_kernel = defaultdict(lambda: [0, 0.0])  # name -> [launches, device us]
    for event in prof.events():
        if event.device_type == device_type:
            entry = per_kernel[event.name[:70]]
            entry[0] += 1
            entry[1] += event.device_time if cuda else event.cpu_time  # microseconds
    launches = sum(n for n, _ in per_kernel.values()) / steps
    device_ms = sum(t for _, t in per_kernel.values()) / steps / 1e3
    words = ("launches", "kernels", "graph replay") if cuda else ("ops", "host ops", "step")
    launch, kernels, timed = words
    print(
        f"\nbatch {batch}, {products} products{' as dependents' if pdl else ''}: "
        f"{launches:.0f} {launch}/step, {device_ms:.3f} ms of {kernels}/step, "
        f"{timed} {replay:.3f} ms/step (gaps {replay - device_ms:.3f} ms)"
    )
    rows = sorted(per_kernel.items(), key=lambda kv: -kv[1][1])[:top]
    for name, (n, us) in rows:
        print(f"  {us / steps:8.1f} us/step  {n / steps:5.0f} x {us / n:6.2f} us  {name}")


def phases_of_end_of_turn(runtime, attempts: int) -> None:
    import torch

    from benchmarks import step_contenders as sc
    from benchmarks.decode_step import CLIP
    from realtime.audio.encoder import encode_chunked
    from realtime.audio.io import load_audio
    from realtime.audio.vocoder import VocoderStream
    from realtime.decoding.generate import PrefillInput, generate_tokens
    from realtime.decoding.options import DecodingOptions
    from realtime.model import tokens
    from realtime.model.prompts import Task, build_prompt

    audio = load_audio(CLIP)[: 2 * tokens.INPUT_SAMPLE_RATE_HZ]
    options = DecodingOptions(max_new_tokens=64)
    decoder = runtime.kernel_decoder()
    # Each phase ends in a sync, which would wait for a step launched ahead too and count it
    # in the phase before its own: the phases are timed one step at a time (decode_step times
    # the end of turn with steps run ahead).
    decoder.run_ahead = False
    marks: list[tuple[str, float]] = []
    sync = sc.sync_for(runtime.device)

    def mark(label: str) -> None:
        sync()
        marks.append((label, time.perf_counter()))

    for attempt in range(attempts):
        marks.clear()

        with torch.inference_mode():
            mark("start")
            features = encode_chunked(runtime.whisper, audio)
            mark("encode")
            prompt = build_prompt(Task.A2A, audio_frames=features.shape[0])
            inp = PrefillInput(prompt, runtime.lm.adapt(features))
            mark("adapt")
            stream = VocoderStream(device=runtime.device)
            steps = generate_tokens(runtime.lm, runtime.cache, inp, Task.A2A, options, decoder)
            for gen, out in steps:
                mark(f"step {gen.steps}" if gen.steps > 1 else "prefill+pick")
                if out.frame is not None:
                    stream.push(torch.tensor([out.frame]))
                    got = runtime.vocoder.step([stream])[0].size
                    mark(f"vocoder ({got} samples)")
                    if got:
                        break
            steps.close()
        if attempt == attempts - 1:
            print(f"\nend of turn, prompt {prompt.length} positions:")
            for (label, t), (_, before) in zip(marks[1:], marks, strict=False):
                print(f"  {1e3 * (t - before):8.2f} ms  {label}")
            pairs = zip(marks[1:], marks, strict=False)
            decode = [t - b for (label, t), (_, b) in pairs if label.startswith("step")]
            print(f"  median decode step {1e3 * np.median(decode):.2f} ms")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a model directory (default: a random mini-omni one)")
    parser.add_argument("--batches", help="batch sizes, comma-separated (default: 1,64)")
    parser.add_argument("--context", type=int, help="cached positions per row (default: 256)")
    parser.add_argument("--top", type=int, default=14, help="kernels listed per batch")
    parser.add_argument("--products", default=",".join(STEP_PRODUCTS), help="the steps' products")
    parser.add_argument("--pdl", action="store_true", help="launch as programmatic dependents")
    parser.add_argument("--dry-run", action="store_true", help="tiny preset on a CPU, once")
    args = parser.parse_args(argv)
    products = args.products.split(",")
    if unknown := set(products) - set(STEP_PRODUCTS):
        parser.error(f"unknown products {sorted(unknown)}; the steps have {list(STEP_PRODUCTS)}")
    counts = DRY if args.dry_run else FULL
    if args.dry_run:
        os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported
    # a dry run's defaults keep the interpreter's steps few and short
    args.batches = args.batches or ("1,3" if args.dry_run else "1,64")
    args.context = args.context or (16 if args.dry_run else 256)
    import torch

    if not args.dry_run and not torch.cuda.is_available():
        print("step_profile needs a CUDA GPU (or --dry-run to check the script on a CPU)")
        return 2
    from benchmarks import step_contenders as sc

    device = torch.device("cpu" if args.dry_run else "cuda")
    runtime = sc.load_runtime(args.model, device, "tiny" if args.dry_run else "mini-omni")
    batches = [int(b) for b in args.batches.split(",")]
    sc.compile_steps_ahead(runtime.lm, batches, [(p, args.pdl) for p in products])
    for kind in products:
        for batch in batches:
            kernels_of_step(runtime.lm, batch, args.context, args.top, kind, args.pdl, counts)
    phases_of_end_of_turn(runtime, counts["attempts"])
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A model directory with random weights, for benchmarks run where no model is (a GPU lent for a
few minutes): `realtime init-random` into a temporary directory; and the options by which a
benchmark takes a model directory or such random weights."""

import argparse
import tempfile
import time
from pathlib import Path

from realtime.model import checkpoint
from realtime.model.config import PRESETS


def temporary_model(preset: str) -> str:
    from realtime.model.init_random import write_random_model

    directory = tempfile.mkdtemp(prefix=f"realtime-{preset}-")
    began = time.perf_counter()
    write_random_model(Path(directory), PRESETS[preset], seed=0, log=lambda _: None)
    print(f"wrote a random {preset} model to {directory} in {time.perf_counter() - began:.0f} s")
    return directory


def add_model_arguments(parser: argparse.ArgumentParser, steps: int) -> None:
    """A benchmark's model options: a directory, or random weights of a preset's shapes."""
    parser.add_argument("--model", type=Path, help="a model directory (default: random weights)")
    parser.add_argument("--preset", default="mini-omni", help="the random model's shapes")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="bfloat16", choices=sorted(checkpoint.DTYPES))
    parser.add_argument("--steps", type=int, default=steps, help="decode steps per answer")


def load_runtime(args: argparse.Namespace):
    """The Runtime those options name -> (runtime, a short name for files, the model as a
    results file describes it)."""
    from realtime.decoding.runtime import Runtime

    model = str(args.model) if args.model else temporary_model(args.preset)
    files = checkpoint.resolve(model, offline=True)
    runtime = Runtime(files, args.device, checkpoint.DTYPES[args.dtype])
    name = args.model.name if args.model else args.preset
    return runtime, name, model if args.model else f"random {args.preset} (seed 0)"

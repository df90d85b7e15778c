"""What the Triton kernel benchmarks share: the GPU check, timing, the table and the JSON file.

Each op is timed three ways: our kernel, its torch reference (eager) and the reference under
torch.compile. Two clocks: `launch` is triton.testing.do_bench (eager launches, L2 flushed
before each run: what an uncaptured decode loop sees, host launch cost included when it is the
longer part) and `graph` is do_bench_cudagraph (device time of a captured launch, what a
CUDA-graphed decode step sees; None for a function that syncs with the host, e.g. the attention
reference, which reads the longest length back).
"""

import json
import os
import platform
from collections.abc import Callable
from pathlib import Path

import torch

from realtime.model.config import PRESETS

RESULTS = Path(__file__).resolve().parents[1] / "results"
RELEASED = PRESETS["mini-omni"].model  # the shapes every benchmark runs at
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
DECODE_BATCHES = (1, 8, 32)


def parse_args(doc: str, **extra) -> dict:
    """--dtype (bf16 or fp32) and the benchmark's own options (name=(type, default); a bool
    is a flag)."""
    import argparse

    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    for name, (kind, default) in extra.items():
        flag = f"--{name.replace('_', '-')}"
        if kind is bool:
            parser.add_argument(flag, action="store_true")
        else:
            parser.add_argument(flag, type=kind, default=default)
    return vars(parser.parse_args())


def require_gpu(name: str) -> torch.device:
    """Refuse to run (SystemExit with the reason) anywhere but on a CUDA GPU."""
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        raise SystemExit(f"{name}: TRITON_INTERPRET=1 is set; timing the interpreter means nothing")
    if not torch.cuda.is_available():
        raise SystemExit(
            f"{name} needs a CUDA GPU and this machine has none visible to torch "
            f"{torch.__version__}. The kernels' correctness tests run anywhere (in Triton's "
            "interpreter): pytest tests/kernels"
        )
    return torch.device("cuda")


def time_us(fn: Callable[[], object], capturable: bool = True) -> dict[str, float | None]:
    """Median microseconds of fn, launched eagerly and replayed from a CUDA graph (None when
    fn syncs with the host and so cannot be captured)."""
    import triton.testing

    launch = triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median") * 1e3
    graph = None
    if capturable:
        graph = triton.testing.do_bench_cudagraph(fn, rep=200, return_mode="median") * 1e3
    return {"launch_us": launch, "graph_us": graph}


def implementations(kernel: Callable, ref: Callable) -> dict[str, Callable]:
    """The three contenders: our launcher, its torch reference, the reference compiled (no
    internal CUDA graphs: `graph` captures our own)."""
    return {"triton": kernel, "torch": ref, "compiled": torch.compile(ref, dynamic=False)}


def compare(
    case: str, nbytes: int, impls: dict[str, Callable], *args, host_sync: tuple[str, ...] = ()
) -> dict:
    """Time impls[name](*args) for every name (those in host_sync not from a CUDA graph); print
    a line; GB/s = nbytes / time."""
    row = {}
    for name, fn in impls.items():
        times = time_us(lambda fn=fn: fn(*args), capturable=name not in host_sync)
        gbps = {k.replace("_us", "_GB_per_s"): _gbps(nbytes, t) for k, t in times.items()}
        row[name] = {**times, **gbps}
    print(f"{case:<24}" + "  ".join(_cell(name, r) for name, r in row.items()))
    return {"case": case, "bytes": nbytes, **row}


def write_results(name: str, cases: list[dict], args: dict) -> None:
    gpu = torch.cuda.get_device_name()
    result = {
        "machine": {
            "gpu": gpu,
            "platform": platform.platform(),
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "triton": __import__("triton").__version__,
        },
        "args": args,
        "cases": cases,
    }
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"triton_{name}-{gpu.replace(' ', '_')}.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")


def _gbps(nbytes: int, us: float | None) -> float | None:
    return None if us is None else nbytes / us / 1e3


def _cell(name: str, r: dict) -> str:
    graph = "-" if r["graph_us"] is None else f"{r['graph_us']:.1f}"
    gbps = r["graph_GB_per_s"] or r["launch_GB_per_s"]
    return f"{name} {r['launch_us']:.1f}/{graph} us {gbps:.0f} GB/s"


def print_header() -> None:
    print(f"{torch.cuda.get_device_name()}; each: launch/graph microseconds, best GB/s")

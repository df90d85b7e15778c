"""GB/s of weight streamed by our CPU bf16 GEMV against torch's bf16 linear, at the released
model's shapes and for 1..8 activation rows, cycling through more weight than the caches hold
(as a decode step does); on a CPU with AMX also `packed`, oneDNN on weights packed once
(cpu_decode.pack); `routed` is realtime.model.lm.linear, which picks one of them by the rows and
the CPU (kernels/cpu_decode.usable, model.PACKED_MIN_ROWS). Then a 2 s prompt's 104 rows through
the blocks' products (a prefill): torch's bf16 against an upcast to fp32, packed and routed. Writes
benchmarks/results/cpu_gemv-<machine>[-native-bf16].json. (The GEMV of kernels/cpu_decode.py;
its one-row attention is timed inside generate_speed's decode step.)

    python -m benchmarks.kernels.cpu_decode [--repeats 6]
"""

import argparse
import json
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmarks.machine import cpu_name
from kernels import cpu_decode
from realtime.model.lm import linear as routed

PREFILL_ROWS = 104  # a 2 s utterance's prompt

RESULTS = Path(__file__).resolve().parents[1] / "results"
# One decode step's products at the released shapes: 24 x (qkv, attn proj, fc_1+fc_2, mlp
# proj), then the whole head.
LAYER_SHAPES = [(1152, 896), (896, 896), (9728, 896), (896, 4864)]
HEAD_SHAPE = (181120, 896)


def step_weights(layers: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    weights = [
        torch.randn(shape, generator=gen).bfloat16()
        for _ in range(layers)
        for shape in LAYER_SHAPES
    ]
    return weights + [torch.randn(HEAD_SHAPE, generator=gen).bfloat16()]


def time_step(weights, rows: int, linear) -> float:
    inputs = {k: torch.randn(rows, k).bfloat16() for k in {w.shape[1] for w in weights}}
    began = time.perf_counter()
    for w in weights:
        linear(inputs[w.shape[1]], w)
    return time.perf_counter() - began


def upcast(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return F.linear(x.float(), w.float()).to(x.dtype)


def best_of(repeats: int, weights, rows: int, contenders: dict) -> dict:
    """Each contender's best time over `repeats` interleaved rounds (robust to a noisy
    neighbour) -> {name: {ms, GB_per_s}}."""
    gigabytes = sum(w.numel() * w.element_size() for w in weights) / 1e9
    best = dict.fromkeys(contenders, float("inf"))
    for _ in range(repeats):
        for name, linear in contenders.items():
            best[name] = min(best[name], time_step(weights, rows, linear))
    results = {name: {"ms": t * 1000, "GB_per_s": gigabytes / t} for name, t in best.items()}
    print(
        f"rows {rows}: "
        + ", ".join(f"{n} {r['ms']:.1f} ms {r['GB_per_s']:.1f} GB/s" for n, r in results.items())
    )
    return results


def on_avx2(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Our GEMV on its AVX2 path, on a CPU where it would take the AVX-512 BF16 one."""
    cpu_decode.use_dpbf16(False)
    try:
        return cpu_decode.gemv_bf16(x, w)
    finally:
        cpu_decode.use_dpbf16(True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=6)
    args = parser.parse_args()
    if not cpu_decode.available():
        raise SystemExit("the CPU GEMV kernel is not available here (no AVX2/FMA or compiler)")
    weights = step_weights(args.layers)
    gigabytes = sum(w.numel() * w.element_size() for w in weights) / 1e9
    native = cpu_decode.native_bf16()
    dpbf16 = cpu_decode.dpbf16()
    print(f"{gigabytes:.2f} GB of weights; native bf16: {native}; AVX-512 BF16 GEMV: {dpbf16}")
    packs = {}
    if cpu_decode.packing():
        print("packing the weights for oneDNN")
        packs = {w.data_ptr(): cpu_decode.pack(w) for w in weights}

    def packed(x, w):
        return cpu_decode.packed_linear(x, packs[w.data_ptr()])

    def routed_here(x, w):  # with the packed weights where the model would have them
        return routed(x, w, packed=packs.get(w.data_ptr()))

    decode = {"ours": cpu_decode.gemv_bf16, "torch": F.linear, "routed": routed_here}
    if dpbf16:
        decode["ours (avx2)"] = on_avx2
    if packs:
        decode["packed"] = packed
    rows_results = {rows: best_of(args.repeats, weights, rows, decode) for rows in (1, 2, 4, 8)}
    prefill = {"torch": F.linear, "fp32": upcast, "routed": routed_here}
    if packs:
        prefill["packed"] = packed
    blocks = weights[:-1]  # a prefill runs the head for its last position only
    prefill_results = best_of(max(1, args.repeats // 2), blocks, PREFILL_ROWS, prefill)
    result = {
        "machine": {
            "platform": platform.platform(),
            "processor": cpu_name(),
            "cpus": torch.get_num_threads(),
            "torch": torch.__version__,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "native_bf16": native,
            "avx512_bf16_gemv": dpbf16,
            "packed_weights": bool(packs),
        },
        "weights_GB": gigabytes,
        "rows": rows_results,
        "prefill": {"rows": PREFILL_ROWS, "layers": args.layers, **prefill_results},
    }
    RESULTS.mkdir(exist_ok=True)
    name = f"cpu_gemv-{platform.machine()}-{torch.get_num_threads()}cpu"
    out = RESULTS / f"{name}{'-native-bf16' if native else ''}.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

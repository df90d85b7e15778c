"""GB/s of kernels/gemv.py at the released block's four products, against what the cuBLAS step
runs for the same work (its torch reference: add_rmsnorm_ref / F.linear / swiglu_ref), that
reference under torch.compile, and cuBLAS's product alone (F.linear: no norm, no SwiGLU, the
whole product in one launch), for decode batches. Writes
benchmarks/results/triton_gemv-<gpu>.json.

    python -m benchmarks.kernels.gemv [--dtype bf16] [--sweep] [--batches 1,4,8,32,64]

The products, as realtime/decoding/gpu/step.py's fused step launches them:
- qkv: norm_1(x + residual) then W_qkv (1152 x 896) with its bias, split over K;
- attn_proj: W_o (896 x 896) over the attention's output, split over K;
- attn_proj_splits (up to PROLOGUE_ROWS rows): the same over the attention's splits over the
  keys (16 for the released 2048-position cache; at 256 positions 4 of them hold 64 keys
  each), combined as they are loaded: its time less attn_proj's is what the fold costs,
  against the attention's second launch (decode_attention's reduce), which it saves;
- fc_12: norm_2(the attention projection's slices + residual) then fc_1|fc_2 (9728 x 896)
  and SwiGLU;
- mlp_proj: W_down (896 x 4864) over SwiGLU's output, split over K.
Bytes are the weight's plus the activations read and written once.

--sweep also times each case (from its CUDA graph) over launch shapes (BLOCK_N, BLOCK_K, warps,
pipeline stages, tl.dot or FMAs; for the split products also the number of slices; the
default shape also with W's lines asked of L2 before the loop, as with PDL), all of them
compiled first on a thread per core, and prints the five fastest: what to set
kernels/gemv.py's defaults (Tiles, FMA_MAX_ROWS, PROGRAMS_PER_SM) from. Each result keeps the
stages it asked for (num_stages) and those it ran with (stages_run: fewer on a GPU whose shared
memory cannot hold them); the printout shows the latter.
"""

import contextlib
import itertools

import torch
import torch.nn.functional as F

from benchmarks.kernels import common

SWEEP_TILES = dict(
    block_n=(16, 32), block_k=(64, 128), num_warps=(4, 8), num_stages=(2, 4), dot=(False, True)
)
SWEEP_SPLITS = (1, 2, 3, 5, 8, 12)  # with the default tiles
BATCHES = "1,4,8,32,64"


def cases(device, dtype, rows: int) -> dict[str, tuple[dict, int]]:
    """name -> (gemv's keyword arguments, bytes), with random inputs at the released shapes."""
    from kernels.gemv import Norm, split_for
    from kernels.splits import SplitSums
    from realtime.decoding.gpu.step import PROLOGUE_ROWS

    cfg = common.RELEASED
    C, hidden, eps = cfg.n_embd, cfg.intermediate_size, cfg.norm_eps
    width = (cfg.n_head + 2 * cfg.n_query_groups) * cfg.head_size

    def randn(*shape, scale=1.0):
        return scale * torch.randn(shape, device=device, dtype=dtype)

    def norm():
        return Norm(1 + 0.1 * randn(C), randn(rows, C), eps)

    size = torch.finfo(dtype).bits // 8
    split_qkv = split_for(C, width, device)
    split_attn, split_mlp = split_for(C, C, device), split_for(hidden, C, device)
    slices = SplitSums(torch.randn(split_attn, rows, C, device=device), dtype)
    by_case = {
        "qkv": (
            dict(x=randn(rows, C), weight=randn(width, C, scale=C**-0.5), bias=randn(width),
                 norm=norm(), split_k=split_qkv),
            (width * C + 3 * rows * C) * size + split_qkv * rows * width * 4,
        ),
        "attn_proj": (
            dict(x=randn(rows, C), weight=randn(C, C, scale=C**-0.5), split_k=split_attn),
            (C * C + rows * C) * size + split_attn * rows * C * 4,
        ),
        "fc_12": (
            dict(x=slices, weight=randn(2 * hidden, C, scale=C**-0.5), norm=norm(), swiglu=True),
            (2 * hidden * C + 2 * rows * C + rows * hidden) * size + split_attn * rows * C * 4,
        ),
        "mlp_proj": (
            dict(x=randn(rows, hidden), weight=randn(C, hidden, scale=hidden**-0.5),
                 split_k=split_mlp),
            (C * hidden + rows * hidden) * size + split_mlp * rows * C * 4,
        ),
    }  # fmt: skip
    if rows <= PROLOGUE_ROWS:  # (for more the step combines them in a launch of their own)
        attention, nbytes = attention_splits(device, dtype, rows)
        by_case["attn_proj_splits"] = (
            dict(x=attention, weight=randn(C, C, scale=C**-0.5), split_k=split_attn),
            C * C * size + nbytes + split_attn * rows * C * 4,
        )
    return by_case


def attention_splits(device, dtype, rows: int, used: int = 4):
    """(an attention's SoftmaxSplits over the released cache, as the step splits it for `rows`
    rows, with keys in the first `used` splits; the bytes of it that are read)."""
    from kernels.decode_attention import split_len_for
    from kernels.splits import SoftmaxSplits

    cfg = common.RELEASED
    splits = cfg.block_size // split_len_for(rows, cfg.n_query_groups, cfg.block_size, device)
    lse = torch.full((rows, cfg.n_head, splits), float("-inf"), device=device)
    lse[:, :, :used] = torch.randn(rows, cfg.n_head, used, device=device)
    out = torch.randn(rows, cfg.n_head, splits, cfg.head_size, device=device)
    return SoftmaxSplits(out, lse, dtype), (used * rows * cfg.n_embd + lse.numel()) * 4


def contenders(kwargs: dict) -> dict:
    from kernels.gemv import gemv, gemv_ref
    from kernels.splits import SoftmaxSplits, SplitSums

    x = kwargs["x"]
    x = x.total() if isinstance(x, SplitSums | SoftmaxSplits) else x
    weight = kwargs["weight"]
    ref = torch.compile(lambda: gemv_ref(**kwargs), dynamic=False)
    return {
        "triton": lambda: gemv(**kwargs),
        "torch": lambda: gemv_ref(**kwargs),
        "compiled": ref,
        "cublas_product": lambda: F.linear(x, weight),
    }


def sweep(name: str, kwargs: dict, nbytes: int) -> list[dict]:
    """Every launch shape for one case, fastest first."""
    import triton.testing

    from kernels.gemv import Tiles, gemv, launch_shape
    from kernels.triton_support import compile_ahead

    split = kwargs.get("split_k")
    shapes = [dict(zip(SWEEP_TILES, values, strict=True))
              for values in itertools.product(*SWEEP_TILES.values())]  # fmt: skip
    shapes = [(Tiles(**shape), split) for shape in shapes]
    if split is not None:
        shapes += [(Tiles(), s) for s in SWEEP_SPLITS if s != split]
    # the default tiles asking L2 for all their lines of W first, as they do when launched as
    # programmatic dependents (these launches are not): more bytes in flight from the start
    shapes += [(Tiles(prefetch=True), split)]
    shapes = [(tiles, split_k, dict(kwargs, tiles=tiles) | ({} if split_k is None else
               {"split_k": split_k})) for tiles, split_k in shapes]  # fmt: skip

    def compile_all():  # one at a time, compiling would be most of a sweep's minutes
        for *_, args in shapes:
            with contextlib.suppress(Exception):  # reported where it is timed, below
                gemv(**args)

    compile_ahead(compile_all, ignore_errors=True)  # on a thread per core
    results = []
    for tiles, split_k, args in shapes:
        try:
            us = 1e3 * triton.testing.do_bench_cudagraph(lambda args=args: gemv(**args), rep=20)
        except Exception as exc:  # a shape the compiler refuses (e.g. out of shared memory)
            print(f"  {name} {tiles} split {split_k}: {type(exc).__name__}")
            continue
        # the stages it ran with: fewer than asked where they would not fit in shared memory
        ran = launch_shape(args["x"], args["weight"], args.get("swiglu", False), tiles)[2]
        results.append({**tiles.__dict__, "stages_run": ran, "split_k": split_k,
                        "graph_us": us, "GB_per_s": nbytes / us / 1e3})  # fmt: skip
    results.sort(key=lambda r: r["graph_us"])
    for r in results[:5]:
        print(f"  {name:>10} {r['graph_us']:7.2f} us {r['GB_per_s']:6.0f} GB/s  "
              f"n{r['block_n']} k{r['block_k']} w{r['num_warps']} s{r['stages_run']} "
              f"dot {r['dot']} prefetch {r['prefetch']} "
              f"split {r['split_k']}")  # fmt: skip
    return results


def main() -> None:
    args = common.parse_args(__doc__, sweep=(bool, False), batches=(str, BATCHES))
    device = common.require_gpu("benchmarks.kernels.gemv")
    from kernels.gemv import gemv, gemv_ref
    from kernels.splits import SplitSums

    dtype = common.DTYPES[args["dtype"]]
    batches = [int(b) for b in args["batches"].split(",")]
    # a sweep of some batches has a file of its own, rewritten after each batch (a sweep takes
    # minutes: what finished survives a time limit)
    results_name = f"gemv-sweep-rows{'_'.join(map(str, batches))}" if args["sweep"] else "gemv"
    common.print_header()
    results = []
    for rows in batches:
        torch.manual_seed(rows)
        for name, (kwargs, nbytes) in cases(device, dtype, rows).items():
            got, want = gemv(**kwargs)[0], gemv_ref(**kwargs)[0]
            if isinstance(got, SplitSums):
                got, want = got.total(), want.total()
            torch.testing.assert_close(got, want, rtol=2**-6, atol=2e-2)
            row = common.compare(f"{name} rows={rows}", nbytes, contenders(kwargs))
            if args["sweep"]:
                row["sweep"] = sweep(name, kwargs, nbytes)
            results.append(row)
        common.write_results(results_name, results, args)


if __name__ == "__main__":
    main()

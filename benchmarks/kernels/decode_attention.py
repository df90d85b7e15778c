"""GB/s of kernels/decode_attention.py (split-KV GQA decode) against its torch reference (the
model's decode attention) and torch.compile, at the released head layout in a 2048-position
cache: every row at the same length, for several lengths and batches. GB/s counts the keys and
values each row reads. Then the same for decode_attention_qkv (from the qkv product: RoPE and
the cache write inside), also against its two steps as launches of their own ("unfused":
qkv_rope_cache, then decode_attention). Keys per split as the decode step takes them for each
batch (split_len_for), or --split-len for all. --sweep also times decode_attention_qkv at
each of SWEEP_SPLIT_LENS (from its CUDA graph) for every case, against what split_len_for
picks: what to set its rule from. Writes benchmarks/results/triton_decode_attention-<gpu>.json.

    python -m benchmarks.kernels.decode_attention [--dtype bf16] [--split-len 128]
        [--batches 1,8,32] [--sweep]
"""

import torch

from benchmarks.kernels import common
from realtime.model.lm import rope_cache

SYNCING = ("torch", "compiled")
SWEEP_SPLIT_LENS = (128, 256, 512, 1024, 2048)


def split_len(args: dict, rows: int, k_cache: torch.Tensor) -> int:
    """--split-len, or what the decode step takes for `rows` rows over this cache."""
    from kernels.decode_attention import split_len_for

    _, _, groups, max_seq, _ = k_cache.shape
    return args["split_len"] or split_len_for(rows, groups, max_seq, k_cache.device)


def main() -> None:
    args = common.parse_args(
        __doc__, split_len=(int, 0), batches=(str, "1,8,32"), sweep=(bool, False)
    )
    device = common.require_gpu("benchmarks.kernels.decode_attention")
    from kernels.decode_attention import decode_attention, decode_attention_ref

    cfg, dtype = common.RELEASED, common.DTYPES[args["dtype"]]
    hs, groups, max_seq = cfg.head_size, cfg.n_query_groups, cfg.block_size

    def kernel(q, k, v, layer, slots, lengths):
        split = split_len(args, q.shape[0], k)
        return decode_attention(q, k, v, layer, slots, lengths, split_len=split)

    impls = common.implementations(kernel, decode_attention_ref)
    common.print_header()
    cases = []
    for B in batches(args):
        k, v = (torch.randn(1, B, groups, max_seq, hs, device=device, dtype=dtype) for _ in "kv")
        q = torch.randn(B, cfg.n_head, hs, device=device, dtype=dtype)
        slots = torch.randperm(B, device=device)
        for length in (256, 1024, max_seq):
            lengths = torch.full((B,), length, device=device)
            inputs = (q, k, v, 0, slots, lengths)
            want = decode_attention_ref(q.float(), k.float(), v.float(), 0, slots, lengths)
            torch.testing.assert_close(kernel(*inputs), want.to(dtype), rtol=2**-7, atol=1e-2)
            nbytes = (2 * B * groups * length * hs + 2 * B * cfg.n_head * hs) * q.element_size()
            label = f"B={B} length={length}"
            # the reference reads int(lengths.max()) back: no CUDA graph for it
            cases.append(common.compare(label, nbytes, impls, *inputs, host_sync=SYNCING))
    cases += qkv_cases(args, device, dtype)
    common.write_results("decode_attention", cases, args)


def qkv_cases(args: dict, device, dtype) -> list[dict]:
    from kernels.decode_attention import decode_attention, decode_attention_qkv
    from kernels.decode_attention import decode_attention_qkv_ref as ref
    from kernels.qkv_rope_cache import qkv_rope_cache

    cfg = common.RELEASED
    hs, groups, max_seq = cfg.head_size, cfg.n_query_groups, cfg.block_size
    cos, sin = (t.to(device) for t in rope_cache(max_seq, hs, cfg.rope_base))

    def fused(qkv, k, v, slots, positions):
        split = split_len(args, qkv.shape[0], k)
        return decode_attention_qkv(qkv, cos, sin, k, v, 0, slots, positions, split_len=split)

    def unfused(qkv, k, v, slots, positions):
        q = qkv_rope_cache(qkv[:, None], cos, sin, positions[:, None], slots, k, v, 0)
        split = split_len(args, qkv.shape[0], k)
        return decode_attention(q[:, :, 0], k, v, 0, slots, positions + 1, split_len=split)

    def torch_ref(qkv, k, v, slots, positions):
        return ref(qkv, cos, sin, k, v, 0, slots, positions)

    impls = common.implementations(fused, torch_ref)
    impls = {"triton": impls["triton"], "unfused": unfused, **impls}
    cases = []
    for B in batches(args):
        k, v = (torch.randn(1, B, groups, max_seq, hs, device=device, dtype=dtype) for _ in "kv")
        qkv = torch.randn(B, (cfg.n_head + 2 * groups) * hs, device=device, dtype=dtype)
        slots = torch.randperm(B, device=device)
        for length in (256, 1024, max_seq):
            positions = torch.full((B,), length - 1, device=device)  # the new key's
            inputs = (qkv, k, v, slots, positions)
            want = torch_ref(qkv, k.clone(), v.clone(), slots, positions)
            torch.testing.assert_close(fused(*inputs), want, rtol=2**-7, atol=1e-2)
            nbytes = 2 * B * groups * length * hs + B * qkv.shape[1] + B * cfg.n_head * hs
            nbytes *= qkv.element_size()
            label = f"qkv B={B} length={length}"
            cases.append(common.compare(label, nbytes, impls, *inputs, host_sync=SYNCING))
            if args["sweep"]:
                cases[-1]["split_sweep"] = sweep_split_lens(label, inputs, cos, sin)
    return cases


def batches(args: dict) -> list[int]:
    return [int(b) for b in args["batches"].split(",")]


def sweep_split_lens(label: str, inputs: tuple, cos, sin) -> dict[int, float]:
    """decode_attention_qkv's graph microseconds at each of SWEEP_SPLIT_LENS (those under the
    cache's length), printed with the one split_len_for picks marked."""
    import triton.testing

    from kernels.decode_attention import decode_attention_qkv, split_len_for

    qkv, k, v, slots, positions = inputs
    _, _, groups, max_seq, _ = k.shape
    picked = split_len_for(qkv.shape[0], groups, max_seq, k.device)
    times = {}
    for split in (s for s in SWEEP_SPLIT_LENS if s <= max_seq):

        def run(split=split):
            return decode_attention_qkv(qkv, cos, sin, k, v, 0, slots, positions, split_len=split)

        times[split] = 1e3 * triton.testing.do_bench_cudagraph(run, rep=50, return_mode="median")
    cells = "  ".join(f"{s}{'*' if s == picked else ''} {us:.1f}" for s, us in times.items())
    print(f"  {label} split_len (*: split_len_for) -> graph us: {cells}")
    return times


if __name__ == "__main__":
    main()

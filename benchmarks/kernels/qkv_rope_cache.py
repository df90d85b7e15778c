"""GB/s of kernels/qkv_rope_cache.py (qkv split, RoPE, cache write) against its torch reference
and torch.compile, at the released head layout (2 groups of 7 queries + k + v, head 64) into a
2048-position cache, rows at random positions and slots. Writes
benchmarks/results/triton_qkv_rope_cache-<gpu>.json.

    python -m benchmarks.kernels.qkv_rope_cache [--dtype bf16]
"""

import torch

from benchmarks.kernels import common
from realtime.model.lm import rope_cache


def main() -> None:
    args = common.parse_args(__doc__)
    device = common.require_gpu("benchmarks.kernels.qkv_rope_cache")
    from kernels.qkv_rope_cache import qkv_rope_cache, qkv_rope_cache_ref

    cfg, dtype = common.RELEASED, common.DTYPES[args["dtype"]]
    hs, groups, max_seq = cfg.head_size, cfg.n_query_groups, cfg.block_size
    width = (cfg.n_head + 2 * groups) * hs
    cos, sin = (t.to(device) for t in rope_cache(max_seq, hs, cfg.rope_base))
    impls = common.implementations(qkv_rope_cache, qkv_rope_cache_ref)
    common.print_header()
    cases = []
    for B, T in [*((b, 1) for b in common.DECODE_BATCHES), (1, 256)]:
        qkv = torch.randn(B, T, width, device=device, dtype=dtype)
        start = torch.randint(0, max_seq - T, (B, 1), device=device)
        positions = start + torch.arange(T, device=device)  # (B, T)
        slots = torch.randperm(B, device=device)
        k, v = (torch.zeros(1, B, groups, max_seq, hs, device=device, dtype=dtype) for _ in "kv")
        k_ref, v_ref = k.clone(), v.clone()
        q = qkv_rope_cache(qkv, cos, sin, positions, slots, k, v, 0)
        q_ref = qkv_rope_cache_ref(qkv, cos, sin, positions, slots, k_ref, v_ref, 0)
        for got, want in ((q, q_ref), (k, k_ref), (v, v_ref)):
            torch.testing.assert_close(got, want, rtol=2**-7, atol=1e-3)
        # qkv in; cos and sin rows (fp32) in; q, k and v out
        nbytes = B * T * ((width + cfg.n_head * hs + 2 * groups * hs) * qkv.element_size())
        nbytes += B * T * 2 * hs * cos.element_size()
        inputs = (qkv, cos, sin, positions, slots, k, v, 0)
        cases.append(common.compare(f"B={B} T={T}", nbytes, impls, *inputs))
    common.write_results("qkv_rope_cache", cases, args)


if __name__ == "__main__":
    main()

"""GB/s of kernels/head_sample.py (the tied head with top-k 40 / temperature 0.9 / top-p 0.95
drawn on the device for every row) against its torch reference (full logits, then the host's
realtime.sampling draw per row, which syncs) and our greedy head_argmax on the same inputs
(the price of sampling over greedy), with the released table (181120 x 896). GB/s counts the
table once per call. Writes benchmarks/results/triton_head_sample-<gpu>.json.

    python -m benchmarks.kernels.head_sample [--dtype bf16] [--block-v 64]
"""

import torch

from benchmarks.kernels import common
from realtime import tokens


def main() -> None:
    args = common.parse_args(__doc__, block_v=(int, 64))
    device = common.require_gpu("benchmarks.kernels.head_sample")
    from kernels.head_argmax import head_argmax
    from kernels.head_sample import SamplingRows, head_sample, head_sample_ref

    dtype, C = common.DTYPES[args["dtype"]], common.RELEASED.n_embd
    weight = torch.randn(tokens.VOCAB_PADDED, C, device=device, dtype=dtype) * C**-0.5
    common.print_header()
    cases = []
    for B in (1, 2, *common.DECODE_BATCHES[1:]):
        h = torch.randn(B, C, device=device, dtype=dtype)
        skip = torch.zeros(B, dtype=torch.bool, device=device)
        rows = SamplingRows(
            sampling=torch.ones(B, dtype=torch.bool, device=device),
            top_k=torch.full((B,), 40, device=device),
            temperature=torch.full((B,), 0.9, device=device),
            top_p=torch.full((B,), 0.95, device=device),
            seeds=torch.arange(B, device=device),
            positions=torch.full((B,), 300, device=device),
        )
        logits = torch.empty(B, tokens.VOCAB_PADDED, device=device, dtype=dtype)

        def kernel(h, weight, skip, logits=logits, rows=rows):
            return head_sample(h, weight, skip, rows, logits, block_v=args["block_v"])

        def greedy(h, weight, skip):
            return head_argmax(h, weight, skip, block_v=args["block_v"])

        def ref(h, weight, skip, rows=rows):
            return head_sample_ref(h, weight, skip, rows)

        same = (kernel(h, weight, skip) == ref(h, weight, skip)).float().mean().item()
        assert same > 0.9, f"only {same:.0%} of the draws agree with the reference"
        nbytes = (weight.shape[0] * C + B * C) * weight.element_size()
        impls = {"triton": kernel, "greedy": greedy, "torch": ref}
        cases.append(common.compare(f"B={B}", nbytes, impls, h, weight, skip, host_sync=("torch",)))
    common.write_results("head_sample", cases, args)


if __name__ == "__main__":
    main()

"""GB/s of kernels/head_argmax.py (tied head + greedy pick, no logits written) against its torch
reference (full logits, then argmax per range) and torch.compile, with the released table
(181120 x 896). GB/s counts the table once per step; with every row past _eot the kernel reads
only the audio rows (the `skip` cases), while the reference still computes everything. Writes
benchmarks/results/triton_head_argmax-<gpu>.json.

    python -m benchmarks.kernels.head_argmax [--dtype bf16] [--block-v 64]
"""

import torch

from benchmarks.kernels import common


def main() -> None:
    args = common.parse_args(__doc__, block_v=(int, 64))
    device = common.require_gpu("benchmarks.kernels.head_argmax")
    from kernels.head_argmax import head_argmax, head_argmax_ref
    from realtime.decoding.gpu.step import TOKEN_LAYOUT as layout

    dtype, C = common.DTYPES[args["dtype"]], common.RELEASED.n_embd
    weight = torch.randn(layout.vocab, C, device=device, dtype=dtype) * C**-0.5

    def kernel(h, weight, skip_text):
        return head_argmax(h, weight, layout, skip_text, block_v=args["block_v"])

    def ref(h, weight, skip_text):
        return head_argmax_ref(h, weight, layout, skip_text)

    impls = common.implementations(kernel, ref)
    common.print_header()
    cases = []
    for B in (1, 2, *common.DECODE_BATCHES[1:]):
        h = torch.randn(B, C, device=device, dtype=dtype)
        for skip in (False, True):
            skip_text = torch.full((B,), skip, device=device)
            inputs = (h, weight, skip_text)
            agree = (kernel(*inputs) == ref(*inputs)).float().mean().item()
            assert agree > 0.9, f"only {agree:.0%} of the ids agree with the reference"
            rows = weight.shape[0] - (layout.text_vocab if skip else 0)
            nbytes = (rows * C + B * C) * weight.element_size()
            label = f"B={B}" + (" skip" if skip else "")
            cases.append(common.compare(label, nbytes, impls, *inputs))
    common.write_results("head_argmax", cases, args)


if __name__ == "__main__":
    main()

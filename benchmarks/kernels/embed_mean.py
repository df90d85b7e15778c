"""GB/s of kernels/embed_mean.py against its torch reference and torch.compile, with the
released table (181120 x 896): decode steps (T = 1) and a prefill with whisper features.
Writes benchmarks/results/triton_embed_mean-<gpu>.json.

    python -m benchmarks.kernels.embed_mean [--dtype bf16]
"""

import torch

from benchmarks.kernels import common
from realtime.model import tokens


def main() -> None:
    args = common.parse_args(__doc__)
    device = common.require_gpu("benchmarks.kernels.embed_mean")
    from kernels.embed_mean import embed_mean, embed_mean_ref

    dtype, C = common.DTYPES[args["dtype"]], common.RELEASED.n_embd
    table = torch.randn(common.RELEASED.padded_vocab_size, C, device=device, dtype=dtype)
    impls = common.implementations(embed_mean, embed_mean_ref)
    common.print_header()
    cases = []
    for B, T in [*((b, 1) for b in common.DECODE_BATCHES), (1, 256)]:
        ids = torch.randint(0, table.shape[0], (B, T, tokens.STREAMS), device=device)
        audio, mask = None, None
        if T > 1:  # a prefill: whisper features over most positions
            audio = torch.randn(B, T, C, device=device, dtype=dtype)
            mask = torch.rand(B, T, device=device) < 0.9
        inputs = (ids, table, audio, mask)
        torch.testing.assert_close(embed_mean(*inputs), embed_mean_ref(*inputs))
        # 8 rows read (table or audio features, the same count), one written, per position
        nbytes = B * T * (tokens.STREAMS + 1) * C * table.element_size()
        cases.append(common.compare(f"B={B} T={T}", nbytes, impls, *inputs))
    common.write_results("embed_mean", cases, args)


if __name__ == "__main__":
    main()

"""GB/s of kernels/head_sample.py (the tied head with top-k 40 / temperature 0.9 / top-p 0.95
drawn on the device for every row) against its torch reference (full logits, then the host's
draw of kernels/sampling.py per row, which syncs), the same draw in torch ops alone under
torch.compile (`draw_in_torch`: no host sync, so it is captured like the kernel) and our greedy
head_argmax on the same inputs (the price of sampling over greedy), with the released table
(181120 x 896). GB/s counts the table once per call. Writes
benchmarks/results/triton_head_sample-<gpu>.json.

    python -m benchmarks.kernels.head_sample [--dtype bf16] [--block-v 64]
"""

import torch
import torch.nn.functional as F

from benchmarks.kernels import common
from kernels.layout import TokenLayout
from kernels.sampling import counter_uniforms


def _top(ranges: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 ranges (B, R, N) -> the k largest of each range, highest first, ties to the lower
    id (as a stable sort orders them): values and ids, (B, R, k) each. Each (value, id) is one
    int64 key ordered as the pair: the value's bits made monotone above, the id inverted below."""
    bits = ranges.view(torch.int32).long()
    monotone = torch.where(bits >= 0, bits, bits ^ 0x7FFFFFFF)
    ids = torch.arange(ranges.shape[-1], device=ranges.device)
    keys = (monotone << 32) | (ids ^ 0x7FFFFFFF)
    top_ids = (keys.topk(k, dim=-1).values & 0x7FFFFFFF) ^ 0x7FFFFFFF
    return ranges.gather(-1, top_ids), top_ids


def draw_in_torch(
    h: torch.Tensor, weight: torch.Tensor, layout: TokenLayout, skip_text, rows
) -> torch.Tensor:
    """head_sample's ids (B, layout.streams) in torch ops alone, static shapes and no host
    sync: every range's TOP_K_MAX best logits, then kernels/sampling.py's draw for all rows and
    ranges at once (the kernel's arithmetic); the greedy pick for the rows that do not sample."""
    from kernels.head_argmax import skipping
    from kernels.head_sample import TOP_K_MAX

    B, K = h.shape[0], TOP_K_MAX
    text_vocab, audio_layers = layout.text_vocab, layout.audio_layers
    logits = F.linear(h, weight).float()  # (B, V), the model dtype's values
    audio = logits[:, text_vocab:].view(B, audio_layers, layout.audio_vocab)
    pairs = zip(_top(audio, K), _top(logits[:, None, :text_vocab], K), strict=True)
    values, ids = (torch.cat(pair, dim=1) for pair in pairs)  # (B, 8, K): audio, then text
    temperature, top_p = rows.temperature[:, None, None], rows.top_p[:, None, None]
    values = values / torch.where(temperature > 0, temperature, 1.0)  # <= 0: unscaled
    j = torch.arange(K, device=h.device)
    within = j < rows.top_k[:, None, None]
    weights = torch.where(within, torch.exp(values - values[..., :1]), 0.0)
    cumulative = weights.cumsum(-1)
    bound = torch.where(top_p >= 1.0, float("inf"), top_p * cumulative[..., -1:])
    keep = within & ((cumulative - weights < bound) | (j == 0))
    kept = torch.where(keep, weights, 0.0).cumsum(-1)
    streams = torch.arange(audio_layers + 1, device=h.device)
    u = counter_uniforms(rows.seeds[:, None], rows.positions[:, None], streams)  # (B, 8)
    choice = (kept <= u[..., None] * kept[..., -1:]).sum(-1)
    choice = torch.minimum(choice, keep.sum(-1) - 1)  # never past the kept ids
    drawn = ids.gather(-1, choice[..., None])[..., 0]  # (B, 8)
    picks = torch.where(rows.sampling[:, None], drawn, ids[..., 0])
    text = torch.where(skipping(skip_text), layout.pad_t, picks[:, audio_layers])
    return torch.cat((picks[:, :audio_layers], text[:, None]), dim=1)


def main() -> None:
    args = common.parse_args(__doc__, block_v=(int, 64))
    device = common.require_gpu("benchmarks.kernels.head_sample")
    from kernels.head_argmax import head_argmax
    from kernels.head_sample import SamplingRows, head_sample, head_sample_ref
    from realtime.decoding.gpu.step import TOKEN_LAYOUT as layout

    dtype, C = common.DTYPES[args["dtype"]], common.RELEASED.n_embd
    weight = torch.randn(layout.vocab, C, device=device, dtype=dtype) * C**-0.5
    compiled = torch.compile(draw_in_torch, dynamic=False)
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
        logits = torch.empty(B, layout.vocab, device=device, dtype=dtype)

        def kernel(h, weight, skip, logits=logits, rows=rows):
            return head_sample(h, weight, layout, skip, rows, logits, block_v=args["block_v"])

        def greedy(h, weight, skip):
            return head_argmax(h, weight, layout, skip, block_v=args["block_v"])

        def ref(h, weight, skip, rows=rows):
            return head_sample_ref(h, weight, layout, skip, rows)

        def in_torch(h, weight, skip, rows=rows):
            return compiled(h, weight, layout, skip, rows)

        want = ref(h, weight, skip)
        for name, fn in (("kernel", kernel), ("torch.compile", in_torch)):
            same = (fn(h, weight, skip) == want).float().mean().item()
            assert same > 0.9, f"only {same:.0%} of the {name}'s draws agree with the reference"
        nbytes = (weight.shape[0] * C + B * C) * weight.element_size()
        impls = {"triton": kernel, "greedy": greedy, "torch": ref, "compiled": in_torch}
        cases.append(common.compare(f"B={B}", nbytes, impls, h, weight, skip, host_sync=("torch",)))
    common.write_results("head_sample", cases, args)


if __name__ == "__main__":
    main()

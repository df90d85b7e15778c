"""The head with top-k / temperature / top-p sampling fused for the rows that sample.

For each sampling row b and range r (each audio layer, then the text), with the row's top_k
(1..TOP_K_MAX), temperature, top_p, seed and position, the draw of kernels/sampling.py:

    the top_k (logit, id) of the range, highest first (ties: the lower id first)
    w_j = exp((l_j - l_0) / temperature); keep j while sum_{i<j} w_i < top_p * sum w
    ids[b, r] = the first kept id whose running kept sum exceeds u * (kept total),
    u = the uniform of (seed, position, stream r)

Every other row gets the greedy ids of kernels/head_argmax.py, whose stage 1 runs as usual and
also writes the logits of the sampling rows (B x V, the only place they exist). The draw, grid
(B, streams), needs no sort of the range: the K blocks with the highest stage-1 maxima hold
the top K logits (any other block's maximum is beaten by those K maxima), so it picks those K
blocks from the range's block maxima and then the top K of their K x BLOCK_V logits, each by K
rounds of "take the largest key, remove it". A (logit, id) pair is one int64 key ordered as
the pair: the value's fp32 bits made monotone in the high half, the inverted id in the low
half.
"""

from dataclasses import dataclass
from typing import TypedDict

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from kernels import sampling
from kernels.head_argmax import (
    BLOCK_V,
    HeadLayout,
    SkipText,
    head_argmax_ref,
    head_partials,
    head_reduce,
    skip_flags,
    skipping,
    skips_text,
)
from kernels.layout import TokenLayout
from kernels.triton_support import handoff, launch_options, runs_kernel

TOP_K_MAX = 64  # the largest top_k drawn here; requests with a larger one sample on the host
REMOVED = tl.constexpr(-(2**63))  # below every key
SEED_MIX = tl.constexpr(sampling.SEED_MIX)
COUNTERS_PER_POSITION = tl.constexpr(sampling.COUNTERS_PER_POSITION)
UNIFORM_SHIFT = tl.constexpr(32 - sampling.UNIFORM_BITS)
UNIFORM_SCALE = tl.constexpr(2.0**-sampling.UNIFORM_BITS)


class Draw(TypedDict):
    """One row's draw as kernels/sampling.py's `draw` takes it, but the position and stream."""

    top_k: int
    temperature: float
    top_p: float
    seed: int


@dataclass
class SamplingRows:
    """Per row (B,) of a head call: whether it samples, and how."""

    sampling: torch.Tensor  # bool
    top_k: torch.Tensor  # int64, 1..TOP_K_MAX
    temperature: torch.Tensor  # fp32; <= 0: unscaled
    top_p: torch.Tensor  # fp32; >= 1: no cut
    seeds: torch.Tensor  # int64
    positions: torch.Tensor  # int64, the cache position the row samples at

    def options(self, b: int) -> Draw:
        """Row b's draw on the host: kernels/sampling.py's `draw` keywords but the position and
        stream."""
        return Draw(
            top_k=int(self.top_k[b]), temperature=float(self.temperature[b]),
            top_p=float(self.top_p[b]), seed=int(self.seeds[b]),
        )  # fmt: skip


@triton.jit
def _fmix32(h):
    """MurmurHash3's 32-bit finalizer (uint32 in, uint32 out)."""
    h ^= h >> 16
    h = h * 0x85EBCA6B
    h ^= h >> 13
    h = h * 0xC2B2AE35
    h ^= h >> 16
    return h


@triton.jit
def _uniform(seed, position, stream):
    """kernels/sampling.py's uniforms for one (seed, position, stream): fp32 in [0, 1)."""
    seed_lo = (seed & 0xFFFFFFFF).to(tl.uint32)
    seed_hi = ((seed >> 32) & 0xFFFFFFFF).to(tl.uint32)
    key = _fmix32(seed_lo ^ _fmix32(seed_hi ^ SEED_MIX))
    counter = (position * COUNTERS_PER_POSITION + stream).to(tl.uint32)
    h = _fmix32(_fmix32(counter * SEED_MIX + key) ^ key)
    return (h >> UNIFORM_SHIFT).to(tl.float32) * UNIFORM_SCALE


@triton.jit
def _keys(values, ids):
    """fp32 values and int32 ids (>= 0) -> int64 keys ordered as (value, -id)."""
    bits = values.to(tl.int32, bitcast=True)
    monotone = tl.where(bits >= 0, bits, bits ^ 0x7FFFFFFF)
    return (monotone.to(tl.int64) << 32) | (ids ^ 0x7FFFFFFF).to(tl.int64)  # ^: 2^31 - 1 - id


@triton.jit
def _unkey(keys):
    """Keys -> (fp32 values, int32 ids)."""
    monotone = (keys >> 32).to(tl.int32)
    values = tl.where(monotone >= 0, monotone, monotone ^ 0x7FFFFFFF).to(tl.float32, bitcast=True)
    return values, (keys & 0x7FFFFFFF).to(tl.int32) ^ 0x7FFFFFFF


@triton.jit
def _largest(keys, K: tl.constexpr):
    """The K largest of distinct keys (N,), largest first: (K,)."""
    j = tl.arange(0, K)
    top = tl.full((K,), REMOVED, tl.int64)
    for i in range(K):
        best = tl.max(keys, axis=0)
        top = tl.where(j == i, best, top)
        keys = tl.where(keys == best, REMOVED, keys)
    return top


@triton.jit
def _head_sample_kernel(
    part_val_ptr, logits_ptr, sampling_ptr, skip_ptr, skip2_ptr,
    top_k_ptr, temperature_ptr, top_p_ptr, seed_ptr, position_ptr, ids_ptr,
    stride_part_b, stride_l_b, stride_ids_b,
    TEXT_V: tl.constexpr, AUDIO_V: tl.constexpr, AUDIO_LAYERS: tl.constexpr,
    TEXT_BLOCKS: tl.constexpr, AUDIO_BLOCKS: tl.constexpr, BLOCK_V: tl.constexpr,
    BLOCKS_TILE: tl.constexpr, K: tl.constexpr, SKIP_FLAGS: tl.constexpr, PDL: tl.constexpr,
):  # fmt: skip
    handoff(PDL)
    b, r = tl.program_id(0), tl.program_id(1)  # r: audio layer 0..6, then 7 for the text
    is_text = r == AUDIO_LAYERS
    idle = tl.load(sampling_ptr + b) == 0
    if idle | (is_text & skips_text(skip_ptr, skip2_ptr, b, b >= 0, SKIP_FLAGS)):
        return  # the greedy pick (or _pad_t) stays
    first = tl.where(is_text, 0, TEXT_BLOCKS + r * AUDIO_BLOCKS)
    count = tl.where(is_text, TEXT_BLOCKS, AUDIO_BLOCKS)
    start = tl.where(is_text, 0, TEXT_V + r * AUDIO_V)
    length = tl.where(is_text, TEXT_V, AUDIO_V)

    # the K blocks of the range with the highest maxima (all of them if it has fewer)
    p = tl.arange(0, BLOCKS_TILE)
    maxima = tl.load(part_val_ptr + b * stride_part_b + first + p, mask=p < count, other=0.0)
    blocks = _largest(tl.where(p < count, _keys(maxima, p), REMOVED), K)  # (K,)
    _, block = _unkey(blocks)
    # their logits, and the top K of those
    local = block[:, None] * BLOCK_V + tl.arange(0, BLOCK_V)[None, :]  # (K, BLOCK_V)
    real = (blocks != REMOVED)[:, None] & (local < length)
    row = logits_ptr + b.to(tl.int64) * stride_l_b + start
    values = tl.load(row + local, mask=real, other=0.0).to(tl.float32)
    keys = tl.where(real, _keys(values, local), REMOVED)
    values, ids = _unkey(_largest(tl.reshape(keys, (K * BLOCK_V,)), K))  # the most likely first

    j = tl.arange(0, K)
    top_k = tl.load(top_k_ptr + b)
    temperature = tl.load(temperature_ptr + b)
    top_p = tl.load(top_p_ptr + b)
    values = values / tl.where(temperature > 0, temperature, 1.0)  # <= 0: unscaled
    weights = tl.where(j < top_k, tl.exp(values - tl.max(values, axis=0)), 0.0)
    cumulative = tl.cumsum(weights, axis=0)
    bound = tl.where(top_p >= 1.0, float("inf"), top_p * tl.max(cumulative, axis=0))
    keep = (j < top_k) & ((cumulative - weights < bound) | (j == 0))
    kept = tl.cumsum(tl.where(keep, weights, 0.0), axis=0)
    u = _uniform(tl.load(seed_ptr + b), tl.load(position_ptr + b), r)
    choice = tl.sum((kept <= u * tl.max(kept, axis=0)).to(tl.int32), axis=0)
    choice = tl.minimum(choice, tl.sum(keep.to(tl.int32), axis=0) - 1)  # never past the kept
    picked = tl.sum(tl.where(j == choice, ids, 0), axis=0)
    tl.store(ids_ptr + b * stride_ids_b + r, picked.to(tl.int64))


def head_sample(
    h: torch.Tensor,
    weight: torch.Tensor,
    layout: TokenLayout,
    skip_text: SkipText,
    rows: SamplingRows,
    logits: torch.Tensor | None = None,
    block_v: int = BLOCK_V,
) -> torch.Tensor:
    """h (B, C), weight (layout.vocab, C), skip_text (B,) bool (or two, or'ed) -> ids (B,
    layout.streams) int64: the draws of the `rows.sampling` rows, the greedy picks of the
    others (layer-local audio ids, then the text id; pad_t where skip_text). `logits`: a
    (B, V) buffer in h's dtype for the sampling rows' logits (allocated when None)."""
    if not runs_kernel(h, weight):
        return head_sample_ref(h, weight, layout, skip_text, rows)
    head = HeadLayout(layout, block_v)
    assert min(layout.text_vocab, layout.audio_vocab) >= TOP_K_MAX, "a range needs TOP_K_MAX ids"
    B = h.shape[0]
    if logits is None:
        logits = torch.empty(B, layout.vocab, device=h.device, dtype=h.dtype)
    part_val, part_idx = head_partials(h, weight, skip_text, head, logits, rows.sampling)
    ids = head_reduce(part_val, part_idx, skip_text, head)
    skip, skip2, flags = skip_flags(skip_text)
    _head_sample_kernel[(B, layout.streams)](
        part_val, logits, rows.sampling.view(torch.uint8), skip, skip2,
        rows.top_k, rows.temperature, rows.top_p, rows.seeds, rows.positions, ids,
        part_val.stride(0), logits.stride(0), ids.stride(0),
        TEXT_V=layout.text_vocab, AUDIO_V=layout.audio_vocab, AUDIO_LAYERS=layout.audio_layers,
        TEXT_BLOCKS=head.text_blocks, AUDIO_BLOCKS=head.audio_blocks, BLOCK_V=block_v,
        BLOCKS_TILE=max(TOP_K_MAX, triton.next_power_of_2(head.text_blocks)), K=TOP_K_MAX,
        SKIP_FLAGS=flags, num_warps=8,
        **launch_options(),
    )  # fmt: skip
    return ids


def head_sample_ref(
    h: torch.Tensor,
    weight: torch.Tensor,
    layout: TokenLayout,
    skip_text: SkipText,
    rows: SamplingRows,
) -> torch.Tensor:
    """The torch computation: the greedy head, then kernels/sampling.py's draw for each sampling
    row over its full logits (in the model's dtype, as OmniLM's heads return them)."""
    ids = head_argmax_ref(h, weight, layout, skip_text)
    skip = skipping(skip_text)
    text, audio_layers = layout.text_vocab, layout.audio_layers
    for b in torch.nonzero(rows.sampling).flatten().tolist():
        opts, position = rows.options(b), int(rows.positions[b])
        logits = F.linear(h[b], weight)  # (V,)
        audio = logits[text:].view(audio_layers, layout.audio_vocab)
        ids[b, :audio_layers] = sampling.draw(audio, **opts, position=position, stream=0)
        if not skip[b]:
            text_id = sampling.draw(logits[:text], **opts, position=position, stream=audio_layers)
            ids[b, audio_layers] = text_id
    return ids

"""The tied head with greedy selection fused: a row's logits over the whole vocabulary are
never written.

For hidden h (B, C) and the table W (V, C), logits = h W^T rounded to the model dtype (as the
model's head returns them), and per row, with the model's TokenLayout (TEXT = text_vocab,
A = audio_vocab, L = audio_layers)

    ids[b, i] = argmax(logits[b, TEXT + i A : TEXT + (i + 1) A])   audio layer i (layer-local)
    ids[b, L] = argmax(logits[b, 0 : TEXT])   or pad_t where skip_text[b]

ties going to the lowest index (torch.argmax's rule). Stage 1, grid (B tiles, blocks): a block
is BLOCK_V rows of one range (ranges never share a block), streamed once for up to BLOCK_B rows
of h through tl.dot, reduced to a max and argmax per row. Text blocks read nothing when every
row of the tile skips the text (after eot it is forced), which leaves a Mini-Omni decode step
26 MB of audio rows instead of 325 MB (bf16). Stage 2, grid (B, L + 1): reduces each range's
partials in block order, so the lowest index still wins a tie.

skip_text is one (B,) bool tensor or a tuple of two, whose rows skip where either is set (the
decode step's text_ended and no_text, or'ed here instead of in a launch of their own).

Stage 1 can also write the logits of chosen rows (`head_partials(..., logits, keep)`): the
rows that sample, for kernels/head_sample.py, which draws from them and the block maxima.
"""

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from kernels.layout import TokenLayout
from kernels.triton_support import dot_dtype, handoff, launch_options, round_to, runs_kernel

BLOCK_V = 64  # table rows per program: 2830 programs at the released vocab
BLOCK_C = 128
# Rows of h per program (fp32: half as many; 64 of them spill registers on sm_90, per
# tests/kernels/compile_check.py); more rows take another tile (see head_partials).
MAX_BLOCK_B = 64
NO_INDEX = tl.constexpr(2**31 - 1)  # a global a kernel reads must be a constexpr

SkipText = torch.Tensor | tuple[torch.Tensor, torch.Tensor]


@triton.jit
def skips_text(skip_ptr, skip2_ptr, rows, mask, FLAGS: tl.constexpr):
    """Whether each of `rows` skips the text: either of its FLAGS (1 or 2) flags set (a row
    outside `mask` skips)."""
    skip = tl.load(skip_ptr + rows, mask=mask, other=1) != 0
    if FLAGS == 2:
        skip = skip | (tl.load(skip2_ptr + rows, mask=mask, other=1) != 0)
    return skip


def skip_flags(skip_text: SkipText) -> tuple[torch.Tensor, torch.Tensor, int]:
    """skip_text as the kernels take it: (its first flags, its last, how many), (B,) uint8."""
    flags = skip_text if isinstance(skip_text, tuple) else (skip_text,)
    assert len(flags) in (1, 2) and all(f.dtype == torch.bool for f in flags)
    views = [f.contiguous().view(torch.uint8) for f in flags]
    return views[0], views[-1], len(views)


def skipping(skip_text: SkipText) -> torch.Tensor:
    """skip_text as one (B,) bool tensor: its flags or'ed."""
    if isinstance(skip_text, tuple):
        return functools.reduce(torch.logical_or, skip_text)
    return skip_text


@triton.jit
def _head_argmax_kernel(
    h_ptr, w_ptr, skip_ptr, skip2_ptr, part_val_ptr, part_idx_ptr, logits_ptr, keep_ptr,
    B, C,
    stride_h_b, stride_w_v, stride_part_b, stride_l_b,
    TEXT_V: tl.constexpr, AUDIO_V: tl.constexpr,
    TEXT_BLOCKS: tl.constexpr, AUDIO_BLOCKS: tl.constexpr, DOT_DTYPE: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_C: tl.constexpr,
    WRITE_LOGITS: tl.constexpr, SKIP_FLAGS: tl.constexpr, PDL: tl.constexpr,
):  # fmt: skip
    handoff(PDL)
    pid = tl.program_id(1)
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)  # (BLOCK_B,) rows of h
    is_text = pid < TEXT_BLOCKS
    audio_pid = tl.maximum(pid - TEXT_BLOCKS, 0)
    block = tl.where(is_text, pid, audio_pid % AUDIO_BLOCKS)  # within the range
    range_start = tl.where(is_text, 0, TEXT_V + (audio_pid // AUDIO_BLOCKS) * AUDIO_V)
    range_len = tl.where(is_text, TEXT_V, AUDIO_V)
    skip = skips_text(skip_ptr, skip2_ptr, rows, rows < B, SKIP_FLAGS)
    needed = tl.sum(tl.where(skip, 0, 1), axis=0) > 0
    # A masked load reads no memory: no row wants this text block, so none of it is read.
    range_len = tl.where(is_text & ~needed, 0, range_len)

    local = block * BLOCK_V + tl.arange(0, BLOCK_V)  # (BLOCK_V,) ids within the range
    in_range = local < range_len
    w_rows = (range_start + local).to(tl.int64) * stride_w_v
    acc = tl.zeros([BLOCK_B, BLOCK_V], dtype=tl.float32)
    for c0 in range(0, C, BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C)
        w_tile = in_range[:, None] & (c < C)[None, :]
        w = tl.load(w_ptr + w_rows[:, None] + c[None, :], mask=w_tile, other=0.0)
        h_tile = (rows < B)[:, None] & (c < C)[None, :]
        h = tl.load(h_ptr + rows[:, None] * stride_h_b + c[None, :], mask=h_tile, other=0.0)
        acc += tl.dot(h.to(DOT_DTYPE), tl.trans(w.to(DOT_DTYPE)), input_precision="ieee")
    logits = round_to(acc, h_ptr.dtype.element_ty)  # the model's logits are in its dtype
    logits = tl.where(in_range[None, :], logits, float("-inf"))
    best = tl.max(logits, axis=1)  # (BLOCK_B,)
    best_id = tl.min(tl.where(logits == best[:, None], local[None, :], NO_INDEX), axis=1)
    part = rows * stride_part_b + pid
    tl.store(part_val_ptr + part, best, mask=rows < B)
    tl.store(part_idx_ptr + part, best_id, mask=rows < B)
    if WRITE_LOGITS:  # for the rows that sample (kernels/head_sample.py): theirs only
        keep = tl.load(keep_ptr + rows, mask=rows < B, other=0) != 0
        out = logits_ptr + rows[:, None].to(tl.int64) * stride_l_b + (range_start + local)[None, :]
        tl.store(
            out, logits.to(logits_ptr.dtype.element_ty), mask=keep[:, None] & in_range[None, :]
        )


@triton.jit
def _head_argmax_reduce_kernel(
    part_val_ptr, part_idx_ptr, skip_ptr, skip2_ptr, ids_ptr,
    stride_part_b, stride_ids_b,
    AUDIO_LAYERS: tl.constexpr, TEXT_BLOCKS: tl.constexpr, AUDIO_BLOCKS: tl.constexpr,
    TEXT_FILL: tl.constexpr, BLOCK_P: tl.constexpr, SKIP_FLAGS: tl.constexpr,
    PDL: tl.constexpr,
):  # fmt: skip
    handoff(PDL)
    b, r = tl.program_id(0), tl.program_id(1)  # r: audio layer 0..6, then 7 for the text
    is_text = r == AUDIO_LAYERS
    first = tl.where(is_text, 0, TEXT_BLOCKS + r * AUDIO_BLOCKS)
    count = tl.where(is_text, TEXT_BLOCKS, AUDIO_BLOCKS)
    best = tl.full((), float("-inf"), tl.float32)
    best_id = tl.full((), NO_INDEX, tl.int32)
    for p0 in range(0, count, BLOCK_P):  # blocks in index order: on a tie the earlier one wins
        p = p0 + tl.arange(0, BLOCK_P)
        part = b * stride_part_b + first + p
        vals = tl.load(part_val_ptr + part, mask=p < count, other=float("-inf"))
        ids = tl.load(part_idx_ptr + part, mask=p < count, other=NO_INDEX)
        chunk_best = tl.max(vals, axis=0)
        chunk_id = tl.min(tl.where(vals == chunk_best, ids, NO_INDEX), axis=0)
        better = chunk_best > best
        best_id = tl.where(better, chunk_id, best_id)
        best = tl.where(better, chunk_best, best)
    skipped = is_text & skips_text(skip_ptr, skip2_ptr, b, b >= 0, SKIP_FLAGS)
    tl.store(ids_ptr + b * stride_ids_b + r, tl.where(skipped, TEXT_FILL, best_id).to(tl.int64))


def head_argmax(
    h: torch.Tensor,
    weight: torch.Tensor,
    layout: TokenLayout,
    skip_text: SkipText | None = None,
    block_v: int = BLOCK_V,
) -> torch.Tensor:
    """h (B, C), weight (layout.vocab, C), skip_text (B,) bool (or two, or'ed) or None -> ids
    (B, layout.streams) int64: layer-local audio ids, then the text id (pad_t where
    skip_text)."""
    if not runs_kernel(h, weight):
        return head_argmax_ref(h, weight, layout, skip_text)
    if skip_text is None:
        skip_text = torch.zeros(h.shape[0], dtype=torch.bool, device=h.device)
    head = HeadLayout(layout, block_v)
    part_val, part_idx = head_partials(h, weight, skip_text, head)
    return head_reduce(part_val, part_idx, skip_text, head)


@dataclass(frozen=True)
class HeadLayout:
    """The head's ranges (the model's token layout) and how stage 1 cuts them into blocks."""

    tokens: TokenLayout
    block_v: int = BLOCK_V

    @property
    def text_blocks(self) -> int:
        return triton.cdiv(self.tokens.text_vocab, self.block_v)

    @property
    def audio_blocks(self) -> int:
        return triton.cdiv(self.tokens.audio_vocab, self.block_v)

    @property
    def blocks(self) -> int:  # per row: the text's, then each audio layer's in turn
        return self.text_blocks + self.tokens.audio_layers * self.audio_blocks


def head_partials(
    h: torch.Tensor,
    weight: torch.Tensor,
    skip_text: SkipText,
    head: HeadLayout,
    logits: torch.Tensor | None = None,
    keep: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stage 1 -> each block's (max, argmax) per row: (B, head.blocks) fp32 and int32. With
    `logits` (B, V) and `keep` (B,) bool, also writes the logits of the kept rows (in
    logits.dtype; exact when that is the model's dtype)."""
    B, C = h.shape
    vocab = head.tokens.vocab
    assert weight.shape[0] == vocab
    assert h.stride(1) == 1 and weight.stride(1) == 1
    skip, skip2, flags = skip_flags(skip_text)
    part_val = torch.empty(B, head.blocks, device=h.device, dtype=torch.float32)
    part_idx = torch.empty(B, head.blocks, device=h.device, dtype=torch.int32)
    write = logits is not None
    out, kept = part_val, skip  # never read without WRITE_LOGITS
    if logits is not None:
        assert keep is not None, "`keep` says whose logits to write"
        assert logits.shape == (B, vocab) and logits.stride(1) == 1
        out, kept = logits, keep.contiguous().view(torch.uint8)
    block_b = tile_rows(B, h.dtype)
    # A block's row tiles are neighbours in the grid (launched together), so all but the
    # first find its rows of W in L2: W crosses HBM once however many tiles there are.
    _head_argmax_kernel[(triton.cdiv(B, block_b), head.blocks)](
        h, weight, skip, skip2, part_val, part_idx, out, kept,
        B, C,
        h.stride(0), weight.stride(0), part_val.stride(0), out.stride(0) if write else 0,
        TEXT_V=head.tokens.text_vocab, AUDIO_V=head.tokens.audio_vocab,
        TEXT_BLOCKS=head.text_blocks, AUDIO_BLOCKS=head.audio_blocks,
        DOT_DTYPE=dot_dtype(h.dtype), BLOCK_B=block_b, BLOCK_V=head.block_v,
        BLOCK_C=min(BLOCK_C, triton.next_power_of_2(C)), WRITE_LOGITS=write, SKIP_FLAGS=flags,
        **launch_options(),
    )  # fmt: skip
    return part_val, part_idx


def tile_rows(B: int, dtype: torch.dtype) -> int:
    """Rows of h a stage 1 program takes, for B rows in `dtype`: a power of two from 16 (tl.dot's
    smallest) up to MAX_BLOCK_B."""
    most = MAX_BLOCK_B if dtype.itemsize <= 2 else MAX_BLOCK_B // 2
    return min(most, max(16, triton.next_power_of_2(B)))


def head_reduce(
    part_val: torch.Tensor, part_idx: torch.Tensor, skip_text: SkipText, head: HeadLayout
) -> torch.Tensor:
    """Stage 2: the partials -> ids (B, streams) int64, the greedy picks."""
    B, streams = part_val.shape[0], head.tokens.streams
    skip, skip2, flags = skip_flags(skip_text)
    ids = torch.empty(B, streams, device=part_val.device, dtype=torch.int64)
    _head_argmax_reduce_kernel[(B, streams)](
        part_val, part_idx, skip, skip2, ids,
        part_val.stride(0), ids.stride(0),
        AUDIO_LAYERS=head.tokens.audio_layers, TEXT_BLOCKS=head.text_blocks,
        AUDIO_BLOCKS=head.audio_blocks, TEXT_FILL=head.tokens.pad_t,
        BLOCK_P=min(1024, triton.next_power_of_2(head.text_blocks)), SKIP_FLAGS=flags,
        **launch_options(),
    )  # fmt: skip
    return ids


def head_argmax_ref(
    h: torch.Tensor,
    weight: torch.Tensor,
    layout: TokenLayout,
    skip_text: SkipText | None = None,
) -> torch.Tensor:
    """The torch computation: the full logits (OmniLM.text_logits / audio_logits), argmax per
    range."""
    # (B, V): the model dtype's values; upcast (exactly) because bf16 argmax is slow on CPUs
    logits = F.linear(h, weight).float()
    text = logits[:, : layout.text_vocab].argmax(dim=-1)  # (B,)
    if skip_text is not None:
        text = torch.where(skipping(skip_text), layout.pad_t, text)
    audio = logits[:, layout.text_vocab :].view(-1, layout.audio_layers, layout.audio_vocab)
    return torch.cat((audio.argmax(dim=-1), text[:, None]), dim=1)  # (B, streams)

"""Delayed-parallel feedback on the device: a step's sampled ids become the next step's input.

The model's Generation.accept and next_input, for B rows at once with no host sync. Per row b,
with sampled audio a_i (layer-local, i = 0 .. L - 1 for L = layout.audio_layers) and text t,
and `later` = not first[b] (the first step, sampled from the prompt itself, is kept without
checks):

    speech rows (audio_out[b]):
        t       = pad_t                      if later and text_ended[b]   (text forced after eot)
        stop[b] = later and a_{L-1} == eoa                                (end of audio)
        text_ended[b] |= later and not stop[b] and t == eot               (updated in place)
    text rows (not audio_out[b]):
        stop[b] = later and t == eot                                      (end of text)
    next_ids[b, i] = (a_i if speaks[b] else pad_a) + text_vocab + i audio_vocab   (layer-shifted)
    next_ids[b, L] = t

`sampled[b]` holds row b's request's ids: for a2a-batch the audio of its row 0 and the text of
its row 1 in both rows; `speaks` is set only on a speech task's audio row. The length limit
stays with the host, which knows every row's step count. One program per BLOCK_B rows, each a
(BLOCK_B, streams) tile.

With `StepRows` the kernel is the decode step's whole tail, in its buffers: it gathers
`sampled` from the head's picks itself (row b's audio from row audio_src[b], its text from row
text_src[b]), writes the gathered ids to `sampled` and the next ones to `ids` in place, and
advances `positions` by `advance`: one launch in place of six torch ops.
"""

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from kernels.layout import TokenLayout
from kernels.triton_support import handoff, launch_options, runs_kernel

BLOCK_B = 16


@dataclass(frozen=True)
class StepRows:
    """The decode step's per-row buffers the feedback reads and writes (all (B,) int64 but ids
    and sampled (B, streams) int64)."""

    audio_src: torch.Tensor  # the row of the head's picks whose audio ids this row takes
    text_src: torch.Tensor  # ... whose text id it takes
    ids: torch.Tensor  # written: the next step's input ids
    sampled: torch.Tensor  # written: the ids as gathered (what the host accepts)
    positions: torch.Tensor  # advanced in place by `advance`
    advance: torch.Tensor


@triton.jit
def _feedback_kernel(
    sampled_ptr, speaks_ptr, audio_out_ptr, first_ptr, text_ended_ptr, next_ptr, stop_ptr,
    audio_src_ptr, text_src_ptr, gathered_ptr, pos_ptr, advance_ptr,
    B,
    stride_sampled_b, stride_next_b, stride_gathered_b,
    AUDIO_LAYERS: tl.constexpr, TEXT_VOCAB: tl.constexpr, AUDIO_VOCAB: tl.constexpr,
    EOT: tl.constexpr, PAD_T: tl.constexpr, EOA: tl.constexpr, PAD_A: tl.constexpr,
    STEP: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_S: tl.constexpr, PDL: tl.constexpr,
):  # fmt: skip
    handoff(PDL)
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)  # (BLOCK_B,)
    s = tl.arange(0, BLOCK_S)[None, :]  # stream: audio layers, then the text
    in_b = rows < B
    tile = in_b[:, None] & (s <= AUDIO_LAYERS)
    if STEP:  # row b's ids from its request's audio and text rows of the picks
        audio_src = tl.load(audio_src_ptr + rows, mask=in_b, other=0)
        text_src = tl.load(text_src_ptr + rows, mask=in_b, other=0)
        src = tl.where(s < AUDIO_LAYERS, audio_src[:, None], text_src[:, None])  # (BLOCK_B, S)
        ids = tl.load(sampled_ptr + src * stride_sampled_b + s, mask=tile, other=0)
        tl.store(gathered_ptr + rows[:, None] * stride_gathered_b + s, ids, mask=tile)
        position = tl.load(pos_ptr + rows, mask=in_b, other=0)
        tl.store(pos_ptr + rows, position + tl.load(advance_ptr + rows, mask=in_b, other=0),
                 mask=in_b)  # fmt: skip
    else:
        ids = tl.load(sampled_ptr + rows[:, None] * stride_sampled_b + s, mask=tile, other=0)
    speaks = tl.load(speaks_ptr + rows, mask=in_b, other=0) != 0
    audio_out = tl.load(audio_out_ptr + rows, mask=in_b, other=0) != 0
    later = tl.load(first_ptr + rows, mask=in_b, other=1) == 0
    ended = tl.load(text_ended_ptr + rows, mask=in_b, other=0) != 0

    text = tl.sum(tl.where(s == AUDIO_LAYERS, ids, 0), axis=1)  # (BLOCK_B,)
    last_audio = tl.sum(tl.where(s == AUDIO_LAYERS - 1, ids, 0), axis=1)
    text = tl.where(audio_out & later & ended, PAD_T, text)
    stop = later & tl.where(audio_out, last_audio == EOA, text == EOT)
    ended = ended | (audio_out & later & ~stop & (text == EOT))

    audio = tl.where(speaks[:, None], ids, PAD_A) + TEXT_VOCAB + s * AUDIO_VOCAB
    out = tl.where(s == AUDIO_LAYERS, text[:, None], audio)
    tl.store(next_ptr + rows[:, None] * stride_next_b + s, out.to(tl.int64), mask=tile)
    tl.store(stop_ptr + rows, stop.to(tl.uint8), mask=in_b)
    tl.store(text_ended_ptr + rows, ended.to(tl.uint8), mask=in_b)


def feedback(
    sampled: torch.Tensor,
    speaks: torch.Tensor,
    audio_out: torch.Tensor,
    first: torch.Tensor,
    text_ended: torch.Tensor,
    layout: TokenLayout,
    step: StepRows | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """sampled (B, streams) ids (layer-local audio, then text; with `step`, the head's picks,
    which it gathers); speaks, audio_out, first, text_ended (B,) bool -> (next_ids (B, streams)
    int64 (step.ids with `step`), stop (B,) bool); text_ended is updated in place, and with
    `step` its ids, sampled and positions."""
    if not runs_kernel(sampled, text_ended):
        return feedback_ref(sampled, speaks, audio_out, first, text_ended, layout, step)
    B = text_ended.shape[0]
    assert sampled.shape[1] == layout.streams and sampled.stride(1) == 1
    assert text_ended.dtype == torch.bool and text_ended.is_contiguous()
    flags = [f.contiguous().view(torch.uint8) for f in (speaks, audio_out, first)]
    if step is None:
        next_ids = torch.empty(B, layout.streams, device=sampled.device, dtype=torch.int64)
        gathered, sources, moves = next_ids, (text_ended, text_ended), (text_ended, text_ended)
    else:
        next_ids, gathered = step.ids, step.sampled
        sources, moves = (step.audio_src, step.text_src), (step.positions, step.advance)
        assert next_ids.stride(1) == gathered.stride(1) == 1
        assert all(t.is_contiguous() and t.dtype == torch.int64 for t in (*sources, *moves))
    stop = torch.empty(B, device=sampled.device, dtype=torch.bool)
    _feedback_kernel[(triton.cdiv(B, BLOCK_B),)](
        sampled, *flags, text_ended.view(torch.uint8), next_ids, stop.view(torch.uint8),
        *sources, gathered, *moves,
        B,
        sampled.stride(0), next_ids.stride(0), gathered.stride(0),
        AUDIO_LAYERS=layout.audio_layers, TEXT_VOCAB=layout.text_vocab,
        AUDIO_VOCAB=layout.audio_vocab,
        EOT=layout.eot, PAD_T=layout.pad_t, EOA=layout.eoa, PAD_A=layout.pad_a,
        STEP=step is not None, BLOCK_B=BLOCK_B,
        BLOCK_S=triton.next_power_of_2(layout.streams),
        **launch_options(),
    )  # fmt: skip
    return next_ids, stop


def feedback_ref(
    sampled: torch.Tensor,
    speaks: torch.Tensor,
    audio_out: torch.Tensor,
    first: torch.Tensor,
    text_ended: torch.Tensor,
    layout: TokenLayout,
    step: StepRows | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The same rules in torch ops (no host sync either)."""
    L = layout.audio_layers
    if step is not None:  # the gather, the writes and the advance around the rules
        audio = sampled[step.audio_src, :L]
        sampled = torch.cat((audio, sampled[step.text_src, layout.text_stream :]), dim=1)
        step.sampled.copy_(sampled)
        step.positions.add_(step.advance)
        next_ids, stop = feedback_ref(sampled, speaks, audio_out, first, text_ended, layout)
        return step.ids.copy_(next_ids), stop
    later = ~first
    audio, text = sampled[:, :L], sampled[:, layout.text_stream]
    text = torch.where(audio_out & later & text_ended, layout.pad_t, text)
    stop = later & torch.where(audio_out, audio[:, -1] == layout.eoa, text == layout.eot)
    text_ended |= audio_out & later & ~stop & (text == layout.eot)
    layers = torch.arange(L, device=sampled.device)  # no host copy
    offsets = layout.text_vocab + layers * layout.audio_vocab  # each layer's first row
    audio = torch.where(speaks[:, None], audio, layout.pad_a) + offsets  # (B, L)
    return torch.cat((audio, text[:, None]), dim=1).long(), stop

"""Embedding gather and mean of a step's S token streams, with the whisper-feature overwrite.

    out[b, t] = (e_0 + e_1 + ... + e_{S-1}) / S,  summed left to right
    e_s = audio[b, t]           if s < S - 1 and mask[b, t]   (adapted whisper features)
        = table[ids[b, t, s]]   otherwise                      (the text stream S - 1 always)

S = ids.shape[-1]: the audio layers, then the text. Each partial sum is rounded to the table's
dtype, as OmniLM.embed's sequence of adds in the model dtype does, so the kernel is bit-equal
to it (the / 8 of Mini-Omni's 8 streams is exact). One program per (position, BLOCK_C
columns): the S rows of the table it reads are gathered straight from their ids, so the
(B, T, S, C) stack of embeddings is never written.
"""

import torch
import triton
import triton.language as tl

from kernels.triton_support import handoff, launch_options, round_to, runs_kernel

BLOCK_C = 256


@triton.jit
def _embed_mean_kernel(
    ids_ptr, table_ptr, audio_ptr, mask_ptr, out_ptr,
    C,
    stride_ids_row, stride_ids_s,
    stride_table_v,
    stride_audio_row,
    stride_out_row,
    STREAMS: tl.constexpr, AUDIO_STREAMS: tl.constexpr,
    HAS_AUDIO: tl.constexpr, BLOCK_C: tl.constexpr, PDL: tl.constexpr,
):  # fmt: skip
    handoff(PDL)
    row = tl.program_id(0)  # one (b, t) position
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    in_row = cols < C
    if HAS_AUDIO:
        flag = tl.load(mask_ptr + row)  # uint8 of the bool mask
        # Columns of the audio streams' table rows to read: none where the features overwrite.
        table_cols = tl.where(flag == 0, C, 0)
        audio = tl.load(audio_ptr + row * stride_audio_row + cols, mask=in_row, other=0.0)
        audio = audio.to(tl.float32)
    acc = tl.zeros([BLOCK_C], dtype=tl.float32)
    for s in tl.static_range(STREAMS):
        token = tl.load(ids_ptr + row * stride_ids_row + s * stride_ids_s).to(tl.int64)
        if HAS_AUDIO and s < AUDIO_STREAMS:
            # A masked load reads nothing: overwritten streams cost no table traffic.
            emb = tl.load(
                table_ptr + token * stride_table_v + cols, mask=cols < table_cols, other=0.0
            ).to(tl.float32)
            emb = tl.where(flag != 0, audio, emb)
        else:
            emb = tl.load(table_ptr + token * stride_table_v + cols, mask=in_row, other=0.0)
            emb = emb.to(tl.float32)
        acc = round_to(acc + emb, out_ptr.dtype.element_ty)
    out = acc / STREAMS
    tl.store(out_ptr + row * stride_out_row + cols, out.to(out_ptr.dtype.element_ty), mask=in_row)


def embed_mean(
    ids: torch.Tensor,
    table: torch.Tensor,
    audio: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """ids (B, T, S) into table (V, C) -> (B, T, C) in the table's dtype; where mask (B, T) is
    set the S - 1 audio streams take audio (B, T, C) instead."""
    if not runs_kernel(ids, table):
        return embed_mean_ref(ids, table, audio, mask)
    B, T, streams = ids.shape
    C = table.shape[1]
    assert table.stride(1) == 1
    ids2 = ids.reshape(B * T, streams)
    out = torch.empty(B * T, C, device=table.device, dtype=table.dtype)
    has_audio = audio is not None
    if audio is not None:
        assert mask is not None, "the features overwrite where `mask` is set"
        audio2 = audio.reshape(B * T, C).to(table.dtype).contiguous()
        mask2 = mask.reshape(B * T).contiguous().view(torch.uint8)
    else:  # never read: HAS_AUDIO=False compiles the loads away
        audio2, mask2 = out, ids2
    grid = (B * T, triton.cdiv(C, BLOCK_C))
    _embed_mean_kernel[grid](
        ids2, table, audio2, mask2, out,
        C,
        ids2.stride(0), ids2.stride(1),
        table.stride(0),
        audio2.stride(0),
        out.stride(0),
        STREAMS=streams, AUDIO_STREAMS=streams - 1,
        HAS_AUDIO=has_audio, BLOCK_C=BLOCK_C,
        **launch_options(),
    )  # fmt: skip
    return out.view(B, T, C)


def embed_mean_ref(
    ids: torch.Tensor,
    table: torch.Tensor,
    audio: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """The torch computation (OmniLM.embed's): gather, overwrite, sum left to right, / S."""
    streams = ids.shape[-1]
    emb = table[ids]  # (B, T, S, C)
    if audio is not None:
        assert mask is not None, "the features overwrite where `mask` is set"
        is_audio = torch.arange(streams, device=ids.device) < streams - 1  # (S,): all but the text
        overwrite = mask[..., None, None] & is_audio[:, None]  # (B, T, S, 1)
        emb = torch.where(overwrite, audio[:, :, None, :].to(emb.dtype), emb)
    x = emb[:, :, 0]
    for stream in range(1, streams):
        x = x + emb[:, :, stream]
    return x / streams

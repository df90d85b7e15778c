"""Grouped-query attention for one new position per row, split over the keys (flash-decoding).

Row b attends with q (B, n_head, hs) to the first lengths[b] keys and values of its own cache
row slots[b] (cache layout (n_layer, slots, groups, max_seq, hs); head h reads group
h // q_per_kv):

    out[b, h] = softmax(q[b, h] . K[b, g]^T / sqrt(hs)) V[b, g]    over keys 0 .. lengths[b] - 1

Stage 1, grid (B, groups, splits): one program takes the q_per_kv queries of a group (padded to
a (BLOCK_H, BLOCK_D) tile for tl.dot) over one split of the row's keys, with an online softmax
in fp32 (base 2: the scale and log2(e) are one factor), and writes each query's normalised
partial output and log-sum-exp. The splits share a row's own keys 0 .. lengths[b] - 1 out
evenly, in whole BLOCK_N tiles (at most split_len keys each: the grid has max_length / split_len
splits), so a short context is as spread over the GPU as a long one instead of falling to the
first split or two. A split past a row's keys (a short row runs out of tiles) writes lse = -inf
and does nothing else (loads no query, writes no output, which is never read). Stage 2, grid
(B, n_head): weights the splits by exp2(lse - max lse). The grid depends only on `max_length`
(default: the cache's max_seq), never on the lengths' values, so a launch needs no host sync and
can be captured in a CUDA graph. `decode_attention_qkv(reduce=False)` skips stage 2 and returns
the splits (kernels/splits.py's SoftmaxSplits), for the product after the attention to combine as
it loads them: a launch fewer per block.

`decode_attention_qkv` takes the step's qkv product instead of q, and each row's new position
instead of its length (one more: the step's positions as they are, no add launched before it),
and does qkv_rope_cache's work in stage 1 (ROPE): each program rotates its group's queries (a
few hundred values) and reads the cache only before the new position; the one program whose
split holds that position rotates the new key, writes key and value to the cache, and adds them
to its softmax as one more key from registers. A decode step saves a launch per block and the
round trip of q through memory.
"""

import torch
import triton
import triton.language as tl

from kernels.gemv import programs_wanted
from kernels.qkv_rope_cache import qkv_rope_cache_ref, rope
from kernels.splits import SoftmaxSplits, SplitSums
from kernels.triton_support import (
    dot_dtype,
    handoff,
    launch_options,
    load_total,
    round_to,
    runs_kernel,
)

SPLIT_LEN = 128  # the most keys of a stage-1 program (batch 1: 16 splits of a 2048 cache)
BLOCK_N = 64  # keys per loop iteration
LOG2E = 1.4426950408889634


@triton.jit
def _decode_attention_kernel(
    q_ptr, k_ptr, v_ptr, slot_ptr, at_ptr, cos_ptr, sin_ptr, mid_o_ptr, mid_lse_ptr,
    qk_scale,
    stride_q_split, stride_q_b, stride_q_h, stride_rope_p,
    stride_cache_s, stride_cache_g, stride_cache_p,
    stride_mid_b, stride_mid_h, stride_mid_split,
    Q_PER_KV: tl.constexpr, HS: tl.constexpr, SPLITS: tl.constexpr, DOT_DTYPE: tl.constexpr,
    ROPE: tl.constexpr, Q_SPLITS: tl.constexpr,
    BLOCK_H: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, PDL: tl.constexpr,
):  # fmt: skip
    handoff(PDL)
    b, g, split = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    h = tl.arange(0, BLOCK_H)
    d = tl.arange(0, BLOCK_D)
    head = g * Q_PER_KV + h  # (BLOCK_H,) query heads of this group
    q_tile = (h < Q_PER_KV)[:, None] & (d < HS)[None, :]

    length = tl.load(at_ptr + b)  # the row's length; with ROPE its new position, one less
    if ROPE:
        length += 1
    chunk = tl.cdiv(tl.cdiv(length, SPLITS), BLOCK_N) * BLOCK_N  # this row's keys a split
    start = split * chunk
    end = tl.minimum(start + chunk, length)
    kv = tl.load(slot_ptr + b).to(tl.int64) * stride_cache_s + g * stride_cache_g
    pos = (length - 1).to(tl.int64)  # the row's new position
    # mid_lse (B, n_head, splits) and mid_o (B, n_head, splits, HS) are contiguous: one offset
    mid = b * stride_mid_b + head * stride_mid_h + split * stride_mid_split  # (BLOCK_H,)
    if start >= length:  # past the row's keys: no queries to rotate, no output to write
        no_keys = tl.full([BLOCK_H], float("-inf"), dtype=tl.float32)
        tl.store(mid_lse_ptr + mid, no_keys, mask=h < Q_PER_KV)
    else:
        cached = end  # keys read from the cache: all, or (ROPE) those before the new one
        if ROPE:  # q_ptr holds qkv rows (or their slices): per group its queries, key and value
            dtype = k_ptr.dtype.element_ty
            group = q_ptr + b * stride_q_b + g * (Q_PER_KV + 2) * HS
            cos, sin = cos_ptr + pos * stride_rope_p, sin_ptr + pos * stride_rope_p
            q = rope(group + h[:, None] * HS, d[None, :], q_tile, cos, sin, stride_q_split, HS,
                     Q_SPLITS, dtype)  # fmt: skip
            q = round_to(q, dtype).to(DOT_DTYPE)
            cached = tl.minimum(end, pos)
        else:
            q_offs = b * stride_q_b + head[:, None] * stride_q_h + d[None, :]
            q = tl.load(q_ptr + q_offs, mask=q_tile, other=0.0).to(DOT_DTYPE)  # zero padding rows
        m_i = tl.full([BLOCK_H], float("-inf"), dtype=tl.float32)
        l_i = tl.zeros([BLOCK_H], dtype=tl.float32)
        acc = tl.zeros([BLOCK_H, BLOCK_D], dtype=tl.float32)
        for n0 in range(start, cached, BLOCK_N):
            n = n0 + tl.arange(0, BLOCK_N)
            kv_tile = (n < cached)[:, None] & (d < HS)[None, :]
            offs = kv + n[:, None].to(tl.int64) * stride_cache_p + d[None, :]  # (BLOCK_N, BLOCK_D)
            k = tl.load(k_ptr + offs, mask=kv_tile, other=0.0).to(DOT_DTYPE)
            s = tl.dot(q, tl.trans(k), input_precision="ieee") * qk_scale  # (BLOCK_H, BLOCK_N)
            s = tl.where((n < cached)[None, :], s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, axis=1))
            alpha = tl.exp2(m_i - m_new)
            p = tl.exp2(s - m_new[:, None])
            l_i = l_i * alpha + tl.sum(p, axis=1)
            v = tl.load(v_ptr + offs, mask=kv_tile, other=0.0).to(DOT_DTYPE)
            acc = acc * alpha[:, None] + tl.dot(p.to(DOT_DTYPE), v, input_precision="ieee")
            m_i = m_new
        if ROPE and (start <= pos) & (pos < end):  # the new key and value: this program's to add
            m_i, l_i, acc = _new_key(q, group, stride_q_split, kv + pos * stride_cache_p, k_ptr,
                                     v_ptr, cos, sin, qk_scale, m_i, l_i, acc, d, Q_PER_KV, HS,
                                     Q_SPLITS)  # fmt: skip

        has_keys = l_i > 0
        out = acc / tl.where(has_keys, l_i, 1.0)[:, None]
        lse = tl.where(has_keys, m_i + tl.log2(tl.where(has_keys, l_i, 1.0)), float("-inf"))
        tl.store(mid_o_ptr + mid[:, None] * HS + d[None, :], out, mask=q_tile & has_keys[:, None])
        tl.store(mid_lse_ptr + mid, lse, mask=h < Q_PER_KV)


@triton.jit
def _new_key(q, group, stride_split, cache_off, k_ptr, v_ptr, cos, sin, qk_scale, m_i, l_i, acc,
             d, Q_PER_KV: tl.constexpr, HS: tl.constexpr, SPLITS: tl.constexpr):  # fmt: skip
    """The row's new key (rotated here) and value, from its qkv row at `group`: written to the
    cache at `cache_off` for the steps after this one, and added to this program's online
    softmax (m_i, l_i, acc) as one more key, from registers -> the updated (m_i, l_i, acc)."""
    dtype = k_ptr.dtype.element_ty
    k_new = rope(group + Q_PER_KV * HS, d, d < HS, cos, sin, stride_split, HS, SPLITS, dtype)
    k_new = round_to(k_new, dtype)  # (BLOCK_D,)
    v_new = load_total(group + (Q_PER_KV + 1) * HS, d, d < HS, stride_split, SPLITS, dtype)
    tl.store(k_ptr + cache_off + d, k_new.to(dtype), mask=d < HS)
    tl.store(v_ptr + cache_off + d, v_new.to(dtype), mask=d < HS)
    s = tl.sum(q.to(tl.float32) * k_new[None, :], axis=1) * qk_scale  # (BLOCK_H,)
    m_new = tl.maximum(m_i, s)
    alpha = tl.exp2(m_i - m_new)  # 0 when the split had no other keys (m_i = -inf)
    p = tl.exp2(s - m_new)
    acc = acc * alpha[:, None] + p[:, None] * v_new[None, :]
    return m_new, l_i * alpha + p, acc


@triton.jit
def _decode_attention_reduce_kernel(
    mid_o_ptr, mid_lse_ptr, out_ptr,
    stride_mid_b, stride_mid_h, stride_mid_split,
    stride_out_b, stride_out_h,
    SPLITS: tl.constexpr, HS: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr,
    PDL: tl.constexpr,
):  # fmt: skip
    handoff(PDL)
    b, h = tl.program_id(0), tl.program_id(1)
    sp = tl.arange(0, BLOCK_S)
    d = tl.arange(0, BLOCK_D)
    mid = b * stride_mid_b + h * stride_mid_h + sp * stride_mid_split  # (BLOCK_S,)
    lse = tl.load(mid_lse_ptr + mid, mask=sp < SPLITS, other=float("-inf"))
    w = tl.exp2(lse - tl.max(lse, axis=0))  # empty splits weigh 0
    tile = (lse > float("-inf"))[:, None] & (d < HS)[None, :]  # (their outputs are unwritten)
    o = tl.load(mid_o_ptr + mid[:, None] * HS + d[None, :], mask=tile, other=0.0)
    out = tl.sum(w[:, None] * o, axis=0) / tl.sum(w, axis=0)
    dst = out_ptr + b * stride_out_b + h * stride_out_h + d
    dtype = out_ptr.dtype.element_ty  # (round_to: the interpreter's cast to bf16 truncates)
    tl.store(dst, round_to(out, dtype).to(dtype), mask=d < HS)


def split_len_for(rows: int, groups: int, max_seq: int, device: torch.device) -> int:
    """The most keys a split takes, for a step of `rows` rows over a max_seq cache (the grid
    has max_seq / split_len splits): SPLIT_LEN, doubled while half as many splits still give
    the GPU kernels/gemv.py's programs_wanted(). A batch fills the GPU with fewer splits, and
    every split costs its partials' write and their combining (at batch 64 with 128 keys a
    split: 2048 programs a layer, where 512 fill 132 SMs)."""
    split_len, wanted = SPLIT_LEN, programs_wanted(device)
    while split_len < max_seq and rows * groups * triton.cdiv(max_seq, 2 * split_len) >= wanted:
        split_len *= 2
    return split_len


def decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    layer: int,
    slots: torch.Tensor,
    lengths: torch.Tensor,
    max_length: int | None = None,
    split_len: int = SPLIT_LEN,
) -> torch.Tensor:
    """q (B, n_head, hs), caches (n_layer, slots, groups, max_seq, hs), slots (B,), lengths (B,)
    with 1 <= lengths <= max_length (default max_seq) -> out (B, n_head, hs) in q's dtype (the
    caches')."""
    if not runs_kernel(q, k_cache):
        return decode_attention_ref(q, k_cache, v_cache, layer, slots, lengths)
    assert q.stride(2) == 1
    return _attention(q[None], None, k_cache, v_cache, layer, slots, lengths, max_length,
                      split_len, q.shape[1], q.stride(1))  # fmt: skip


def decode_attention_qkv(
    qkv: torch.Tensor | SplitSums,
    cos: torch.Tensor,
    sin: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    layer: int,
    slots: torch.Tensor,
    positions: torch.Tensor,
    max_length: int | None = None,
    split_len: int = SPLIT_LEN,
    reduce: bool = True,
) -> torch.Tensor | SoftmaxSplits:
    """A decode step's whole attention from its qkv product: qkv_rope_cache at `positions`,
    then decode_attention over lengths positions + 1, in the launches of decode_attention alone.

    qkv (B, groups * (q_per_kv + 2) * hs) with its bias, or its slices (a product split over
    K, summed here as they are loaded); cos/sin (max_seq, hs) fp32; positions (B,), each row's
    new position, below max_length (default max_seq); the rest as decode_attention -> out
    (B, n_head, hs) in the caches' dtype, or without `reduce` its SoftmaxSplits
    ((B, n_head * hs) once combined); writes each row's new key and value to its cache row.
    Every program rotates its group's queries itself; the program whose split holds the new
    position also rotates the key, writes both, and adds them to its softmax from
    registers."""
    if not runs_kernel(cos, k_cache):
        out = decode_attention_qkv_ref(qkv, cos, sin, k_cache, v_cache, layer, slots, positions)
        return out if reduce else _one_split(out)
    parts = qkv.parts if isinstance(qkv, SplitSums) else qkv[None]  # (S, B, width)
    groups, hs = k_cache.shape[2], k_cache.shape[4]
    n_head = parts.shape[2] // hs - 2 * groups
    assert parts.stride(2) == 1 and cos.dtype == sin.dtype == torch.float32
    assert cos.stride(1) == 1 and cos.stride() == sin.stride()
    return _attention(parts, (cos, sin), k_cache, v_cache, layer, slots, positions, max_length,
                      split_len, n_head, hs, reduce)  # fmt: skip


def _one_split(out: torch.Tensor) -> SoftmaxSplits:
    """An attention's output (B, n_head, hs) as its SoftmaxSplits: one split holding it all."""
    B, n_head, hs = out.shape
    lse = torch.zeros(B, n_head, 1, device=out.device)
    return SoftmaxSplits(out.float()[:, :, None].contiguous(), lse, out.dtype)


def _attention(
    parts, rope_tables, k_cache, v_cache, layer, slots, at, max_length, split_len, n_head,
    stride_q_h, reduce=True,
):  # fmt: skip
    """Both launches of either launcher (the first only without `reduce`); parts (S, B, ...):
    the queries (S = 1) and `at` their lengths, or the qkv rows or their slices with
    rope_tables and `at` their positions."""
    B, dtype = parts.shape[1], k_cache.dtype
    _, _, groups, max_seq, hs = k_cache.shape
    block_n = min(BLOCK_N, split_len)
    assert split_len % block_n == 0
    k_layer, v_layer = k_cache[layer], v_cache[layer]  # (slots, groups, max_seq, hs)
    assert k_layer.stride() == v_layer.stride() and k_layer.stride(3) == 1
    cos, sin = rope_tables if rope_tables is not None else (k_layer, k_layer)
    splits = triton.cdiv(max_length or max_seq, split_len)
    mid_o = torch.empty(B, n_head, splits, hs, device=k_cache.device, dtype=torch.float32)
    mid_lse = torch.empty(B, n_head, splits, device=k_cache.device, dtype=torch.float32)
    block_d = max(16, triton.next_power_of_2(hs))  # tl.dot takes no dimension under 16
    _decode_attention_kernel[(B, groups, splits)](
        parts, k_layer, v_layer, slots, at, cos, sin, mid_o, mid_lse,
        hs**-0.5 * LOG2E,
        parts.stride(0), parts.stride(1), stride_q_h, cos.stride(0),
        k_layer.stride(0), k_layer.stride(1), k_layer.stride(2),
        mid_lse.stride(0), mid_lse.stride(1), mid_lse.stride(2),
        Q_PER_KV=n_head // groups, HS=hs, SPLITS=splits, DOT_DTYPE=dot_dtype(dtype),
        ROPE=rope_tables is not None, Q_SPLITS=parts.shape[0],
        BLOCK_H=max(16, triton.next_power_of_2(n_head // groups)), BLOCK_N=block_n,
        BLOCK_D=block_d,
        **launch_options(),
    )  # fmt: skip
    if not reduce:
        return SoftmaxSplits(mid_o, mid_lse, dtype)
    out = torch.empty(B, n_head, hs, device=k_cache.device, dtype=dtype)
    _decode_attention_reduce_kernel[(B, n_head)](
        mid_o, mid_lse, out,
        mid_lse.stride(0), mid_lse.stride(1), mid_lse.stride(2),
        out.stride(0), out.stride(1),
        SPLITS=splits, HS=hs, BLOCK_S=triton.next_power_of_2(splits), BLOCK_D=block_d,
        **launch_options(),
    )  # fmt: skip
    return out


def decode_attention_ref(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    layer: int,
    slots: torch.Tensor,
    lengths: torch.Tensor,
) -> torch.Tensor:
    """The torch computation (the model's decode attention: fp32 throughout, one rounding
    at the end), each row masked to its own length."""
    B, n_head, hs = q.shape
    groups = k_cache.shape[2]
    length = int(lengths.max())
    k = k_cache[layer][slots, :, :length].float()  # (B, groups, length, hs)
    v = v_cache[layer][slots, :, :length].float()
    keep = torch.arange(length, device=q.device) < lengths[:, None]  # (B, length)
    qf = q.view(B, groups, n_head // groups, hs).float()  # a group's queries are its rows
    scores = (qf @ k.transpose(-1, -2)) * hs**-0.5  # (B, groups, q_per_kv, length)
    scores = scores.masked_fill(~keep[:, None, None, :], float("-inf"))
    out = torch.softmax(scores, dim=-1) @ v  # (B, groups, q_per_kv, hs)
    return out.to(q.dtype).view(B, n_head, hs)


def decode_attention_qkv_ref(
    qkv: torch.Tensor | SplitSums,
    cos: torch.Tensor,
    sin: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    layer: int,
    slots: torch.Tensor,
    positions: torch.Tensor,
) -> torch.Tensor:
    """The torch computation: qkv_rope_cache_ref at `positions`, then decode_attention_ref
    over lengths positions + 1."""
    qkv = qkv.total() if isinstance(qkv, SplitSums) else qkv
    q = qkv_rope_cache_ref(qkv[:, None], cos, sin, positions[:, None], slots, k_cache, v_cache,
                           layer)  # fmt: skip
    return decode_attention_ref(q[:, :, 0], k_cache, v_cache, layer, slots, positions + 1)

"""Split the fused qkv projection, rotate queries and keys, write keys and values to the cache.

The qkv row of a position is litgpt's per-group interleave: (groups, q_per_kv + 2, hs) with
[q_0 .. q_{q_per_kv-1}, k, v] in each group. With p = positions[b, t] and rotate-half RoPE,

    rope(x) = x * cos[p] + rotate_half(x) * sin[p],  rotate_half(x) = cat(-x[hs/2:], x[:hs/2])
    q[b, g * q_per_kv + j, t]                       = rope(qkv[b, t, g, j])
    k_cache[layer, slots[b], g, p] = rope(qkv[b, t, g, q_per_kv])
    v_cache[layer, slots[b], g, p] = qkv[b, t, g, q_per_kv + 1]

computed in fp32 and rounded once to the model dtype, as the model's apply_rope does.
One program per (position, group) holds its q_per_kv + 2 heads as one (BLOCK_J, BLOCK_D) tile.
A decode step does the same inside its attention (decode_attention_qkv, which shares `rope`).
"""

import torch
import triton
import triton.language as tl

from kernels.triton_support import handoff, launch_options, load_total, runs_kernel


@triton.jit
def rope(
    head_ptr, d, mask, cos_ptr, sin_ptr, stride_split,
    HS: tl.constexpr, SPLITS: tl.constexpr, DTYPE: tl.constexpr,
):  # fmt: skip
    """RoPE of the heads at head_ptr (each hs long; the sum of SPLITS fp32 slices rounded to
    DTYPE, or one tensor in DTYPE) at one position, whose cos and sin rows are at cos_ptr and
    sin_ptr: fp32, not rounded. d: the offsets within a head, broadcast against head_ptr;
    mask: which of them are loaded. The rotated half is a second, permuted load of the same
    (cached) row."""
    x = load_total(head_ptr, d, mask, stride_split, SPLITS, DTYPE)
    half = HS // 2
    x_rot = load_total(head_ptr, (d + half) % HS, mask, stride_split, SPLITS, DTYPE)
    x_rot = tl.where(d < half, -x_rot, x_rot)
    cos = tl.load(cos_ptr + d, mask=d < HS, other=0.0).to(tl.float32)
    sin = tl.load(sin_ptr + d, mask=d < HS, other=0.0).to(tl.float32)
    return x * cos + x_rot * sin


@triton.jit
def _qkv_rope_cache_kernel(
    qkv_ptr, cos_ptr, sin_ptr, pos_ptr, slot_ptr, q_ptr, k_ptr, v_ptr,
    T,
    stride_qkv_b, stride_qkv_t,
    stride_rope_p,
    stride_pos_b, stride_pos_t,
    stride_q_b, stride_q_h, stride_q_t,
    stride_cache_s, stride_cache_g, stride_cache_p,
    Q_PER_KV: tl.constexpr, HS: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_D: tl.constexpr,
    PDL: tl.constexpr,
):  # fmt: skip
    handoff(PDL)
    b, t = tl.program_id(0) // T, tl.program_id(0) % T
    g = tl.program_id(1)
    j = tl.arange(0, BLOCK_J)[:, None]  # head within the group: q_per_kv queries, k, v
    d = tl.arange(0, BLOCK_D)[None, :]
    tile = (j < Q_PER_KV + 2) & (d < HS)
    head = qkv_ptr + b * stride_qkv_b + t * stride_qkv_t + (g * (Q_PER_KV + 2) + j) * HS
    pos = tl.load(pos_ptr + b * stride_pos_b + t * stride_pos_t).to(tl.int64)
    x = tl.load(head + d, mask=tile, other=0.0).to(tl.float32)  # (BLOCK_J, BLOCK_D)
    cos, sin = cos_ptr + pos * stride_rope_p, sin_ptr + pos * stride_rope_p
    roped = rope(head, d, tile, cos, sin, 0, HS, 1, qkv_ptr.dtype.element_ty)

    q_dst = q_ptr + b * stride_q_b + (g * Q_PER_KV + j) * stride_q_h + t * stride_q_t + d
    tl.store(q_dst, roped.to(q_ptr.dtype.element_ty), mask=tile & (j < Q_PER_KV))
    slot = tl.load(slot_ptr + b).to(tl.int64)
    cache_off = slot * stride_cache_s + g * stride_cache_g + pos * stride_cache_p + d
    kv = tl.where(j == Q_PER_KV, roped, x)  # keys rotated, values as they are
    zero = tl.zeros_like(j)  # k and v rows both land on the cache row of (slot, g, pos)
    tl.store(k_ptr + cache_off + zero, kv.to(k_ptr.dtype.element_ty), mask=tile & (j == Q_PER_KV))
    tl.store(
        v_ptr + cache_off + zero, kv.to(v_ptr.dtype.element_ty), mask=tile & (j == Q_PER_KV + 1)
    )


def qkv_rope_cache(
    qkv: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    positions: torch.Tensor,
    slots: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    layer: int,
) -> torch.Tensor:
    """qkv (B, T, groups * (q_per_kv + 2) * hs) with its bias, cos/sin (max_seq, hs),
    positions (B, T), slots (B,), caches (n_layer, slots, groups, max_seq, hs)
    -> q (B, n_head, T, hs) in qkv's dtype; writes k and v of every (b, t) into the caches."""
    if not runs_kernel(qkv, k_cache):
        return qkv_rope_cache_ref(qkv, cos, sin, positions, slots, k_cache, v_cache, layer)
    B, T, width = qkv.shape
    _, _, groups, _, hs = k_cache.shape
    q_per_kv = width // (groups * hs) - 2
    k_layer, v_layer = k_cache[layer], v_cache[layer]  # (slots, groups, max_seq, hs)
    # fp32 tables, as load_lm builds them: the model then rotates in fp32 and rounds once
    assert cos.dtype == sin.dtype == torch.float32
    assert qkv.stride(2) == 1 and cos.stride(1) == 1 and cos.stride() == sin.stride()
    assert k_layer.stride() == v_layer.stride() and k_layer.stride(3) == 1
    q = torch.empty(B, groups * q_per_kv, T, hs, device=qkv.device, dtype=qkv.dtype)
    _qkv_rope_cache_kernel[(B * T, groups)](
        qkv, cos, sin, positions, slots, q, k_layer, v_layer,
        T,
        qkv.stride(0), qkv.stride(1),
        cos.stride(0),
        positions.stride(0), positions.stride(1),
        q.stride(0), q.stride(1), q.stride(2),
        k_layer.stride(0), k_layer.stride(1), k_layer.stride(2),
        Q_PER_KV=q_per_kv, HS=hs,
        BLOCK_J=triton.next_power_of_2(q_per_kv + 2), BLOCK_D=triton.next_power_of_2(hs),
        **launch_options(),
    )  # fmt: skip
    return q


def qkv_rope_cache_ref(
    qkv: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    positions: torch.Tensor,
    slots: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    layer: int,
) -> torch.Tensor:
    """The torch computation (Attention.forward's split, RoPE and cache write)."""
    B, T, width = qkv.shape
    _, _, groups, _, hs = k_cache.shape
    q_per_kv = width // (groups * hs) - 2
    qkv = qkv.view(B, T, groups, q_per_kv + 2, hs).permute(0, 2, 3, 1, 4)  # (B, g, j, T, hs)
    cos_bt, sin_bt = cos[positions][:, None], sin[positions][:, None]  # (B, 1, T, hs)
    qk = rope_ref(qkv[:, :, : q_per_kv + 1].reshape(B, -1, T, hs), cos_bt, sin_bt)
    qk = qk.view(B, groups, q_per_kv + 1, T, hs)
    rows = slots[:, None]  # (B, 1) broadcasts against positions (B, T)
    k_cache[layer][rows, :, positions] = qk[:, :, q_per_kv].transpose(1, 2).to(k_cache.dtype)
    v_cache[layer][rows, :, positions] = qkv[:, :, q_per_kv + 1].transpose(1, 2).to(v_cache.dtype)
    return qk[:, :, :q_per_kv].reshape(B, groups * q_per_kv, T, hs)


def rope_ref(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half RoPE of x (..., hs) with cos/sin broadcast against it: x cos + rotate_half(x)
    sin, in the tables' dtype (fp32), rounded once to x's dtype."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)  # rotate_half(x)
    return ((x * cos) + (rotated * sin)).to(x.dtype)

"""The decode step's products for a few rows, with the ops around them fused in.

For x (M, K) and a weight W (N, K), one launch computes

    y = f(norm(x) W^T + bias)

    norm(x) = rmsnorm(x + residual) * g      (optional prologue: the block's add + RMSNorm;
                                              s = x + residual is written too, once)
    f(z)    = silu(z[:, :N]) * z[:, N:]      (optional SwiGLU epilogue: W is fc_12, (2N, K))

or, split over K, the fp32 partial products `SplitSums.parts` (S, M, N): slice i of K summed
by its own programs (the bias in slice 0's), so that a product with too few columns to fill
the GPU (qkv's 1152, the projections' 896) still does. The split is not reduced here: the
next launch that reads the product (this kernel's prologue, kernels/add_rmsnorm.py, or the
attention for qkv) sums the slices as it loads them, so the split costs no launch.
Likewise x may be an attention's output left as its splits over the keys (`SoftmaxSplits`,
kernels/decode_attention.py's first stage): the loop weighs and sums each element's splits
as it loads it, which does the attention's second launch inside this one. Both kinds of
parts are kernels/splits.py's.

Rounding follows the model's: the product (sum of slices) is rounded to the model dtype before
the residual add, the add is rounded, the norm as in add_rmsnorm, SwiGLU as in swiglu.

Grid (cdiv(N, BLOCK_N), cdiv(M, BLOCK_M), S). Each program streams BLOCK_N rows of W over its
slice of K once, for up to BLOCK_M rows of x: for up to FMA_MAX_ROWS rows as fp32 products
summed over a (BLOCK_M, BLOCK_N, BLOCK_K) tile, for more through tl.dot (BLOCK_M at least 16,
the tensor cores' smallest tile; padding rows cost registers, not memory). The norm prologue reads
its rows of x twice (sum of squares, then the product) in every program; that is a few KB per
program for a decode step's few rows, and the step normalises separately for larger batches.
Both loops over K are software-pipelined (tl.range with NUM_STAGES: cp.async copies of 16 bytes
a thread into shared memory, several tiles ahead), which a plain range() only does for loads
that feed a tl.dot.
"""

from dataclasses import dataclass
from functools import cache

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from kernels.add_rmsnorm import add_rmsnorm_ref
from kernels.splits import SoftmaxSplits, SplitSums
from kernels.swiglu import swiglu_ref
from kernels.triton_support import (
    dot_dtype,
    handoff,
    interpreting,
    launch_options,
    load_total,
    prefetch_l2,
    round_to,
    runs_kernel,
)

MAX_BLOCK_M = 64  # rows of x per program; more rows take another tile (another pass over W)
FMA_MAX_ROWS = 4  # up to this many rows no tl.dot (it would pad them to 16)
SMS_FALLBACK = 132  # the H100 SXM's, where the device cannot say (the interpreter)
# Programs a launch aims to give each SM: a GEMV is bound by the loads it has in flight, and
# one program's pipeline (num_stages tiles) is not enough to cover HBM's latency on its own.
PROGRAMS_PER_SM = 2
# Pipeline stages at most when x is an attention's splits: each K tile then also loads every
# split's tile of the attention's output and log-sum-exps, and the pipeline holds them all (4
# stages of a 1-row product spill registers on sm_90, per tests/kernels/compile_check.py). The
# projection's slice of K is 3 tiles at the released shapes anyway.
SOFTMAX_SPLITS_STAGES = 2
L2_LINE_BYTES = 128  # what one L2 prefetch brings in
# Shared memory a program may take (cudaDevAttrMaxSharedMemoryPerBlockOptin, which Triton
# checks each launch against), where the device cannot say: the H100's, as SMS_FALLBACK.
SHARED_FALLBACK = 232448
# Kept free of the pipeline's tiles: the reductions' and the epilogue's scratch.
SHARED_RESERVE = 4096


@dataclass(frozen=True)
class Norm:
    """The prologue: x + residual (None: x alone), then RMSNorm with `weight` and `eps`."""

    weight: torch.Tensor  # (K,)
    residual: torch.Tensor | None  # (M, K)
    eps: float


@dataclass(frozen=True)
class Tiles:
    """Launch shape, chosen by `choose_tiles()` unless given (benchmarks/kernels/gemv.py sweeps
    them). Every variant the bf16 step launches compiles for sm_90 without spilling registers,
    at these defaults and with BLOCK_K 128 (tests/kernels/compile_check.py, specialised as the
    JIT specialises). num_stages: tiles of W each program has
    in flight, plus one. A GEMV is bound by the bytes in flight: HBM's ~3.35 TB/s x ~0.7 us
    is ~18 KB per SM, where a program with 2 stages keeps one 2 KB tile in flight and a
    launch gives an SM about 2 programs."""

    block_n: int = 16
    block_k: int = 64
    num_warps: int = 4
    num_stages: int = 4
    dot: bool | None = None  # tl.dot or FMAs; None: tl.dot above FMA_MAX_ROWS rows
    # Ask L2 for all of a program's lines of W before its loop: None: when launched as a
    # programmatic dependent (while the launch before it drains); True: always (more bytes in
    # flight from the start, as the sweep times it); False: never.
    prefetch: bool | None = None


@triton.jit
def load_sum(
    x_ptr, r_ptr, rows, ks, mask, stride_x_split, stride_x_m, stride_r_m,
    X_SPLITS: tl.constexpr, HAS_RESIDUAL: tl.constexpr, DTYPE: tl.constexpr,
):  # fmt: skip
    """(rows, ks) of x (the sum of X_SPLITS slices, rounded to DTYPE), plus the residual
    (rounded again) when there is one; fp32."""
    offs = rows[:, None].to(tl.int64) * stride_x_m + ks[None, :]
    x = load_total(x_ptr, offs, mask, stride_x_split, X_SPLITS, DTYPE)
    if HAS_RESIDUAL:
        r_offs = rows[:, None].to(tl.int64) * stride_r_m + ks[None, :]
        x = round_to(x + tl.load(r_ptr + r_offs, mask=mask, other=0.0).to(tl.float32), DTYPE)
    return x


@triton.jit
def load_softmax_splits(
    o_ptr, lse_ptr, rows, ks, mask, stride_o_m, stride_lse_m,
    SPLITS: tl.constexpr, HS: tl.constexpr, DTYPE: tl.constexpr,
):  # fmt: skip
    """(rows, ks) of an attention's output from its SoftmaxSplits (out (M, n_head, SPLITS, HS)
    and lse (M, n_head, SPLITS), contiguous), rounded to DTYPE; fp32. Split by split, in the
    tile's own layout (a (rows, splits, ks) tile would not be, and costs registers): the
    largest log-sum-exp first, then the weighted sum. A split without keys reads nothing of
    `out`."""
    row = rows[:, None].to(tl.int64)
    head_split = (ks // HS * SPLITS)[None, :]  # (1, BLOCK_K): split 0 of each element's head
    lse_at = lse_ptr + row * stride_lse_m + head_split  # (BLOCK_M, BLOCK_K)
    o_at = o_ptr + row * stride_o_m + head_split * HS + (ks % HS)[None, :]
    top = tl.full(mask.shape, float("-inf"), tl.float32)
    for split in tl.static_range(SPLITS):  # unrolled: the loads go out together
        top = tl.maximum(top, tl.load(lse_at + split, mask=mask, other=float("-inf")))
    top = tl.where(top > float("-inf"), top, 0.0)  # masked out: every weight 0
    total = tl.zeros(mask.shape, tl.float32)
    weights = tl.zeros(mask.shape, tl.float32)
    for split in tl.static_range(SPLITS):  # unrolled: the loads go out together
        lse = tl.load(lse_at + split, mask=mask, other=float("-inf"))
        w = tl.exp2(lse - top)
        total += w * tl.load(o_at + split * HS, mask=lse > float("-inf"), other=0.0)
        weights += w
    # weights >= 1 where any split has keys (the largest weighs exp2(0)), 0 where masked out
    return round_to(total / tl.maximum(weights, 1.0), DTYPE)


@triton.jit
def times_t(a, w, USE_DOT: tl.constexpr, DOT_DTYPE: tl.constexpr):
    """a (BLOCK_M, BLOCK_K) fp32 times w (BLOCK_N, BLOCK_K) transposed -> fp32 (BLOCK_M,
    BLOCK_N): tensor cores, or the products of a broadcast tile summed over K."""
    if USE_DOT:
        out = tl.dot(a.to(DOT_DTYPE), tl.trans(w.to(DOT_DTYPE)), input_precision="ieee")
    else:
        out = tl.sum(a[:, None, :] * w.to(tl.float32)[None, :, :], axis=2)
    return out


@triton.jit
def _gemv_kernel(
    x_ptr, lse_ptr, r_ptr, g_ptr, w_ptr, b_ptr, y_ptr, s_ptr,
    M, N, K, k_per_split, eps,
    stride_x_split, stride_x_m, stride_lse_m, stride_r_m, stride_w_n, stride_y_split, stride_y_m,
    stride_s_m,
    X_SPLITS: tl.constexpr, KEY_SPLITS: tl.constexpr, HS: tl.constexpr,
    NORM: tl.constexpr, HAS_RESIDUAL: tl.constexpr,
    WRITE_S: tl.constexpr, HAS_BIAS: tl.constexpr, SWIGLU: tl.constexpr,
    USE_DOT: tl.constexpr, DOT_DTYPE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, NUM_STAGES: tl.constexpr,
    PDL: tl.constexpr, PREFETCH: tl.constexpr, LINE: tl.constexpr, LINE_POINTS: tl.constexpr,
):  # fmt: skip
    pid_n, pid_m, split = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    dtype = w_ptr.dtype.element_ty  # the model's
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # (BLOCK_M,)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # (BLOCK_N,)
    in_m, in_n = rows < M, cols < N
    k_start = split * k_per_split
    k_end = tl.minimum(K, k_start + k_per_split)
    w_rows = cols[:, None].to(tl.int64) * stride_w_n  # (BLOCK_N, 1)
    if PREFETCH:  # W never changes: with PDL its lines go to L2 while the launch before drains
        for k0 in range(k_start, k_end, BLOCK_K):
            # points at most LINE apart from the tile's first element to its last: one in
            # every line the tile touches, aligned or not
            last = tl.minimum(k0 + BLOCK_K, k_end) - 1
            ks = tl.minimum(k0 + tl.arange(0, LINE_POINTS) * LINE, last)
            lines = w_ptr + w_rows + ks[None, :]  # (BLOCK_N, LINE_POINTS)
            prefetch_l2(lines, in_n[:, None])
            if SWIGLU:
                prefetch_l2(lines + N * stride_w_n, in_n[:, None])
    handoff(PDL)

    rstd = tl.full([BLOCK_M], 1.0, tl.float32)
    if NORM:  # first pass: each row's sum of squares over the whole of K
        squares = tl.zeros([BLOCK_M], dtype=tl.float32)
        for k0 in tl.range(0, K, BLOCK_K, num_stages=NUM_STAGES):  # (pipelined as below)
            ks = k0 + tl.arange(0, BLOCK_K)
            tile = in_m[:, None] & (ks < K)[None, :]
            s = load_sum(x_ptr, r_ptr, rows, ks, tile, stride_x_split, stride_x_m, stride_r_m,
                         X_SPLITS, HAS_RESIDUAL, dtype)  # fmt: skip
            if WRITE_S:  # the new residual stream, from one program per row tile
                out = s_ptr + rows[:, None].to(tl.int64) * stride_s_m + ks[None, :]
                writes = rows < tl.where(pid_n == 0, M, 0)  # (a scalar flag as a mask)
                tl.store(out, s.to(dtype), mask=tile & writes[:, None])
            squares += tl.sum(s * s, axis=1)
        rstd = tl.math.rsqrt(squares / K + eps)

    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    acc_up = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)  # SwiGLU's second half
    # NUM_STAGES - 1 tiles of W in flight ahead of the one being summed
    for k0 in tl.range(k_start, k_end, BLOCK_K, num_stages=NUM_STAGES):
        ks = k0 + tl.arange(0, BLOCK_K)
        in_k = ks < k_end
        x_tile = in_m[:, None] & in_k[None, :]
        if KEY_SPLITS > 0:  # x: an attention's SoftmaxSplits (no norm)
            a = load_softmax_splits(x_ptr, lse_ptr, rows, ks, x_tile, stride_x_m, stride_lse_m,
                                    KEY_SPLITS, HS, dtype)  # fmt: skip
        else:
            a = load_sum(x_ptr, r_ptr, rows, ks, x_tile, stride_x_split, stride_x_m, stride_r_m,
                         X_SPLITS, HAS_RESIDUAL, dtype)  # fmt: skip
        if NORM:
            g = tl.load(g_ptr + ks, mask=in_k, other=0.0).to(tl.float32)
            a = round_to(round_to(a * rstd[:, None], dtype) * g[None, :], dtype)
        w_tile = in_n[:, None] & in_k[None, :]
        w = tl.load(w_ptr + w_rows + ks[None, :], mask=w_tile, other=0.0)
        acc += times_t(a, w, USE_DOT, DOT_DTYPE)
        if SWIGLU:
            w = tl.load(w_ptr + N * stride_w_n + w_rows + ks[None, :], mask=w_tile, other=0.0)
            acc_up += times_t(a, w, USE_DOT, DOT_DTYPE)

    if HAS_BIAS:  # in the first slice only
        bias = tl.load(b_ptr + cols, mask=cols < tl.where(split == 0, N, 0), other=0.0)
        acc += bias.to(tl.float32)[None, :]
    if SWIGLU:
        gate = round_to(acc, dtype)
        gate = round_to(gate / (1.0 + tl.exp(-gate)), dtype)
        acc = gate * round_to(acc_up, dtype)
    out_type = y_ptr.dtype.element_ty  # the model's, or fp32 for slices
    out = y_ptr + split * stride_y_split + rows[:, None].to(tl.int64) * stride_y_m + cols[None, :]
    tl.store(out, round_to(acc, out_type).to(out_type), mask=in_m[:, None] & in_n[None, :])


def gemv(
    x: torch.Tensor | SplitSums | SoftmaxSplits,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    norm: Norm | None = None,
    swiglu: bool = False,
    split_k: int = 1,
    tiles: Tiles | None = None,
) -> tuple[torch.Tensor | SplitSums, torch.Tensor | None]:
    """x (M, K), its slices or an attention's splits (then without a norm), weight (N, K)
    ((2 N, K) with swiglu), bias (N,) -> (y, s): y = f(norm(x) weight^T + bias) (M, N) in the
    model dtype, or with split_k > 1 its SplitSums (the bias in the first slice; SwiGLU needs
    split_k 1); s = x + norm.residual (x itself without a residual), None without a norm."""
    if not runs_kernel(weight):
        return gemv_ref(x, weight, bias, norm, swiglu, split_k)
    lse, key_splits, hs = weight, 0, 1  # (lse is not read unless x is a SoftmaxSplits)
    if isinstance(x, SoftmaxSplits):
        assert norm is None, "an attention's splits take no norm"
        assert x.out.is_contiguous() and x.lse.is_contiguous()
        M, heads, key_splits, hs = x.out.shape
        parts, lse, K = x.out.view(1, M, -1), x.lse, heads * hs  # parts (1, M, heads * S * hs)
    else:
        parts = x.parts if isinstance(x, SplitSums) else x[None]  # (X_SPLITS, M, K)
        _, M, K = parts.shape
    N = weight.shape[0] // (2 if swiglu else 1)
    assert parts.stride(2) == 1 and weight.stride(1) == 1 and weight.shape[1] == K
    assert split_k == 1 or not swiglu, "SwiGLU needs the whole product"
    tiles = tiles or choose_tiles(N, weight.device)
    dtype = weight.dtype
    k_per_split, splits = _slices(K, tiles.block_k, split_k)
    out_dtype = torch.float32 if split_k > 1 else dtype
    y = torch.empty(splits, M, N, device=weight.device, dtype=out_dtype)
    s, r, write_s = _residual_out(parts, norm, dtype)
    use_dot, block_m, stages = launch_shape(x, weight, swiglu, tiles)
    grid = (triton.cdiv(N, tiles.block_n), triton.cdiv(M, block_m), splits)
    line = max(1, L2_LINE_BYTES // weight.element_size())  # W's elements a cache line holds
    g = norm.weight if norm is not None else weight
    options = launch_options()
    prefetch = options["PDL"] if tiles.prefetch is None else tiles.prefetch
    _gemv_kernel[grid](
        parts, lse, r, g, weight, bias if bias is not None else weight, y, s,
        M, N, K, k_per_split, norm.eps if norm is not None else 0.0,
        parts.stride(0), parts.stride(1), lse.stride(0), r.stride(0), weight.stride(0),
        y.stride(0), y.stride(1), s.stride(0),
        X_SPLITS=parts.shape[0], KEY_SPLITS=key_splits, HS=hs, NORM=norm is not None,
        HAS_RESIDUAL=norm is not None and norm.residual is not None, WRITE_S=write_s,
        HAS_BIAS=bias is not None, SWIGLU=swiglu, USE_DOT=use_dot, DOT_DTYPE=dot_dtype(dtype),
        BLOCK_M=block_m, BLOCK_N=tiles.block_n, BLOCK_K=tiles.block_k,
        NUM_STAGES=stages, num_warps=tiles.num_warps, num_stages=stages,
        PREFETCH=prefetch and not interpreting(),  # (PTX of its own: none in the interpreter)
        LINE=line, LINE_POINTS=triton.next_power_of_2(triton.cdiv(tiles.block_k - 1, line) + 1),
        **options,
    )  # fmt: skip
    out = SplitSums(y, dtype) if split_k > 1 else y[0]
    return out, (s if norm is not None else None)


def launch_shape(
    x: torch.Tensor | SplitSums | SoftmaxSplits, weight: torch.Tensor, swiglu: bool, tiles: Tiles
) -> tuple[bool, int, int]:
    """(tl.dot or FMAs, BLOCK_M, pipeline stages) of gemv's launch for these operands: the
    stages asked for by `tiles`, at most SOFTMAX_SPLITS_STAGES over an attention's splits, and
    as many as fit the device's shared memory (stages_that_fit)."""
    stages, M = tiles.num_stages, x.shape[0]
    if isinstance(x, SoftmaxSplits):
        stages, x_bytes = min(stages, SOFTMAX_SPLITS_STAGES), x.out.element_size()
    else:
        x_bytes = (x.parts if isinstance(x, SplitSums) else x).element_size()
    use_dot = M > FMA_MAX_ROWS if tiles.dot is None else tiles.dot
    block_m = triton.next_power_of_2(M)
    block_m = min(MAX_BLOCK_M, max(16, block_m)) if use_dot else min(FMA_MAX_ROWS, block_m)
    # (M rows of x, and W's rows: both halves of fc_12 with SwiGLU) per BLOCK_K of the loop
    row_bytes = block_m * x_bytes + (2 if swiglu else 1) * tiles.block_n * weight.element_size()
    return use_dot, block_m, stages_that_fit(stages, row_bytes * tiles.block_k, weight.device)


def _residual_out(parts: torch.Tensor, norm: Norm | None, dtype: torch.dtype):
    """(s buffer, residual input, whether the kernel writes s): s is x itself when the prologue
    adds nothing to a plain x."""
    _, M, K = parts.shape
    if norm is None:
        return parts[0], parts[0], False
    residual = norm.residual
    if residual is None and parts.shape[0] == 1 and parts.dtype == dtype:
        return parts[0], parts[0], False
    assert residual is None or (residual.shape == (M, K) and residual.stride(1) == 1)
    s = torch.empty(M, K, device=parts.device, dtype=dtype)
    return s, (residual if residual is not None else s), True


def choose_tiles(n: int, device: torch.device) -> Tiles:
    """The widest BLOCK_N (64, 32 or 16 rows of W per program) that still gives every SM
    PROGRAMS_PER_SM programs; the narrowest otherwise."""
    programs = programs_wanted(device)
    block_n = next((b for b in (64, 32) if triton.cdiv(n, b) >= programs), 16)
    return Tiles(block_n=block_n)


def split_for(k: int, n: int, device: torch.device, tiles: Tiles | None = None) -> int:
    """Slices over K that give every SM PROGRAMS_PER_SM programs for an (n, k) weight (as
    `gemv(split_k=)` will cut them: whole K tiles, so at most one per tile)."""
    tiles = tiles or choose_tiles(n, device)
    wanted = triton.cdiv(programs_wanted(device), triton.cdiv(n, tiles.block_n))
    return _slices(k, tiles.block_k, wanted)[1]


def _slices(k: int, block_k: int, split_k: int) -> tuple[int, int]:
    """(K per slice, slices): split_k slices of whole tiles, fewer when K has fewer tiles."""
    k_per_split = triton.cdiv(triton.cdiv(k, block_k), split_k) * block_k
    return k_per_split, triton.cdiv(k, k_per_split)


def programs_wanted(device: torch.device) -> int:
    """Programs a launch on `device` aims for: PROGRAMS_PER_SM for each of its SMs."""
    if device.type != "cuda":
        return PROGRAMS_PER_SM * SMS_FALLBACK
    index = device.index if device.index is not None else torch.cuda.current_device()
    return PROGRAMS_PER_SM * _sms(index)


@cache
def _sms(index: int) -> int:
    """SMs of CUDA device `index` (asked once: every launch without tiles needs it)."""
    return torch.cuda.get_device_properties(index).multi_processor_count


def stages_that_fit(stages: int, stage_bytes: int, device: torch.device) -> int:
    """At most `stages`, fewer where their tiles would not fit in a program's shared memory on
    `device` (else Triton refuses the launch): the pipeline holds stages - 1 tiles of x and W in
    shared memory, `stage_bytes` each. The products' tiles are sized for Hopper's 227 KB; an
    RTX 30 or 40 GPU (sm_86, sm_89) gives a program 99 KB, and a small one picks the widest
    tiles (choose_tiles: fewer SMs to fill). Not below 2 (one tile ahead of the loop) unless
    `stages` is."""
    fitting = (shared_limit(device) - SHARED_RESERVE) // stage_bytes + 1
    return min(stages, max(2, fitting))


def shared_limit(device: torch.device) -> int:
    """Bytes of shared memory a program may take on `device` (SHARED_FALLBACK off CUDA)."""
    if device.type != "cuda":
        return SHARED_FALLBACK
    index = device.index if device.index is not None else torch.cuda.current_device()
    return _shared_limit(index)


@cache
def _shared_limit(index: int) -> int:
    properties = torch.cuda.get_device_properties(index)
    return getattr(properties, "shared_memory_per_block_optin", SHARED_FALLBACK)


def gemv_ref(
    x: torch.Tensor | SplitSums | SoftmaxSplits,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    norm: Norm | None = None,
    swiglu: bool = False,
    split_k: int = 1,
) -> tuple[torch.Tensor | SplitSums, torch.Tensor | None]:
    """The torch computation: the block's add and RMSNorm (add_rmsnorm_ref), the product (with
    its bias) in fp32 rounded once to the model dtype, then swiglu_ref; with split_k > 1 the
    fp32 product as a single slice. Rounded once, as the kernel and the model's CPU products
    round: a bf16 F.linear rounds partial sums on some CPUs (seen with oneDNN on AMX)."""
    x = x.total() if isinstance(x, SplitSums | SoftmaxSplits) else x
    s = None
    if norm is not None:
        x, s = add_rmsnorm_ref(x, norm.residual, norm.weight, norm.eps)
    b = bias.float() if bias is not None else None
    y = F.linear(x.float(), weight.float(), b)
    if split_k > 1:  # one slice: the whole product
        return SplitSums(y[None], x.dtype), s
    y = y.to(x.dtype)
    return (swiglu_ref(y) if swiglu else y), s

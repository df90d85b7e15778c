"""Sampled decoding's draw: top-k, then temperature, then top-p (the reference's order), with a
counter-based uniform so that a draw depends only on (seed, position, stream).

A request's random numbers are not a generator's running stream but a hash of its seed, the
cache position it samples at and the stream (each audio layer, then the text). So a request
samples the same ids alone or batched, on the host or in kernels/head_sample.py (which computes
the same hash on the device, inside the CUDA graph), and a replayed position replays its draw.

The draw, for one range's logits and a uniform u in [0, 1):

    order the ids by logit, highest first (ties: the lower id first); keep the first top_k;
    w_j = exp((l_j - l_0) / temperature)           (no scaling when temperature <= 0)
    keep j while sum_{i<j} w_i < top_p * sum_i w_i  (the first id always stays)
    pick the first kept j whose running sum of kept w exceeds u * (their total)

which keeps the same ids as the reference's top-p (it drops the least likely ids whose total
probability stays within 1 - top_p) and samples them in proportion to their probability.
"""

from collections.abc import Iterable
from functools import partial

import torch

UNIFORM_BITS = 24  # a uniform is a multiple of 2^-24: exact in fp32 on the host and the device
SEED_MIX = 0x9E3779B9  # mixed into the seed's high half and the counter
COUNTERS_PER_POSITION = 8  # a position's counters: up to 8 streams draw apart
_MASK32 = 0xFFFFFFFF


def _mul32(h: torch.Tensor, c: int) -> torch.Tensor:
    """(h * c) mod 2^32 for int64 tensors holding uint32 values, c in halves so that no product
    leaves int64 (an int64 overflow is undefined in the C++ that runs torch's ops)."""
    low = h * (c & 0xFFFF)
    high = ((h * (c >> 16)) & 0xFFFF) << 16
    return (low + high) & _MASK32


def _fmix32(h: torch.Tensor) -> torch.Tensor:
    """MurmurHash3's 32-bit finalizer on int64 tensors holding uint32 values."""
    h = h ^ (h >> 16)
    h = _mul32(h, 0x85EBCA6B)
    h = h ^ (h >> 13)
    h = _mul32(h, 0xC2B2AE35)
    return h ^ (h >> 16)


def counter_uniforms(
    seeds: torch.Tensor, positions: torch.Tensor, streams: torch.Tensor
) -> torch.Tensor:
    """The uniforms in [0, 1) of requests with `seeds` sampling at cache `positions` in
    `streams` (the audio layers 0.., then the text): int64 tensors, broadcast together -> fp32.
    Torch ops alone, on any device and without a host sync (kernels/head_sample.py hashes the
    same inside its kernel)."""
    seed_lo, seed_hi = seeds & _MASK32, (seeds >> 32) & _MASK32  # int64's two's complement halves
    key = _fmix32(seed_lo ^ _fmix32(seed_hi ^ SEED_MIX))
    counter = (positions * COUNTERS_PER_POSITION + streams) & _MASK32
    h = _fmix32(_fmix32((_mul32(counter, SEED_MIX) + key) & _MASK32) ^ key)
    return (h >> (32 - UNIFORM_BITS)).float() * 2.0**-UNIFORM_BITS


def uniforms(seed: int, position: int, streams: Iterable[int]) -> torch.Tensor:
    """The uniforms of a request with `seed` sampling at cache `position`, one per stream in
    `streams`: fp32 (len(streams),)."""
    seed = (seed + 2**63) % 2**64 - 2**63  # any int as the int64 it wraps to, as the device has it
    as_long = partial(torch.tensor, dtype=torch.long)
    return counter_uniforms(as_long(seed), as_long(position), as_long(list(streams)))


def draw(
    logits: torch.Tensor,
    top_k: int | None,
    temperature: float,
    top_p: float,
    seed: int,
    position: int,
    stream: int,
) -> torch.Tensor:
    """One id per row of logits (V,) or (n, V), drawn as above (top_k None: no cut); row i
    draws as stream `stream + i` at cache `position` -> int64 ids, logits.shape[:-1]."""
    rows = logits.float().reshape(-1, logits.shape[-1])  # (n, V)
    n, V = rows.shape
    k = V if top_k is None else min(top_k, V)
    values, order = torch.sort(rows, dim=-1, descending=True, stable=True)
    values, order = values[:, :k], order[:, :k]  # (n, k), the most likely first
    if temperature > 0:
        values = values / torch.tensor(temperature, dtype=torch.float32)
    weights = torch.exp(values - values[:, :1])
    cumulative = torch.cumsum(weights, dim=-1)
    keep = torch.ones_like(weights, dtype=torch.bool)
    if top_p < 1.0:
        total = cumulative[:, -1:]
        keep = cumulative - weights < torch.tensor(top_p, dtype=torch.float32) * total
        keep[:, 0] = True
    kept = torch.cumsum(weights * keep, dim=-1)
    u = uniforms(seed, position, range(stream, stream + n)).to(rows.device)
    choice = (kept <= u[:, None] * kept[:, -1:]).sum(dim=-1)  # the first sum above u's share
    choice = torch.minimum(choice, keep.sum(dim=-1) - 1)  # never past the last kept id
    picked = order.gather(-1, choice[:, None])[:, 0]
    return picked.reshape(logits.shape[:-1])

"""Sampled decoding for requests: their DecodingOptions checked, and each draw made with
kernels/sampling.py's `draw` (top-k, temperature, top-p over a counter-based uniform of the
request's seed, position and stream, so that the torch path and the kernel step draw the same
ids), or the argmax where the options leave one candidate.
"""

import math

import torch

from kernels.sampling import draw
from realtime.decoding.options import DecodingOptions


def is_greedy(opts: DecodingOptions) -> bool:
    """top_k 1 (the default) leaves one candidate; so does a zero temperature without top-p."""
    return opts.top_k == 1 or (opts.temperature <= 0 and opts.top_p <= 0)


def check_decoding(opts: DecodingOptions) -> None:
    """Raise ValueError for options no draw can follow."""
    if opts.top_k is not None and opts.top_k < 1:
        raise ValueError(f"top_k must be at least 1 (or None for no cut), got {opts.top_k}")
    if not (math.isfinite(opts.temperature) and opts.temperature >= 0):
        raise ValueError(f"temperature must be a finite number >= 0, got {opts.temperature}")
    if not math.isfinite(opts.top_p):
        raise ValueError(f"top_p must be a finite number, got {opts.top_p}")


def sample(logits: torch.Tensor, opts: DecodingOptions, position: int, stream: int) -> torch.Tensor:
    """Pick one id per row of logits (V,) or (n, V); row i draws as stream `stream + i` at cache
    `position`. Greedy options take the argmax."""
    if is_greedy(opts):
        return logits.float().argmax(dim=-1)  # the same index; bf16 argmax is slow on CPUs
    return draw(logits, opts.top_k, opts.temperature, opts.top_p, opts.seed, position, stream)

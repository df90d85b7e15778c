"""A prompt's forward pass (prefill) on CUDA, replayed from CUDA graphs.

Eager, a prefill is ~600 small launches whatever its length, tens of milliseconds of host time
on the end-of-turn path; the arithmetic of a 2 s utterance takes a fraction of a millisecond.
So prompts run padded to a bucket length, one captured graph per (rows, bucket):

- the positions past the prompt continue it, so the padding only writes keys and values past
  the prompt's end, which nothing reads before the next position's own write replaces them;
- attention reads each row's whole cache under the causal mask (a static shape, no host sync);
- the hidden states of the real positions come back, equal to the eager pass's up to the
  summation order of the longer attention.

The warm-up before each capture runs on the padding slot, which no request owns.
"""

from collections.abc import Iterable
from dataclasses import dataclass

import torch

from realtime.device.cuda_graphs import capture
from realtime.model.lm import KVCache, OmniLM

BUCKETS = (16, 32, 64, 128, 256)  # prompt lengths captured; longer prompts run eagerly


@dataclass
class _Graph:
    graph: torch.cuda.CUDAGraph
    x: torch.Tensor  # (rows, bucket, C) embeddings
    positions: torch.Tensor  # (rows, bucket)
    slots: torch.Tensor  # (rows,)
    hidden: torch.Tensor  # (rows, bucket, C)


class PromptGraphs:
    """`lm(x, positions, slots, cache)` for prompts, from graphs captured on first use (or
    ahead of it, with `capture_all`)."""

    def __init__(self, lm: OmniLM, cache: KVCache, pad_slot: int) -> None:
        if not cache.k.is_cuda:
            raise ValueError("prompt graphs need the cache on a CUDA device")
        self.lm, self.cache, self.pad_slot = lm, cache, pad_slot
        self.graphs: dict[tuple[int, int], _Graph] = {}
        self._pool = None

    def forward(self, x: torch.Tensor, positions: torch.Tensor, slots: torch.Tensor, start: int):
        """Hidden states (rows, T, C) of embeddings x (rows, T, C) at `positions` (rows, T),
        which are start..start+T-1 in every row, of cache rows `slots` (rows,)."""
        rows, length = x.shape[:2]
        bucket = next((b for b in BUCKETS if b >= length), None)
        if bucket is None or start + bucket > self.cache.max_seq:
            return self.lm(x, positions, slots, self.cache)  # too long to pad: eagerly
        graph = self.graphs.get((rows, bucket)) or self._capture(rows, bucket, x.dtype)
        graph.x[:, :length].copy_(x)
        graph.x[:, length:].zero_()
        graph.positions.copy_(torch.arange(start, start + bucket, device=x.device))
        graph.slots.copy_(slots)
        graph.graph.replay()
        return graph.hidden[:, :length]

    def capture_all(self, rows: Iterable[int], dtype: torch.dtype) -> int:
        """Capture now every bucket for prompts of each of `rows` (a request's rows), so that
        no caller's end of turn waits for a capture -> how many were new."""
        keys = [(r, b) for r in sorted(set(rows)) for b in BUCKETS if b <= self.cache.max_seq]
        missing = [key for key in keys if key not in self.graphs]
        for key in missing:
            self._capture(*key, dtype)
        return len(missing)

    def _capture(self, rows: int, bucket: int, dtype: torch.dtype) -> _Graph:
        device, channels = self.cache.k.device, self.lm.cfg.n_embd
        x = torch.zeros(rows, bucket, channels, dtype=dtype, device=device)
        positions = torch.arange(bucket, device=device).repeat(rows, 1)
        slots = torch.full((rows,), self.pad_slot, device=device)
        length = self.cache.max_seq

        with torch.inference_mode():
            graph, hidden = capture(
                lambda: self.lm(x, positions, slots, self.cache, length=length), self._pool
            )
        self._pool = graph.pool()
        self.graphs[rows, bucket] = _Graph(graph, x, positions, slots, hidden)
        return self.graphs[rows, bucket]

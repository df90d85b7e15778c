"""Results left in parts for the next launch to combine as it loads them, so that combining
them costs no launch of its own.

`SplitSums`: a product split over K (kernels/gemv.py's split_k, for products with too few
columns to fill the GPU), as its fp32 slices; add_rmsnorm, gemv's prologue and the attention
sum them. `SoftmaxSplits`: an attention's output split over the keys (the first stage of
kernels/decode_attention.py), as each split's normalised output and log-sum-exp; gemv weighs
and sums them. Both say in `total()` what their value is, in torch ops, for the references.
"""

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SplitSums:
    """A product of `dtype` inputs left as slices over K: its value is
    parts.sum(0) (fp32, slices in order) rounded to `dtype`."""

    parts: torch.Tensor  # (S, M, N) fp32
    dtype: torch.dtype

    @property
    def shape(self) -> torch.Size:
        return self.parts.shape[1:]

    def total(self) -> torch.Tensor:
        """The product, (M, N) in `dtype`."""
        total = self.parts[0].clone()
        for part in self.parts[1:]:
            total += part
        return total.to(self.dtype)


@dataclass(frozen=True)
class SoftmaxSplits:
    """An attention's output (M, n_head * hs) left as its splits over the keys: per row, head
    and split the output normalised over the split's keys, and their log-sum-exp (base 2;
    -inf for a split with no keys, whose `out` is never read, so it need not be written).
    Its value is the splits weighted by exp2(lse - max lse), summed and divided by the
    weights' sum (fp32), rounded to `dtype`."""

    out: torch.Tensor  # (M, n_head, S, hs) fp32, contiguous
    lse: torch.Tensor  # (M, n_head, S) fp32, contiguous
    dtype: torch.dtype

    @property
    def shape(self) -> torch.Size:
        rows, heads, _, hs = self.out.shape
        return torch.Size((rows, heads * hs))

    def total(self) -> torch.Tensor:
        """The attention's output, (M, n_head * hs) in `dtype`."""
        keys = self.lse > float("-inf")  # (M, n_head, S)
        w = torch.exp2(self.lse - self.lse.amax(dim=2, keepdim=True))
        out = torch.where(keys[..., None], self.out, 0.0)  # unwritten splits may hold anything
        out = (w[..., None] * out).sum(2) / w.sum(2)[..., None]  # (M, n_head, hs)
        return out.to(self.dtype).flatten(1)

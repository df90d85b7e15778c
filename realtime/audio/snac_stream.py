"""SNAC's decoder run chunk by chunk, with the output of one whole-utterance decode.

SNAC's decoder is non-causal (convolutions padded on both sides), but each output sample only
depends on a bounded stretch of the latent sequence. So each layer keeps, per stream, what it
still needs from earlier chunks, and runs behind its input by a fixed lag:

- a "same" convolution (kernel k, dilation d) keeps its last (k-1)d inputs; its output runs
  (k-1)d/2 samples behind its input;
- a transposed convolution (stride s, kernel k) keeps its last k/s - 1 inputs (it runs as an
  ordinary convolution with s output phases); its output runs behind by its padding;
- a residual unit delays its skip path by the lag of its branch;
- everything else (Snake, 1x1 convolutions, noise, tanh) works sample by sample.

On a CPU the transposed and the 1x1 convolutions run as matrix products (BLAS), as oneDNN's
convolutions at a stream's shapes are several times slower (a few latent steps over tens of MB
of weights; docs/performance.md has the figures). A GPU keeps the convolutions (cuDNN, in CUDA
graphs).

The whole decode pads every convolution's input with zeros; the stream gets the same by
zeroing, at the input of each convolution, the positions before the utterance starts and, at
its end, after it ends. So a stream reproduces the whole decode to float rounding, computing
each sample once (a window decode would recompute its context for every hop).

Chunks of equal length have equal shapes, whichever point of its utterance each stream is at:
the state of one stream is one flat buffer, and a batch of streams is a stack of them.
"""

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from snac.layers import Decoder, DecoderBlock, NoiseBlock, ResidualUnit, Snake1d
from torch import nn

POINTWISE = (Snake1d, NoiseBlock, nn.Tanh, nn.Identity)  # modules that act sample by sample


@dataclass(frozen=True)
class _Slot:
    """One layer's state: `channels` x `length` floats at `offset` in a stream's flat buffer."""

    offset: int
    channels: int
    length: int

    def view(self, state: torch.Tensor) -> torch.Tensor:
        """(B, channels, length) view into a (B, state_size) buffer."""
        size = self.channels * self.length
        return state[:, self.offset : self.offset + size].view(-1, self.channels, self.length)


class _Span:
    """Where a chunk sits in each stream's utterance, to zero what lies outside it.

    `starts` and `ends` (B, 1) are latent steps on the chunk's device (so a CUDA graph can
    take them as inputs); `active` False skips the masks (a chunk past the first lag with no
    end: every position is inside)."""

    def __init__(self, starts: torch.Tensor, ends: torch.Tensor, active: bool):
        self.starts, self.ends, self.active = starts, ends, active

    def mask(self, x: torch.Tensor, rate: int, lag: int) -> torch.Tensor:
        """Zero the samples of x (B, C, n) outside the utterance; x is at `rate` samples per
        latent step, `lag` samples behind the latent input."""
        if not self.active:
            return x
        positions = self.starts * rate - lag + torch.arange(x.shape[-1], device=x.device)
        inside = (positions >= 0) & (positions < self.ends * rate)  # (B, n)
        return torch.where(inside.unsqueeze(1), x, 0)


class _Pointwise:
    def __init__(self, module: nn.Module):
        self.module = module

    def __call__(self, x: torch.Tensor, state: torch.Tensor, span: _Span) -> torch.Tensor:
        return self.module(x)


class _Snake:
    """SNAC's Snake, x + sin(alpha x)^2 / (alpha + 1e-9), with one new tensor instead of four:
    the same operations in the same order, so the same bits."""

    def __init__(self, snake: Snake1d):
        self.alpha = snake.alpha.detach()  # (1, C, 1)
        self.inverse = (self.alpha + 1e-9).reciprocal()

    def __call__(self, x: torch.Tensor, state: torch.Tensor, span: _Span) -> torch.Tensor:
        y = torch.mul(self.alpha, x)
        return y.sin_().pow_(2).mul_(self.inverse).add_(x)


class _Product:
    """A 1x1 convolution as a matrix product (for a CPU)."""

    def __init__(self, conv: nn.Conv1d):
        self.weight = conv.weight.detach()[:, :, 0]  # (C_out, C_in)
        self.bias = _bias(conv)[:, None]  # (C_out, 1)

    def __call__(self, x: torch.Tensor, state: torch.Tensor, span: _Span) -> torch.Tensor:
        if len(x) == 1:
            return torch.addmm(self.bias, self.weight, x[0]).unsqueeze(0)
        return torch.baddbmm(self.bias, self.weight.expand(len(x), -1, -1), x)


def _padding(conv: nn.Conv1d | nn.ConvTranspose1d) -> int:
    """The samples a convolution pads each side with. torch types padding as a tuple or a
    string ("same", "valid": Conv1d's only), which _Planner._conv refuses before this runs."""
    assert not isinstance(conv.padding, str), "string padding is refused when planning"
    return conv.padding[0]


def _bias(conv: nn.Conv1d | nn.ConvTranspose1d) -> torch.Tensor:
    if conv.bias is not None:
        return conv.bias.detach()
    channels = conv.out_channels
    return torch.zeros(channels, device=conv.weight.device, dtype=conv.weight.dtype)


class _Conv:
    """A stride-1 convolution padded (k-1)d/2 on both sides."""

    def __init__(self, conv: nn.Conv1d, rate: int, lag: int, slot: _Slot):
        self.conv, self.rate, self.lag_in, self.slot = conv, rate, lag, slot
        self.lag_out = lag + _padding(conv)

    def __call__(self, x: torch.Tensor, state: torch.Tensor, span: _Span) -> torch.Tensor:
        history = self.slot.view(state)  # (B, C_in, (k-1)d): the inputs before this chunk
        full = torch.cat([history, span.mask(x, self.rate, self.lag_in)], dim=-1)
        history.copy_(full[..., x.shape[-1] :])
        conv = self.conv
        return F.conv1d(full, conv.weight, conv.bias, dilation=conv.dilation, groups=conv.groups)


class _ConvTranspose:
    """A transposed convolution (stride s, kernel k = m * s) as an ordinary convolution.

    Output sample b * s + r takes weight[:, :, q * s + r] times input b - q, for q < m: so the
    s phases r are the C_out * s output channels of a kernel-m convolution over the inputs,
    which keeps the last m - 1 inputs, like a "same" convolution its history. With `product`
    (for a CPU) that convolution runs as one matrix product over the inputs' m-step windows.
    """

    def __init__(self, conv: nn.ConvTranspose1d, rate: int, lag: int, slot: _Slot, product: bool):
        self.rate, self.lag_in, self.slot, self.product = rate, lag, slot, product
        self.stride = conv.stride[0]
        self.lag_out = lag * self.stride + _padding(conv)
        c_in, c_out, k = conv.weight.shape
        self.taps = k // self.stride
        weight = conv.weight.detach().view(c_in, c_out, self.taps, self.stride)
        # (C_out * s, C_in, m): tap t reads input b - (m - 1 - t), hence the flip.
        self.weight = weight.permute(1, 3, 0, 2).flip(-1).reshape(c_out * self.stride, c_in, -1)
        self.bias = _bias(conv).repeat_interleave(self.stride)  # (C_out * s,)
        if product:  # (C_out * s, m * C_in), tap-major like the windows below
            self.weight = self.weight.permute(0, 2, 1).reshape(c_out * self.stride, -1)

    def __call__(self, x: torch.Tensor, state: torch.Tensor, span: _Span) -> torch.Tensor:
        history = self.slot.view(state)  # (B, C_in, m - 1)
        full = torch.cat([history, span.mask(x, self.rate, self.lag_in)], dim=-1)
        history.copy_(full[..., x.shape[-1] :])
        batch, n = x.shape[0], x.shape[-1]
        if self.product:
            windows = full.unfold(-1, self.taps, 1).permute(0, 2, 3, 1)  # (B, n, m, C_in)
            phases = F.linear(windows.reshape(batch * n, -1), self.weight, self.bias)
            by_step = phases.view(batch, n, -1, self.stride).transpose(1, 2)  # (B, C_out, n, s)
        else:
            phases = F.conv1d(full, self.weight, self.bias)  # (B, C_out * s, n)
            by_step = phases.view(batch, -1, self.stride, n).transpose(2, 3)  # (B, C_out, n, s)
        # Phase r of input b is output b * s + r.
        return by_step.reshape(batch, -1, n * self.stride)


class _Residual:
    """x + branch(x), the skip path delayed as far as the branch lags."""

    def __init__(self, branch: list, slot: _Slot):
        self.branch, self.slot = branch, slot

    def __call__(self, x: torch.Tensor, state: torch.Tensor, span: _Span) -> torch.Tensor:
        y = _run(self.branch, x, state, span)
        delayed = self.slot.view(state)  # (B, C, branch lag): skip inputs not yet used
        full = torch.cat([delayed, x], dim=-1)
        delayed.copy_(full[..., x.shape[-1] :])
        return full[..., : x.shape[-1]] + y


def _run(ops: Iterable, x: torch.Tensor, state: torch.Tensor, span: _Span) -> torch.Tensor:
    for op in ops:
        x = op(x, state, span)
    return x


class _Planner:
    """Walks a decoder's modules in order, tracking rate and lag and laying out the state."""

    def __init__(self, products: bool):
        self.rate, self.lag, self.size = 1, 0, 0  # samples per latent step; lag; state floats
        self.products = products  # transposed and 1x1 convolutions as matrix products

    def slot(self, channels: int, length: int) -> _Slot:
        slot = _Slot(self.size, channels, length)
        self.size += channels * length
        return slot

    def plan(self, module: nn.Module) -> list:
        if isinstance(module, Decoder):
            return self.plan(module.model)
        if isinstance(module, DecoderBlock):
            return self.plan(module.block)
        if isinstance(module, nn.Sequential):
            return [op for child in module for op in self.plan(child)]
        if isinstance(module, ResidualUnit):
            return [self._residual(module)]
        if isinstance(module, nn.Conv1d):
            return [self._conv(module)]
        if isinstance(module, nn.ConvTranspose1d):
            return [self._conv_transpose(module)]
        if isinstance(module, Snake1d):
            return [_Snake(module)]
        if isinstance(module, POINTWISE):
            return [_Pointwise(module)]
        raise ValueError(
            f"cannot stream SNAC's decoder: {type(module).__name__} is not a layer it knows "
            "(a 24 kHz SNAC without attention, attn_window_size null, streams)"
        )

    def _residual(self, unit: ResidualUnit) -> _Residual:
        channels = next(m for m in unit.modules() if isinstance(m, nn.Conv1d)).in_channels
        lag_before = self.lag
        branch = self.plan(unit.block)
        return _Residual(branch, self.slot(channels, self.lag - lag_before))

    def _conv(self, conv: nn.Conv1d) -> _Conv | _Product | _Pointwise:
        span = (conv.kernel_size[0] - 1) * conv.dilation[0]
        padding = conv.padding  # samples per side, or "same"/"valid"
        same = not isinstance(padding, str) and span == 2 * padding[0]
        if conv.stride[0] != 1 or not same or conv.padding_mode != "zeros":
            raise ValueError(f"cannot stream SNAC's decoder: {conv} is not a 'same' convolution")
        if span == 0:
            return _Product(conv) if self.products else _Pointwise(conv)
        op = _Conv(conv, self.rate, self.lag, self.slot(conv.in_channels, span))
        self.lag = op.lag_out
        return op

    def _conv_transpose(self, conv: nn.ConvTranspose1d) -> _ConvTranspose:
        (k,), (s,), (extra,) = conv.kernel_size, conv.stride, conv.output_padding
        pad = _padding(conv)
        # Whole decode: (L - 1)s - 2 pad + k + extra samples; a stream makes exactly L * s.
        if k % s or conv.groups != 1 or conv.dilation[0] != 1 or k - 2 * pad + extra != s:
            raise ValueError(f"cannot stream SNAC's decoder: {conv} does not upsample exactly")
        slot = self.slot(conv.in_channels, k // s - 1)
        op = _ConvTranspose(conv, self.rate, self.lag, slot, self.products)
        self.rate, self.lag = self.rate * s, op.lag_out
        return op


class StreamingDecoder:
    """SNAC's `decoder` applied to latent chunks of many streams, each with its own state.

    `samples_per_latent` output samples come per latent step, `lag` samples behind it: a chunk
    of latent steps a..a+n-1 gives the output samples (a * samples_per_latent - lag) onwards.
    Layers run on the modules' own weights, except that each transposed convolution keeps its
    weights rearranged into phases (a copy: 43 MB for SNAC 24 kHz in float32). Plan after
    moving the modules to their device and dtype. `products`: run the transposed and 1x1
    convolutions as matrix products (default: on a CPU, see the module's docstring).
    """

    def __init__(self, decoder: nn.Module, products: bool | None = None):
        if products is None:
            products = next(decoder.parameters()).device.type == "cpu"
        planner = _Planner(products)
        self.ops = planner.plan(decoder)
        self.samples_per_latent, self.lag, self.state_size = (
            planner.rate,
            planner.lag,
            planner.size,
        )
        # Latent steps of zeros that push the last real sample out at the end of an utterance.
        self.tail_latents = math.ceil(self.lag / self.samples_per_latent)

    def new_state(self, device, dtype: torch.dtype) -> torch.Tensor:
        """One stream's state at the start of an utterance (zeros; reset with `zero_()`)."""
        return torch.zeros(self.state_size, device=device, dtype=dtype)

    def needs_masks(self, starts: Sequence[int], ended: bool) -> bool:
        """Whether a chunk of streams at latent steps `starts` touches positions outside an
        utterance: in its first lag, or once it has ended."""
        return ended or min(starts) * self.samples_per_latent - self.lag < 0

    @torch.inference_mode()
    def __call__(
        self,
        latents: torch.Tensor,
        state: torch.Tensor,
        starts: Sequence[int],
        ends: Sequence[int] | None = None,
    ) -> torch.Tensor:
        """Decode (B, C, n) latents: (B, C_out, n * samples_per_latent) output samples.

        `state` (B, state_size) is updated in place. `starts`: the latent step each row's chunk
        begins at; `ends`: each utterance's length in latent steps, once it has ended (the
        chunk may then run past it, to drain the lag).
        """
        device = latents.device
        first = torch.tensor(starts, device=device).view(-1, 1)
        last = None if ends is None else torch.tensor(ends, device=device).view(-1, 1)
        return self.run(latents, state, first, last, self.needs_masks(starts, ends is not None))

    def run(
        self,
        latents: torch.Tensor,
        state: torch.Tensor,
        starts: torch.Tensor,
        ends: torch.Tensor | None,
        masks: bool,
    ) -> torch.Tensor:
        """`__call__` with `starts`/`ends` as (B, 1) latent steps on the latents' device and
        `masks` from `needs_masks`: no host values, so a CUDA graph can capture it."""
        if ends is None:  # none yet: past this chunk
            ends = starts + latents.shape[-1] + 1
        return _run(self.ops, latents, state, _Span(starts, ends, masks))

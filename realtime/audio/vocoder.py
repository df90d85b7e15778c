"""SNAC vocoder: audio frames (7 codes each) to 24 kHz PCM, whole or streamed.

A stream decodes each frame once, as it arrives, through `snac_stream.StreamingDecoder`: SNAC's
non-causal decoder run chunk by chunk with per-stream state, equal to the whole-utterance decode
up to float rounding. Its output runs `lag` samples (2.3 frames for SNAC 24 kHz) behind the
frames, so the first audio needs 3 frames, and `flush` drains the rest at the end. One `Vocoder`
owns the model and decodes the new frames of many `VocoderStream`s in one batched call per chunk
length. PCM leaves as float32 numpy arrays at 24 kHz, mono.
"""

import json
import pickle
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from snac import SNAC
from snac.layers import NoiseBlock
from torch import nn
from torch.nn.utils import parametrize

from realtime.audio.snac_stream import StreamingDecoder
from realtime.device.cuda_graphs import capture
from realtime.model import tokens
from realtime.model.config import SnacConfig

PCM_DTYPE = np.float32


# --- loading ----------------------------------------------------------------------------------


def load_snac(
    directory: Path, device: torch.device | str, dtype: torch.dtype = torch.float32
) -> SNAC:
    """SNAC from `directory/config.json` and `directory/pytorch_model.bin`, strict, eval mode.

    Raises ValueError naming the file that is missing, corrupt or does not match.
    """
    directory = Path(directory)
    model = SNAC(**asdict(_read_snac_config(directory / "config.json")))
    path = directory / "pytorch_model.bin"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as error:
        raise ValueError(f"{path}: cannot read SNAC weights ({error})") from error
    try:
        # Old weight_g/weight_v checkpoints load too: torch's weight_norm renames them on load.
        model.load_state_dict(state, strict=True)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"{path}: weights do not match config.json ({error})") from error
    _bake_weight_norm(model)
    return model.to(device=device, dtype=dtype).eval()


def _bake_weight_norm(model: nn.Module) -> None:
    """Replace each weight-norm parametrization (g * v / |v|, recomputed on every call) by the
    weight it computes: inference never changes g or v, and a decode call gets ~25% cheaper."""
    for module in model.modules():
        if parametrize.is_parametrized(module, "weight"):
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)


def _read_snac_config(path: Path) -> SnacConfig:
    """Parse and check a SNAC config: the frame layout must be the one `tokens` describes."""
    try:
        config = SnacConfig(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError) as error:
        raise ValueError(f"{path}: not a SNAC config ({error})") from error
    hop = int(np.prod(config.decoder_rates))
    layout = (config.sampling_rate, tuple(config.vq_strides), config.codebook_size, hop)
    expected = (
        tokens.OUTPUT_SAMPLE_RATE_HZ,
        tokens.SNAC_VQ_STRIDES,
        tokens.CODEBOOK_SIZE,
        tokens.SNAC_HOP_SAMPLES,
    )
    if layout != expected:
        raise ValueError(f"{path}: (rate, vq_strides, codebook, hop) {layout} != {expected}")
    return config


def disable_noise(snac: SNAC) -> int:
    """Make decoding deterministic: swap every NoiseBlock for an identity; returns how many.

    NoiseBlock adds `randn * linear(x)`, zero-mean noise that differs between two decodes of the
    same codes, so a stream could never be compared with its whole decode. The weights of the
    other layers are untouched; call this after loading (the noise weights leave the module).
    """
    swapped = 0
    for parent in snac.modules():
        for name, child in parent.named_children():
            if isinstance(child, NoiseBlock):
                setattr(parent, name, nn.Identity())
                swapped += 1
    return swapped


# --- codes ------------------------------------------------------------------------------------


def repair_codes(
    frames: torch.Tensor, last_valid: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Replace codes outside 0..CODEBOOK_SIZE-1 by the previous valid code of the same layer.

    The model can emit a special (e.g. PAD_A) where a code belongs; SNAC's codebook would index
    out of range. Repeating the layer's last valid code holds the sound instead of jumping to an
    arbitrary codebook row. `frames` (..., N, 7); `last_valid` (..., 7) carries over from earlier
    frames (0 where none). Returns (repaired frames, number of codes replaced as a 0-d tensor,
    so a stream on the GPU can count without waiting for the device).
    """
    valid = (frames >= 0) & (frames < tokens.CODEBOOK_SIZE)  # (..., N, 7)
    if last_valid is None:
        last_valid = frames.new_zeros(frames.shape[:-2] + (tokens.AUDIO_LAYERS,))
    steps = torch.arange(1, frames.shape[-2] + 1, device=frames.device).unsqueeze(-1)  # (N, 1)
    # Index into [last_valid, frames...] of the latest valid code at or before each frame.
    source = torch.where(valid, steps, 0).cummax(dim=-2).values  # (..., N, 7)
    candidates = torch.cat([last_valid.unsqueeze(-2), frames], dim=-2)  # (..., N + 1, 7)
    return candidates.gather(-2, source), (~valid).sum()


def level_layers(device: torch.device | str) -> list[torch.Tensor]:
    """The audio layers each SNAC level takes its codes from, as index tensors on `device`."""
    return [torch.tensor(layers, device=device) for layers in tokens.SNAC_LAYERS_PER_LEVEL]


def frames_to_codes(
    frames: torch.Tensor, levels: Sequence[torch.Tensor] | None = None
) -> list[torch.Tensor]:
    """(B, N, 7) frames to SNAC's [(B, N), (B, 2N), (B, 4N)] codes, as the reference orders them.

    Per frame: coarse <- L0; mid <- L1, L4; fine <- L2, L3, L5, L6. Codes must be valid
    (see `repair_codes`). `levels`: `level_layers(frames.device)`, made once (else made here,
    a host-to-device copy that a CUDA graph cannot hold).
    """
    batch = frames.shape[0]
    levels = level_layers(frames.device) if levels is None else levels
    # (B, N, len(layers)) -> (B, N * len(layers)): frame by frame, in the order of `layers`.
    return [frames.index_select(-1, layers).reshape(batch, -1) for layers in levels]


# --- streaming --------------------------------------------------------------------------------


class VocoderStream:
    """One session's frames on their way to audio, and its decoder state. Reset in place."""

    def __init__(self, device: torch.device | str = "cpu"):
        self._pending = torch.zeros((0, tokens.AUDIO_LAYERS), dtype=torch.long, device=device)
        self._last_valid = torch.zeros(tokens.AUDIO_LAYERS, dtype=torch.long, device=device)
        self._replaced = torch.zeros((), dtype=torch.long, device=device)
        self.state: torch.Tensor | None = None  # (state_size,), allocated by the first decode
        self.reset()

    @property
    def replaced_codes(self) -> int:
        """Invalid codes repaired since the last reset (see `repair_codes`)."""
        return int(self._replaced)

    def reset(self) -> None:
        """Forget the utterance: the same object takes the next one (e.g. after a barge-in)."""
        self._pending = self._pending[:0]  # (P, 7) frames pushed but not decoded yet
        self._last_valid.zero_()
        self._replaced.zero_()
        if self.state is not None:
            with torch.inference_mode():  # the state is an inference tensor
                self.state.zero_()
        self.received = 0  # frames pushed since the reset
        self.ended = False  # flushed: reset before the next utterance

    @property
    def decoded(self) -> int:
        """Frames already through the decoder (their audio is out, up to its lag)."""
        return self.received - len(self._pending)

    def push(self, frames: torch.Tensor) -> None:
        """Append (N, 7) frames (N may be 0); invalid codes are repaired and counted."""
        if self.ended:
            raise RuntimeError("this stream was flushed: reset it before pushing more frames")
        # Not blocking: a plain copy from pageable memory would first wait for everything queued
        # on the GPU (e.g. a decode step launched ahead); this one returns once the frames are
        # staged.
        frames = frames.to(self._pending.device, non_blocking=True)
        frames = frames.reshape(-1, tokens.AUDIO_LAYERS)
        if len(frames) == 0:
            return
        repaired, replaced = repair_codes(frames, self._last_valid)
        self._last_valid.copy_(repaired[-1])
        self._pending = torch.cat([self._pending, repaired])  # (P + N, 7)
        self.received += len(frames)
        self._replaced += replaced


# --- decoding ---------------------------------------------------------------------------------


# Batch sizes the CUDA graphs of stream decoding are captured for; larger batches run eagerly.
GRAPH_BATCHES = (1, 2, 4, 8, 16, 32, 64)


@dataclass
class _Graph:
    """One captured stream decode: static inputs, the state it updates, its output."""

    graph: torch.cuda.CUDAGraph
    frames: torch.Tensor  # (B, P, 7)
    starts: torch.Tensor  # (B, 1) latent steps
    state: torch.Tensor  # (B, state_size)
    pcm: torch.Tensor  # (B, P * FRAME_SAMPLES)


_Graphs = dict[tuple[int, int, bool], _Graph]  # by Vocoder.graph_key


class Vocoder:
    """Owns one SNAC model; decodes whole utterances and batches of streams.

    On a CUDA device, stream decoding replays CUDA graphs (one per batch size, frames per
    chunk and whether the chunk needs masks at the utterance's start; captured on first use,
    or ahead of it with `capture_streams`):
    the decoder's ~400 small launches become one, the host's cost of a chunk its few copies.
    `graphs=False` keeps every call eager. `products`: StreamingDecoder's (None: on a CPU).
    """

    def __init__(self, snac: SNAC, graphs: bool = True, products: bool | None = None):
        self.snac = snac.eval()
        self.device = next(snac.parameters()).device
        self.dtype = next(snac.parameters()).dtype
        self.decoder = StreamingDecoder(snac.decoder, products)
        if self.decoder.samples_per_latent != tokens.SNAC_HOP_SAMPLES:
            raise ValueError(f"SNAC decoder upsamples {self.decoder.samples_per_latent}x")
        self._levels = level_layers(self.device)
        self.graphs: _Graphs | None = None
        if graphs and self.device.type == "cuda":
            self.graphs = {}
        self._pool = None  # the graphs' shared memory pool

    @property
    def first_audio_delay_frames(self) -> int:
        """Frames a stream needs before its first audio comes out (unless flushed earlier)."""
        return self.decoder.lag // tokens.FRAME_SAMPLES + 1

    @torch.inference_mode()
    def decode_frames(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, N, 7) valid frames to (B, N * FRAME_SAMPLES) float32 audio on the model's device."""
        codes = frames_to_codes(frames.to(self.device), self._levels)
        audio = self.snac.decode(codes)  # (B, 1, N * FRAME_SAMPLES)
        return audio.squeeze(1).float()

    def decode_full(self, frames: torch.Tensor) -> np.ndarray:
        """Whole-utterance decode, the offline twin: (N, 7) -> (N * FRAME_SAMPLES,) PCM.

        Also takes (B, N, 7) -> (B, N * FRAME_SAMPLES). Invalid codes are repaired as in streams.
        """
        single = frames.dim() == 2
        batched = frames.unsqueeze(0) if single else frames  # (B, N, 7)
        audio = np.zeros((len(batched), 0), PCM_DTYPE)  # (B, 0): SNAC cannot decode 0 frames
        if batched.shape[1] > 0:
            repaired, _ = repair_codes(batched)
            audio = self.decode_frames(repaired).cpu().numpy().astype(PCM_DTYPE)
        return audio[0] if single else audio

    def step(self, streams: Sequence[VocoderStream]) -> list[np.ndarray]:
        """The audio each stream has ready now (empty where none), decoded in batches."""
        return self._render(streams, final=False)

    def flush(self, streams: Sequence[VocoderStream]) -> list[np.ndarray]:
        """All remaining audio of streams whose utterance ended; reset them before reuse."""
        return self._render(streams, final=True)

    def _render(self, streams: Sequence[VocoderStream], final: bool) -> list[np.ndarray]:
        """Decode the pending frames, one call per number of them, and collect each stream's."""
        groups = defaultdict(list)  # pending frames -> streams
        for stream in streams:
            # Until the first audio is due, more frames only make the first call longer.
            due = final or stream.decoded or stream.received >= self.first_audio_delay_frames
            drains = final and stream.received and not stream.ended  # its lag, maybe no frames
            if (len(stream._pending) and due) or drains:
                groups[len(stream._pending)].append(stream)
        audio: dict[VocoderStream, np.ndarray] = {}
        for members in groups.values():
            audio.update(zip(members, self._decode(members, final), strict=True))
        if final:
            for stream in streams:
                stream.ended = True
        return [audio.get(stream, np.zeros(0, PCM_DTYPE)) for stream in streams]

    @torch.inference_mode()
    def _decode(self, streams: list[VocoderStream], final: bool) -> list[np.ndarray]:
        """One batched decoder call on streams with equally many pending frames."""
        states = [self._state(stream) for stream in streams]
        frames = torch.stack([stream._pending for stream in streams]).to(self.device)  # (B, P, 7)
        starts = [stream.decoded * tokens.SNAC_STEPS_PER_FRAME for stream in streams]
        ends = None
        if final or self.graphs is None or len(streams) > GRAPH_BATCHES[-1]:
            latents = self._latents(frames)  # (B, C, P * SNAC_STEPS_PER_FRAME)
            if final:  # zeros past the end push the last real samples through the lag
                latents = torch.nn.functional.pad(latents, (0, self.decoder.tail_latents))
                ends = [stream.received * tokens.SNAC_STEPS_PER_FRAME for stream in streams]
            state = torch.stack(states)  # (B, state_size)
            pcm = self.decoder(latents, state, starts, ends)[:, 0]  # (B, T)
        else:
            pcm, state = self._replay(self.graphs, frames, starts, states)
        samples = pcm.float().cpu().numpy()
        torch._foreach_copy_(states, list(state.unbind()))
        out = []
        for row, stream in enumerate(streams):
            first = starts[row] * tokens.SNAC_HOP_SAMPLES - self.decoder.lag  # at samples[row, 0]
            # Its audio stops at the chunk's end or, final (ends set), at the utterance's.
            stop = first + samples.shape[1] if ends is None else ends[row] * tokens.SNAC_HOP_SAMPLES
            # Samples before the utterance's start (its first chunks) are not audio.
            out.append(samples[row, max(0, -first) : stop - first].astype(PCM_DTYPE))
            stream._pending = stream._pending[:0]
        return out

    def _state(self, stream: VocoderStream) -> torch.Tensor:
        """The stream's decoder state, allocated by its first decode."""
        if stream.state is None:
            stream.state = self.decoder.new_state(self.device, self.dtype)
        return stream.state

    def graph_key(self, batch: int, frames: int, starts: list[int]) -> tuple[int, int, bool]:
        """The graph that decodes a chunk of `frames` frames for `batch` streams at latent
        steps `starts`: (batch size captured, frames, whether it needs masks)."""
        size = next(b for b in GRAPH_BATCHES if b >= batch)
        return size, frames, self.decoder.needs_masks(starts, ended=False)

    def stream_shapes(self, max_streams: int) -> list[tuple[int, int, bool]]:
        """The graph keys of the chunks streams send when each gets one frame per decode step,
        as the engine's do: a stream's first chunk (the frames up to its first audio, from the
        utterance's start), then one frame at a time; for every captured batch size up to
        max_streams."""
        first = self.first_audio_delay_frames
        later = first * tokens.SNAC_STEPS_PER_FRAME  # the latent step of its second chunk
        top = next((b for b in GRAPH_BATCHES if b >= max_streams), GRAPH_BATCHES[-1])
        return [
            self.graph_key(batch, frames, [start] * batch)
            for batch in GRAPH_BATCHES
            if batch <= top
            for frames, start in ((first, 0), (1, later))
        ]

    def capture_streams(self, max_streams: int) -> int:
        """Capture now the graphs `stream_shapes(max_streams)` names, so that no caller's first
        audio waits for a capture -> how many were new (none without graphs)."""
        if self.graphs is None:
            return 0
        missing = [key for key in self.stream_shapes(max_streams) if key not in self.graphs]
        for key in missing:
            self._capture(self.graphs, *key)
        return len(missing)

    def _replay(
        self, graphs: _Graphs, frames: torch.Tensor, starts: list[int], states: list[torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The decode of `frames` (B, P, 7) from the CUDA graph of its shape in `graphs` (the
        vocoder's): (pcm (B, T), the streams' new states (B, state_size)), both views of the
        graph's buffers."""
        batch = frames.shape[0]
        key = self.graph_key(batch, frames.shape[1], starts)
        graph = graphs.get(key) or self._capture(graphs, *key)
        graph.frames[:batch].copy_(frames)
        graph.starts[:batch, 0].copy_(torch.tensor(starts), non_blocking=True)
        torch.stack(states, out=graph.state[:batch])
        graph.graph.replay()
        return graph.pcm[:batch], graph.state[:batch]

    def _capture(self, graphs: _Graphs, batch: int, chunk: int, masks: bool) -> _Graph:
        """Capture the decode of `chunk` frames for `batch` streams into `graphs`."""
        frames = torch.zeros(
            batch, chunk, tokens.AUDIO_LAYERS, dtype=torch.long, device=self.device
        )
        starts = torch.zeros(batch, 1, dtype=torch.long, device=self.device)
        state = self.decoder.new_state(self.device, self.dtype).repeat(batch, 1)

        def decode() -> torch.Tensor:
            latents = self.snac.quantizer.from_codes(frames_to_codes(frames, self._levels))
            return self.decoder.run(latents, state, starts, None, masks)[:, 0]

        with torch.inference_mode():
            graph, pcm = capture(decode, self._pool)
        self._pool = graph.pool()
        graphs[batch, chunk, masks] = _Graph(graph, frames, starts, state, pcm)
        return graphs[batch, chunk, masks]

    def _latents(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, P, 7) frames to the decoder's (B, C, P * SNAC_STEPS_PER_FRAME) latents (P >= 0)."""
        if frames.shape[1] == 0:
            channels = self.snac.quantizer.quantizers[0].out_proj.out_channels
            return torch.zeros(len(frames), channels, 0, device=self.device, dtype=self.dtype)
        return self.snac.quantizer.from_codes(frames_to_codes(frames, self._levels))

"""SNAC vocoder: audio frames (7 codes each) to 24 kHz PCM, whole or streamed.

SNAC's decoder is non-causal, so a streamed frame needs context on both sides. Each stream
decodes overlapping windows and keeps only their middle ("overlap and keep the middle"):

    frames   ... f-LEFT .. f-1 | f .. f+HOP-1 | f+HOP .. f+HOP+LOOKAHEAD-1 ...
    window   [ left context    | kept         | lookahead                  ]

At the start of an utterance the window simply begins at frame 0 and `flush` decodes the tail
without lookahead; both match the whole-utterance decode, whose convolutions zero-pad the same
edges. One `Vocoder` owns the model and decodes the ready windows of many `VocoderStream`s in
one batched call per window length. PCM leaves as float32 numpy arrays at 24 kHz, mono.
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

from realtime import tokens
from realtime.config import SnacConfig

# Window geometry in frames (85 ms each). The decoder sees about 2.5 frames to each side; on a
# random 24 kHz SNAC (40 frames) relative L2 stream vs whole decode was, for (left, lookahead):
# (2, 2) 8e-5, (1, 2) 6e-3, (2, 1) 6e-3, (3, 3) 6e-7 (float-exact). (2, 2) is the smallest under
# 1e-3; first audio then needs HOP + LOOKAHEAD = 3 frames (256 ms of speech).
LEFT_CONTEXT_FRAMES = 2
LOOKAHEAD_FRAMES = 2
HOP_FRAMES = 1

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


def frames_to_codes(frames: torch.Tensor) -> list[torch.Tensor]:
    """(B, N, 7) frames to SNAC's [(B, N), (B, 2N), (B, 4N)] codes, as the reference orders them.

    Per frame: coarse <- L0; mid <- L1, L4; fine <- L2, L3, L5, L6. Codes must be valid
    (see `repair_codes`).
    """
    batch = frames.shape[0]
    # (B, N, len(layers)) -> (B, N * len(layers)): frame by frame, in the order of `layers`.
    return [frames[..., list(layers)].reshape(batch, -1) for layers in tokens.SNAC_LAYERS_PER_LEVEL]


# --- streaming state --------------------------------------------------------------------------


@dataclass(frozen=True)
class Window:
    """Frames to decode for one stream and which of them to keep (indices into `frames`)."""

    frames: torch.Tensor  # (T, 7)
    keep_start: int
    keep_stop: int


class VocoderStream:
    """One session's frames awaiting audio. Small, explicit, reset in place."""

    def __init__(
        self,
        left_context: int = LEFT_CONTEXT_FRAMES,
        lookahead: int = LOOKAHEAD_FRAMES,
        hop: int = HOP_FRAMES,
        device: torch.device | str = "cpu",
    ):
        if left_context < 0 or lookahead < 0 or hop < 1:
            raise ValueError(f"bad window: left {left_context}, lookahead {lookahead}, hop {hop}")
        self.left_context, self.lookahead, self.hop = left_context, lookahead, hop
        self._frames = torch.zeros((0, tokens.AUDIO_LAYERS), dtype=torch.long, device=device)
        self._last_valid = torch.zeros(tokens.AUDIO_LAYERS, dtype=torch.long, device=device)
        self._replaced = torch.zeros((), dtype=torch.long, device=device)
        self.reset()

    @property
    def first_audio_delay_frames(self) -> int:
        """Frames that must exist before the first audio comes out (unless flushed earlier)."""
        return self.hop + self.lookahead

    @property
    def replaced_codes(self) -> int:
        """Invalid codes repaired since the last reset (see `repair_codes`)."""
        return int(self._replaced)

    def reset(self) -> None:
        """Forget the utterance: the same object takes the next one (e.g. after a barge-in)."""
        self._frames = self._frames[:0]
        self._last_valid.zero_()
        self._base = 0  # absolute index of self._frames[0]
        self.received = 0  # frames pushed since the reset
        self.emitted = 0  # frames whose audio has been handed out
        self._replaced.zero_()  # invalid codes repaired since the reset

    def push(self, frames: torch.Tensor) -> None:
        """Append (N, 7) frames (N may be 0); invalid codes are repaired and counted."""
        frames = frames.to(self._frames.device).reshape(-1, tokens.AUDIO_LAYERS)
        if len(frames) == 0:
            return
        repaired, replaced = repair_codes(frames, self._last_valid)
        self._last_valid.copy_(repaired[-1])
        self._frames = torch.cat([self._frames, repaired])  # (buffered + N, 7)
        self.received += len(frames)
        self._replaced += replaced

    def pop_windows(self, final: bool = False) -> list[Window]:
        """Windows whose kept frames are ready, in order; marks those frames emitted.

        `final`: the utterance has ended, so the remaining frames go out without lookahead.
        """
        windows = []
        while self.emitted + self.hop + self.lookahead <= self.received:
            windows.append(self._window(self.emitted, self.emitted + self.hop, self.lookahead))
            self.emitted += self.hop
        if final and self.emitted < self.received:
            # One window for the whole tail, as the whole decode sees the same right edge.
            windows.append(self._window(self.emitted, self.received, 0))
            self.emitted = self.received
        self._drop_used_frames()
        return windows

    def _window(self, start: int, stop: int, lookahead: int) -> Window:
        """Window keeping absolute frames start..stop-1, with whatever left context exists."""
        first = max(0, start - self.left_context)
        frames = self._frames[first - self._base : stop + lookahead - self._base]  # (T, 7)
        return Window(frames, start - first, stop - first)

    def _drop_used_frames(self) -> None:
        """Keep only the frames a later window can still need as left context."""
        first_needed = max(self._base, self.emitted - self.left_context)
        self._frames = self._frames[first_needed - self._base :]
        self._base = first_needed


# --- decoding ---------------------------------------------------------------------------------


class Vocoder:
    """Owns one SNAC model; decodes whole utterances and batches of streams."""

    def __init__(self, snac: SNAC):
        self.snac = snac.eval()
        self.device = next(snac.parameters()).device

    @torch.inference_mode()
    def decode_frames(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, N, 7) valid frames to (B, N * FRAME_SAMPLES) float32 audio on the model's device."""
        codes = frames_to_codes(frames.to(self.device))
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
        return self._render([stream.pop_windows() for stream in streams])

    def flush(self, streams: Sequence[VocoderStream]) -> list[np.ndarray]:
        """All remaining audio of streams whose utterance ended; reset them before reuse."""
        return self._render([stream.pop_windows(final=True) for stream in streams])

    def _render(self, windows: list[list[Window]]) -> list[np.ndarray]:
        """Decode every window, one SNAC call per window length, and join each stream's audio."""
        groups = defaultdict(list)  # frames per window -> [(stream, position)]
        for stream, stream_windows in enumerate(windows):
            for position, window in enumerate(stream_windows):
                groups[len(window.frames)].append((stream, position))
        pieces = [[None] * len(stream_windows) for stream_windows in windows]
        for members in groups.values():
            batch = [windows[stream][position] for stream, position in members]
            for (stream, position), audio in zip(members, self._decode_kept(batch), strict=True):
                pieces[stream][position] = audio
        return [np.concatenate(p) if p else np.zeros(0, PCM_DTYPE) for p in pieces]

    def _decode_kept(self, batch: list[Window]) -> list[np.ndarray]:
        """Decode equal-length windows together; return each one's kept samples."""
        stacked = torch.stack([window.frames for window in batch])  # (G, T, 7)
        audio = self.decode_frames(stacked).cpu().numpy().astype(PCM_DTYPE)  # (G, T * FRAME)
        return [
            row[w.keep_start * tokens.FRAME_SAMPLES : w.keep_stop * tokens.FRAME_SAMPLES]
            for row, w in zip(audio, batch, strict=True)
        ]

"""Speech to whisper features: the reference's exact 30 s encoding and a streaming twin.

Exact mode is the reference's computation: pad or trim to 30 s, 80-bin log-mel, the whole
whisper encoder, keep the first T = whisper_frames(samples) frames. It needs the end of the
utterance before it can start and always pays for 1500 frames.

Chunked mode encodes while the caller talks. Audio arrives in arbitrary pieces; each log-mel
frame is computed once its samples exist, and features come out in blocks of `BLOCK_FRAMES`
(2 s) as soon as the mel frames the block's last frame reads exist (200 samples, 12.5 ms, after
the block's end). The conv front end is streamed exactly; the transformer runs per block with
block-causal attention (a block sees itself and every earlier block, through a key/value cache).
Known differences from exact mode, measured by `benchmarks/encoder_drift.py`:
- attention never sees later blocks, nor the 30 s of zero-padding frames exact mode attends to;
- log-mel is normalised by the running max over the mel frames a block reads and everything
  before them, not by the max over the whole 30 s input. The max only sets the floor (max - 8),
  so this moves the quietest bins of a block that precedes louder speech, nothing else.
`encode_chunked` is the offline twin of `ChunkedEncoder`: the same blocks in one pass.
"""

from dataclasses import fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import whisper
from torch import Tensor
from whisper.model import AudioEncoder, ModelDimensions, ResidualAttentionBlock

from realtime.model.tokens import (
    INPUT_SAMPLE_RATE_HZ,
    MEL_FRAMES_PER_WHISPER_FRAME,
    MEL_HOP_SAMPLES,
    MEL_WINDOW_SAMPLES,
    WHISPER_FRAME_MS,
    WHISPER_INPUT_SAMPLES,
    WHISPER_MAX_FRAMES,
    WHISPER_MAX_SAMPLES,
    WHISPER_MAX_SECONDS,
    WHISPER_MEL_FRAMES,
    whisper_frames,
)

# Our units are whisper's; fail at import rather than drift if a release changes them.
assert (
    whisper.audio.SAMPLE_RATE,
    whisper.audio.N_FFT,
    whisper.audio.HOP_LENGTH,
    whisper.audio.N_FRAMES,
) == (INPUT_SAMPLE_RATE_HZ, MEL_WINDOW_SAMPLES, MEL_HOP_SAMPLES, WHISPER_MEL_FRAMES)

BLOCK_MS = 2000
BLOCK_FRAMES = BLOCK_MS // WHISPER_FRAME_MS  # 100 encoder frames per streamed block

# whisper's log-mel normalisation: floor before log10, keep 8 decades (80 dB) below the max,
# then shift and scale to about [-1, 1].
LOG_FLOOR = 1e-10
LOG_RANGE = 8.0
LOG_OFFSET = 4.0
LOG_SCALE = 4.0

HALF_WINDOW = MEL_WINDOW_SAMPLES // 2  # torch.stft(center=True) reflect-pads this much each side
# conv1 and conv2 (kernel 3, conv2 stride 2) make encoder frame j read mel frames 2j-2 .. 2j+2.
CONV_CONTEXT_MEL = 2
ENCODER_PREFIX = "encoder."  # the audio encoder's keys in a Whisper state dict


def load_whisper_encoder(
    path: Path, device: torch.device | str, dtype: torch.dtype = torch.float32
) -> AudioEncoder:
    """The audio encoder of an openai-whisper checkpoint (`small.pt` format), in eval mode.

    Raises ValueError for a missing file or unusable dims, RuntimeError for an unreadable file
    or weights that do not fit the dims; both name the file.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"whisper checkpoint not found: {path}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch.load raises many types for a damaged file
        raise RuntimeError(f"cannot read whisper checkpoint {path}: {error}") from error
    dims = _checkpoint_dims(checkpoint, path)
    # Built on the meta device and assigned the stored tensors: the text decoder is never
    # built, and no time goes into a random init that load_state_dict would overwrite.
    with torch.device("meta"):
        encoder = AudioEncoder(
            dims.n_mels, dims.n_audio_ctx, dims.n_audio_state, dims.n_audio_head, dims.n_audio_layer
        )
    state = {
        key.removeprefix(ENCODER_PREFIX): value
        for key, value in checkpoint["model_state_dict"].items()
        if key.startswith(ENCODER_PREFIX)
    }
    try:
        encoder.load_state_dict(state, assign=True)
    except RuntimeError as error:
        raise RuntimeError(f"{path}: encoder weights do not match its dims: {error}") from error
    return _cast(encoder.to(device), dtype).eval()


def _cast(encoder: AudioEncoder, dtype: torch.dtype) -> AudioEncoder:
    """Weights in `dtype`, but layer norms and positions stay float32 as whisper's LayerNorm
    and its own half-precision decoding (which casts only the input) expect."""
    encoder.to(dtype)
    for module in encoder.modules():
        if isinstance(module, torch.nn.LayerNorm):
            module.float()
    encoder.positional_embedding = encoder.positional_embedding.float()
    return encoder


def _checkpoint_dims(checkpoint: object, path: Path) -> ModelDimensions:
    """The checkpoint's `dims`, checked against what this module can encode."""
    names = {field.name for field in fields(ModelDimensions)}
    if not isinstance(checkpoint, dict) or not {"dims", "model_state_dict"} <= checkpoint.keys():
        raise ValueError(f"{path} is not a whisper checkpoint (needs 'dims', 'model_state_dict')")
    if not isinstance(checkpoint["dims"], dict) or checkpoint["dims"].keys() != names:
        raise ValueError(f"{path}: 'dims' must have exactly the fields {sorted(names)}")
    dims = ModelDimensions(**checkpoint["dims"])
    if dims.n_audio_ctx != WHISPER_MAX_FRAMES:
        raise ValueError(f"{path}: n_audio_ctx {dims.n_audio_ctx}, expected {WHISPER_MAX_FRAMES}")
    if dims.n_mels not in (80, 128):  # the two filterbanks whisper ships
        raise ValueError(f"{path}: n_mels {dims.n_mels}; whisper has filters for 80 or 128")
    return dims


def _check_length(num_samples: int) -> None:
    if num_samples > WHISPER_MAX_SAMPLES:
        raise ValueError(
            f"{num_samples / INPUT_SAMPLE_RATE_HZ:.2f} s of audio needs "
            f"{whisper_frames(num_samples)} encoder frames; whisper's positional table holds "
            f"{WHISPER_MAX_FRAMES} ({WHISPER_MAX_SECONDS:.0f} s): split the utterance"
        )


def _as_audio(audio: np.ndarray) -> np.ndarray:
    """16 kHz mono float32 samples, as whisper.load_audio returns them."""
    audio = np.ascontiguousarray(audio, dtype=np.float32)
    if audio.ndim != 1:
        raise ValueError(f"expected mono samples of shape (n,), got {audio.shape}")
    _check_length(len(audio))
    return audio


@torch.inference_mode()
def encode_exact(encoder: AudioEncoder, audio: np.ndarray) -> Tensor:
    """The reference's features (T, C): 30 s padded log-mel through the whole encoder."""
    audio = _as_audio(audio)
    mel = whisper.log_mel_spectrogram(
        whisper.pad_or_trim(audio), n_mels=encoder.conv1.in_channels
    )  # (n_mels, 3000), on the CPU as the reference computes it
    weight = encoder.conv1.weight
    features = encoder(mel[None].to(weight.device, weight.dtype))  # (1, 1500, C)
    return features[0, : whisper_frames(len(audio))]


# --- log-mel ------------------------------------------------------------------------------


def _log_mel(stft: Tensor, filters: Tensor) -> Tensor:
    """whisper's log10 mel power from STFT frames (freq, n) -> (n_mels, n), not normalised."""
    return torch.clamp(filters @ stft.abs() ** 2, min=LOG_FLOOR).log10()


def _normalise(log_mel: Tensor, log_max: Tensor) -> Tensor:
    """whisper's normalisation, with the max given (the whole input's, or a running one)."""
    return (torch.maximum(log_mel, log_max - LOG_RANGE) + LOG_OFFSET) / LOG_SCALE


def log_mel_30s(audio: np.ndarray, n_mels: int) -> Tensor:
    """whisper.log_mel_spectrogram of the 30 s padded input before normalisation: (n_mels, 3000)."""
    samples = torch.from_numpy(whisper.pad_or_trim(_as_audio(audio)))
    window = torch.hann_window(MEL_WINDOW_SAMPLES)
    stft = torch.stft(
        samples, MEL_WINDOW_SAMPLES, MEL_HOP_SAMPLES, window=window, return_complex=True
    )
    return _log_mel(stft[..., :-1], whisper.audio.mel_filters("cpu", n_mels))


class StreamingLogMel:
    """whisper's log-mel frames (before normalisation), each computed once its samples exist.

    The 30 s input is kept reflect-padded as torch.stft(center=True) pads it, so frame i covers
    buffer samples [160 i, 160 i + 400) and is computed once the caller's audio reaches sample
    160 i + 200. `flush` zero-pads the rest, as pad_or_trim does, and computes what is asked.
    """

    def __init__(self, n_mels: int):
        self.window = torch.hann_window(MEL_WINDOW_SAMPLES)
        self.filters = whisper.audio.mel_filters("cpu", n_mels)  # (n_mels, 201)
        self.padded = torch.zeros(HALF_WINDOW + WHISPER_INPUT_SAMPLES + HALF_WINDOW)
        self.log_mel = torch.empty(n_mels, WHISPER_MEL_FRAMES)  # valid up to num_frames
        self.reset()

    def reset(self) -> None:
        """Forget the utterance; the buffers are reused."""
        self.padded.zero_()  # everything past the caller's audio must read as pad_or_trim's zeros
        self.num_samples = 0
        self.num_frames = 0

    def push(self, samples: Tensor) -> None:
        """Append samples (n,) and compute every frame they complete."""
        _check_length(self.num_samples + len(samples))
        start = HALF_WINDOW + self.num_samples
        self.padded[start : start + len(samples)] = samples
        self.num_samples += len(samples)
        if self.num_samples > HALF_WINDOW:  # frame 0's left reflection reads sample 200
            ready = (self.num_samples - HALF_WINDOW) // MEL_HOP_SAMPLES + 1
            self._compute(min(ready, WHISPER_MEL_FRAMES))

    def flush(self, num_frames: int) -> None:
        """Compute frames up to `num_frames`, reading zeros past the end of the audio."""
        # pad_or_trim's 30 s input ends in a reflection too; it only matters near 30 s.
        self.padded[-HALF_WINDOW:] = self.padded[-2 * HALF_WINDOW - 1 : -HALF_WINDOW - 1].flip(0)
        self._compute(num_frames)

    def _compute(self, end: int) -> None:
        start = self.num_frames
        if end <= start:
            return
        if start == 0:  # torch.stft's reflect padding, fixed once sample 200 exists or at flush
            self.padded[:HALF_WINDOW] = self.padded[HALF_WINDOW + 1 : 2 * HALF_WINDOW + 1].flip(0)
        signal = self.padded[
            MEL_HOP_SAMPLES * start : MEL_HOP_SAMPLES * (end - 1) + MEL_WINDOW_SAMPLES
        ]
        stft = torch.stft(
            signal,
            MEL_WINDOW_SAMPLES,
            MEL_HOP_SAMPLES,
            window=self.window,
            center=False,
            return_complex=True,
        )  # (201, end - start)
        self.log_mel[:, start:end] = _log_mel(stft, self.filters)
        self.num_frames = end


# --- encoder pieces shared by the streaming and offline chunked paths -----------------------


def _mel_span(start: int, end: int) -> tuple[int, int]:
    """Mel frames [lo, hi) that encoder frames start..end-1 read; may run past the spectrogram."""
    lo = MEL_FRAMES_PER_WHISPER_FRAME * start - CONV_CONTEXT_MEL
    hi = MEL_FRAMES_PER_WHISPER_FRAME * (end - 1) + CONV_CONTEXT_MEL + 1
    return lo, hi


def _mel_window(log_mel: Tensor, start: int, end: int) -> Tensor:
    """Normalised mel frames for encoder frames start..end-1: (n_mels, hi - lo).

    The max is the running one: over every mel frame up to the last one this block reads.
    Frames outside the 30 s spectrogram are zeros, as conv1's own padding.
    """
    lo, hi = _mel_span(start, end)
    last = min(hi, WHISPER_MEL_FRAMES)
    window = _normalise(log_mel[:, max(lo, 0) : last], log_mel[:, :last].max())
    return F.pad(window, (max(-lo, 0), hi - last))


def _front_end(encoder: AudioEncoder, mel: Tensor, start: int) -> Tensor:
    """conv1, conv2 and positions of whisper for one block, from its `_mel_window`: (1, n, C)."""
    weight = encoder.conv1.weight
    x = mel[None].to(weight.device, weight.dtype)  # (1, n_mels, 2n + 3)
    x = F.gelu(F.conv1d(x, weight, encoder.conv1.bias))  # (1, C, 2n + 1)
    if start == 0:
        x[..., 0] = 0  # conv1 output -1 is conv2's zero padding, not gelu(conv1(padding))
    x = F.gelu(F.conv1d(x, encoder.conv2.weight, encoder.conv2.bias, stride=2))  # (1, C, n)
    x = x.transpose(1, 2)  # (1, n, C)
    return (x + encoder.positional_embedding[start : start + x.shape[1]]).to(x.dtype)


def _heads(x: Tensor, n_head: int) -> Tensor:
    return x.view(*x.shape[:2], n_head, -1).transpose(1, 2)  # (1, n, C) -> (1, H, n, C / H)


def _run_block(
    block: ResidualAttentionBlock, x: Tensor, kv: Tensor, start: int, mask: Tensor | None = None
) -> Tensor:
    """One whisper block on frames start..start+n (x: (1, n, C)), attending to cached frames.

    Keys and values of these frames are written to kv (2, >= start + n, C) first; queries then
    see every frame before start + n, or what `mask` (n, start + n) allows.
    """
    attn, h = block.attn, block.attn_ln(x)
    end = start + x.shape[1]
    kv[0, start:end], kv[1, start:end] = attn.key(h)[0], attn.value(h)[0]
    keys, values = kv[0, None, :end], kv[1, None, :end]  # (1, end, C) each
    # SDPA's default 1 / sqrt(head) scale is what whisper's encoder uses (through SDPA too).
    out = F.scaled_dot_product_attention(
        _heads(attn.query(h), attn.n_head),
        _heads(keys, attn.n_head),
        _heads(values, attn.n_head),
        attn_mask=mask,
    )  # (1, H, n, C / H)
    x = x + attn.out(out.transpose(1, 2).flatten(2))
    return x + block.mlp(block.mlp_ln(x))


def _transformer(
    encoder: AudioEncoder, x: Tensor, kv: Tensor, start: int, mask: Tensor | None = None
) -> Tensor:
    """Every block then ln_post on frames start.. (x: (1, n, C)); kv: (layers, 2, >= end, C)."""
    for block, kv_layer in zip(encoder.blocks, kv, strict=True):
        x = _run_block(block, x, kv_layer, start, mask)
    return encoder.ln_post(x)[0]  # (n, C)


def _new_kv(encoder: AudioEncoder, frames: int) -> Tensor:
    weight = encoder.conv1.weight
    shape = (len(encoder.blocks), 2, frames, weight.shape[0])  # (layers, keys|values, frames, C)
    return torch.empty(shape, device=weight.device, dtype=weight.dtype)


def _block_spans(start: int, end: int, block_frames: int) -> list[tuple[int, int]]:
    """[start, end) cut at multiples of block_frames."""
    if start >= end:
        return []
    edges = [start, *range((start // block_frames + 1) * block_frames, end, block_frames), end]
    return list(zip(edges[:-1], edges[1:], strict=True))


@torch.inference_mode()
def encode_chunked(
    encoder: AudioEncoder, audio: np.ndarray, block_frames: int = BLOCK_FRAMES
) -> Tensor:
    """`ChunkedEncoder`'s features (T, C) in one pass, with a block-causal attention mask."""
    audio = _as_audio(audio)
    frames = whisper_frames(len(audio))
    log_mel = log_mel_30s(audio, encoder.conv1.in_channels)  # (n_mels, 3000)
    spans = _block_spans(0, frames, block_frames)
    x = torch.cat([_front_end(encoder, _mel_window(log_mel, a, b), a) for a, b in spans], dim=1)
    blocks = torch.arange(frames, device=x.device) // block_frames
    mask = blocks[:, None] >= blocks[None, :]  # (T, T): a frame sees its block and earlier ones
    return _transformer(encoder, x, _new_kv(encoder, frames), 0, mask)


class ChunkedEncoder:
    """Streaming whisper encoder for one caller; state is allocated once and reset in place.

    `push` returns the features of every block its samples complete, possibly none; `flush`
    ends the utterance and returns the rest, so that `frames_emitted` becomes whisper_frames();
    `peek` returns what a flush would, and the utterance goes on.
    """

    def __init__(self, encoder: AudioEncoder, block_frames: int = BLOCK_FRAMES):
        self.encoder = encoder
        self.block_frames = block_frames
        self.mel = StreamingLogMel(encoder.conv1.in_channels)
        self.kv = _new_kv(encoder, WHISPER_MAX_FRAMES)  # every layer's keys/values for 30 s
        self.reset()

    def reset(self) -> None:
        """Start a new utterance (after a flush, or to drop one on barge-in)."""
        self.mel.reset()  # the kv cache needs no clearing: frames are written before being read
        self.frames_emitted = 0
        self.flushed = False

    @torch.inference_mode()
    def push(self, samples: np.ndarray | Tensor) -> Tensor:
        """Append 16 kHz samples (n,); features (n_new, C) of the blocks they complete."""
        self._check_open()
        samples = torch.as_tensor(samples, dtype=torch.float32, device="cpu")
        if samples.ndim != 1:
            raise ValueError(f"expected mono samples of shape (n,), got {tuple(samples.shape)}")
        self.mel.push(samples)  # raises ValueError past 30 s, before changing anything
        return self._emit(self._frames_ready(), last=WHISPER_MAX_FRAMES)

    @torch.inference_mode()
    def flush(self) -> Tensor:
        """End of the utterance: the remaining features (n_rest, C), a partial block last."""
        self._check_open()
        self.flushed = True
        frames = whisper_frames(self.mel.num_samples)
        self.mel.flush(min(_mel_span(0, frames)[1], WHISPER_MEL_FRAMES))
        return self._emit(frames, last=frames)

    @torch.inference_mode()
    def peek(self) -> Tensor:
        """What `flush` would return now, with the utterance left open: the features (n_rest,
        C) of the audio since the last whole block, as if it ended here (a tentative end of
        turn). Later pushes and the flush give what they would have without the peek: the
        frames it computed past the audio are computed again once the audio exists, and the
        keys and values it wrote are written again before they are read."""
        self._check_open()
        mel, emitted = self.mel, self.frames_emitted
        mel_frames, tail = mel.num_frames, mel.padded[-HALF_WINDOW:].clone()
        try:
            return self.flush()
        finally:
            self.flushed, self.frames_emitted = False, emitted
            mel.num_frames = mel_frames
            mel.padded[-HALF_WINDOW:] = tail

    def _check_open(self) -> None:
        if self.flushed:
            raise RuntimeError("ChunkedEncoder was flushed; call reset() for the next utterance")

    def _frames_ready(self) -> int:
        """Encoder frames j whose mel frames up to 2j+2 all exist (before any flush)."""
        last_ready = (self.mel.num_frames - 1 - CONV_CONTEXT_MEL) // MEL_FRAMES_PER_WHISPER_FRAME
        return max(last_ready + 1, 0)

    def _emit(self, ready: int, last: int) -> Tensor:
        """Encode every block that ends by `ready`, in order.

        Blocks are cut at multiples of block_frames and at `last` (the utterance's end once
        flushed, else the positional table's).
        """
        outputs = []
        for start, end in _block_spans(self.frames_emitted, last, self.block_frames):
            if end > ready:
                break
            x = _front_end(self.encoder, _mel_window(self.mel.log_mel, start, end), start)
            outputs.append(_transformer(self.encoder, x, self.kv, start))
            self.frames_emitted = end
        if not outputs:
            return self.kv.new_empty(0, self.kv.shape[-1])  # (0, C)
        return torch.cat(outputs)  # (n_new, C)

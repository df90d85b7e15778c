"""Reading and writing audio files: any container/codec/rate/channels in (via FFmpeg's
libraries through PyAV), 16 kHz mono float32 out; 24 kHz speech written as 16-bit WAV."""

from pathlib import Path

import av
import numpy as np
import soundfile

from realtime.model import tokens

PCM16_SCALE = 32768.0  # int16 full scale, the divisor whisper.load_audio uses
PCM16_MAX = 32767  # the largest int16: float [-1, 1] maps onto +-PCM16_MAX on the way out


class AudioError(ValueError):
    """An input that is not usable audio; the message is one line for the user."""


def load_audio(path: Path, rate_hz: int = tokens.INPUT_SAMPLE_RATE_HZ) -> np.ndarray:
    """Decode `path` to mono float32 at `rate_hz`, as whisper.load_audio does with ffmpeg
    (s16 mono resampled by libswresample, then / 32768)."""
    if not Path(path).is_file():
        raise AudioError(f"{path}: no such file")
    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                raise AudioError(f"{path} has no audio stream")
            pcm = _decode_s16_mono(container, rate_hz)
    except av.FFmpegError as exc:
        raise AudioError(f"{path} is not a readable audio file ({exc.strerror or exc})") from None
    if pcm.size == 0:
        raise AudioError(f"{path} holds no audio samples")
    return from_pcm16(pcm)


def _decode_s16_mono(container, rate_hz: int) -> np.ndarray:
    resampler = av.AudioResampler(format="s16", layout="mono", rate=rate_hz)
    chunks = []
    for frame in container.decode(container.streams.audio[0]):
        chunks += [f.to_ndarray().reshape(-1) for f in resampler.resample(frame)]
    chunks += [f.to_ndarray().reshape(-1) for f in resampler.resample(None)]  # flush
    return np.concatenate(chunks) if chunks else np.zeros(0, np.int16)


def from_pcm16(pcm16: np.ndarray) -> np.ndarray:
    """int16 samples -> float32 in [-1, 1), as load_audio scales them."""
    return pcm16.astype(np.float32) / PCM16_SCALE


def to_pcm16(pcm: np.ndarray) -> np.ndarray:
    """Float samples in [-1, 1] (clipped) -> int16, rounded to nearest."""
    return np.round(np.clip(pcm, -1.0, 1.0) * PCM16_MAX).astype(np.int16)


def write_wav(path: Path, pcm: np.ndarray, rate_hz: int = tokens.OUTPUT_SAMPLE_RATE_HZ) -> None:
    """Write mono float32 PCM in [-1, 1] as a 16-bit WAV file."""
    soundfile.write(str(path), np.clip(pcm, -1.0, 1.0), rate_hz, subtype="PCM_16")

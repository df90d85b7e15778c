"""Audio as the WebSocket doors carry it: raw bytes in the formats that OpenAI's Realtime API
(and phone networks) speak, to and from what the engine takes and makes.

    pcm16 (24 kHz s16le) | G.711 mu-law / A-law (8 kHz) bytes
        -> InputAudio  -> 20 ms frames of 16 kHz int16 (turns.Framer: what webrtcvad and the
                          engine take)
    engine float32 at 24 kHz
        -> OutputAudio -> bytes in the client's format

The G.711 codecs and every resampling are FFmpeg's, through PyAV, as everywhere else here.
Both directions keep their resampler's state across calls: one instance per stream.
"""

from dataclasses import dataclass
from typing import Literal

import av
import numpy as np

from realtime.audio.io import to_pcm16
from realtime.model import tokens
from realtime.turns.detector import Framer

G711_RATE_HZ = 8000  # telephony
# FFmpeg's G.711 codecs: literal names, from which PyAV's stubs know they are audio codecs.
G711Codec = Literal["pcm_mulaw", "pcm_alaw"]


@dataclass(frozen=True)
class WireFormat:
    name: str  # OpenAI's beta name of the format
    codec: G711Codec | None  # FFmpeg's codec; None: raw little-endian 16-bit samples
    rate_hz: int
    bytes_per_sample: int


FORMATS = {
    "pcm16": WireFormat("pcm16", None, tokens.OUTPUT_SAMPLE_RATE_HZ, 2),
    "g711_ulaw": WireFormat("g711_ulaw", "pcm_mulaw", G711_RATE_HZ, 1),
    "g711_alaw": WireFormat("g711_alaw", "pcm_alaw", G711_RATE_HZ, 1),
}


def _codec(name: G711Codec, rate_hz: int, mode: Literal["r", "w"]) -> av.AudioCodecContext:
    codec = av.CodecContext.create(name, mode)
    codec.sample_rate, codec.layout = rate_hz, "mono"
    if mode == "w":
        codec.format = "s16"
    return codec


def _s16_frame(pcm16: np.ndarray, rate_hz: int) -> av.AudioFrame:
    frame = av.AudioFrame.from_ndarray(pcm16.reshape(1, -1), format="s16", layout="mono")
    frame.sample_rate = rate_hz
    return frame


def _samples(frames: list[av.AudioFrame]) -> np.ndarray:
    if not frames:
        return np.zeros(0, np.int16)
    return np.concatenate([f.to_ndarray().reshape(-1) for f in frames])


class InputAudio:
    """A client's audio bytes -> whole 20 ms frames of 16 kHz mono int16."""

    def __init__(self, fmt: WireFormat) -> None:
        self.format = fmt
        self._decoder = _codec(fmt.codec, fmt.rate_hz, "r") if fmt.codec else None
        self._framer = Framer()
        self._odd = b""  # pcm16: a sample split across two messages

    def push(self, payload: bytes) -> list[np.ndarray]:
        if not payload:  # (an empty packet would tell the codec the stream has ended)
            return []
        pcm16 = self._decode(payload)
        if pcm16.size == 0:
            return []
        return self._framer.push(_s16_frame(pcm16, self.format.rate_hz))

    def _decode(self, payload: bytes) -> np.ndarray:
        if self._decoder is not None:
            return _samples(self._decoder.decode(av.Packet(payload)))
        payload, whole = self._odd + payload, (len(self._odd) + len(payload)) // 2 * 2
        self._odd = payload[whole:]
        return np.frombuffer(payload[:whole], "<i2").astype(np.int16)


class OutputAudio:
    """The engine's float32 24 kHz samples -> bytes in the client's format."""

    def __init__(self, fmt: WireFormat) -> None:
        self.format = fmt
        self._resampler = None
        if fmt.rate_hz != tokens.OUTPUT_SAMPLE_RATE_HZ:
            self._resampler = av.AudioResampler(format="s16", layout="mono", rate=fmt.rate_hz)
        self._encoder = _codec(fmt.codec, fmt.rate_hz, "w") if fmt.codec else None

    def push(self, pcm: np.ndarray) -> bytes:
        return self._encode(_s16_frame(to_pcm16(pcm), tokens.OUTPUT_SAMPLE_RATE_HZ))

    def flush(self) -> bytes:
        """What the resampler still holds (a few ms); the stream ends here."""
        return self._encode(None)

    def _encode(self, frame: av.AudioFrame | None) -> bytes:
        if self._resampler is None:
            return b"" if frame is None else frame.to_ndarray().astype("<i2").tobytes()
        pcm16 = _samples(self._resampler.resample(frame))
        if pcm16.size == 0:
            return b""
        assert self._encoder is not None  # what is resampled (to 8 kHz) is G.711
        packets = self._encoder.encode(_s16_frame(pcm16, self.format.rate_hz))
        return b"".join(bytes(p) for p in packets)

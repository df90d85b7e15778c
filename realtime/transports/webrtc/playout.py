"""The agent's voice on its way out: a buffer the engine fills faster than real time, and an
aiortc track that drains it at exactly real time, 20 ms at a time.

    engine AudioChunk (24 kHz float) + text/end markers -> OutputBuffer (the whole answer so far)
    -> AgentAudioTrack.recv(): waits for each frame's send time, takes 480 samples or silence
    -> aiortc: opus encode (its executor) -> RTP -> the caller

Frames leave the buffer only when they are due (at most LEAD_MS early), so nothing already sent
is ahead of real time by more than that: a flush (barge-in) silences the very next frame, and no
stale audio plays after an interrupt. Markers ride in the buffer at their audio position, so
"this text is being spoken" and "the answer has finished playing" are reported when they happen.
"""

import asyncio
import fractions
import time
from collections import deque
from collections.abc import Callable

import av
import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from realtime.audio.io import to_pcm16
from realtime.model import tokens

OUT_FRAME_MS = 20  # aiortc's audio packetization
OUT_FRAME_SAMPLES = tokens.OUTPUT_SAMPLE_RATE_HZ * OUT_FRAME_MS // 1000  # 480
LEAD_MS = 20  # how early a frame may leave: absorbs event-loop jitter, bounds stale audio
RESYNC_MS = 200  # fell this far behind (a stalled loop): restart the clock rather than burst


class OutputBuffer:
    """Pending answer audio (float32, 24 kHz) interleaved with markers, in order."""

    def __init__(self) -> None:
        self._items: deque[np.ndarray | object] = deque()
        self.pending_samples = 0

    def add_audio(self, pcm: np.ndarray) -> None:
        if pcm.size:
            self._items.append(np.asarray(pcm, np.float32))
            self.pending_samples += pcm.size

    def add_marker(self, marker: object) -> None:
        """Reached once every sample added before it has been taken."""
        self._items.append(marker)

    def take(self, n: int) -> tuple[np.ndarray | None, list[object]]:
        """Up to n samples (zero-padded to n; None if there were none) and the markers passed."""
        parts, markers, need = [], [], n
        while self._items and (need or not isinstance(self._items[0], np.ndarray)):
            head = self._items.popleft()
            if not isinstance(head, np.ndarray):
                markers.append(head)
                continue
            parts.append(head[:need])
            if len(head) > need:
                self._items.appendleft(head[need:])
            need -= len(parts[-1])
        if not parts:
            return None, markers
        taken = n - need
        self.pending_samples -= taken
        return np.concatenate([*parts, np.zeros(need, np.float32)]), markers

    def flush(self) -> int:
        """Drop everything pending (audio and markers); returns the samples dropped."""
        dropped, self.pending_samples = self.pending_samples, 0
        self._items.clear()
        return dropped


SentCallback = Callable[[int, list[object], float], None]  # (audio samples, markers, time)


class AgentAudioTrack(MediaStreamTrack):
    """24 kHz mono s16 frames of 20 ms, paced in real time; silence whenever the buffer is empty.

    `on_sent(samples, markers, t)` runs on the event loop after each frame is taken: samples is
    how many of its samples were answer audio (0 for silence).
    """

    kind = "audio"

    def __init__(self, buffer: OutputBuffer, on_sent: SentCallback) -> None:
        super().__init__()
        self.buffer, self._on_sent = buffer, on_sent
        self._start: float | None = None
        self._pts = 0
        self._silence = np.zeros(OUT_FRAME_SAMPLES, np.int16).tobytes()

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        await self._wait_for_slot()
        before = self.buffer.pending_samples
        pcm, markers = self.buffer.take(OUT_FRAME_SAMPLES)
        frame = self._frame(pcm)
        self._on_sent(before - self.buffer.pending_samples, markers, time.monotonic())
        return frame

    async def _wait_for_slot(self) -> None:
        """Sleep until this frame's send time (the clock starts at the first call)."""
        now = time.monotonic()
        if self._start is None:
            self._start = now
            return
        self._pts += OUT_FRAME_SAMPLES
        due = self._start + self._pts / tokens.OUTPUT_SAMPLE_RATE_HZ
        if now - due > RESYNC_MS / 1000:
            self._start = now - self._pts / tokens.OUTPUT_SAMPLE_RATE_HZ
            return
        await asyncio.sleep(max(0.0, due - now - LEAD_MS / 1000))

    def _frame(self, pcm: np.ndarray | None) -> av.AudioFrame:
        frame = av.AudioFrame(format="s16", layout="mono", samples=OUT_FRAME_SAMPLES)
        if pcm is None:
            frame.planes[0].update(self._silence)
        else:
            frame.planes[0].update(to_pcm16(pcm).tobytes())
        frame.pts = self._pts
        frame.sample_rate = tokens.OUTPUT_SAMPLE_RATE_HZ
        frame.time_base = fractions.Fraction(1, tokens.OUTPUT_SAMPLE_RATE_HZ)
        return frame

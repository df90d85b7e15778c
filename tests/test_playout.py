"""The outbound side (realtime/transports/webrtc/playout.py): the buffer's markers and flush, the
track's pacing."""

import asyncio
import time

import numpy as np

from realtime.transports.webrtc.playout import (
    LEAD_MS,
    OUT_FRAME_SAMPLES,
    AgentAudioTrack,
    OutputBuffer,
)


def test_take_splits_pads_and_reports_markers_at_their_position():
    buffer = OutputBuffer()
    buffer.add_marker("start")
    buffer.add_audio(np.ones(300, np.float32))
    buffer.add_marker("text")
    buffer.add_audio(np.ones(400, np.float32))
    buffer.add_marker("end")
    pcm, markers = buffer.take(480)
    assert markers == ["start", "text"] and pcm.shape == (480,) and pcm.min() == 1
    pcm, markers = buffer.take(480)
    assert markers == ["end"] and pcm[:220].min() == 1 and not pcm[220:].any()
    assert buffer.take(480) == (None, []) and buffer.pending_samples == 0


def test_flush_drops_audio_and_markers():
    buffer = OutputBuffer()
    buffer.add_audio(np.ones(5000, np.float32))
    buffer.add_marker("end")
    buffer.take(480)
    assert buffer.flush() == 5000 - 480
    assert buffer.take(480) == (None, [])


def test_track_paces_real_time_and_silences_at_once_after_a_flush():
    async def scenario():
        buffer, sent = OutputBuffer(), []
        track = AgentAudioTrack(buffer, lambda n, markers, t: sent.append(n))
        buffer.add_audio(np.full(OUT_FRAME_SAMPLES * 100, 0.5, np.float32))
        start = time.monotonic()
        frames = [await track.recv() for _ in range(11)]
        elapsed = time.monotonic() - start
        buffer.flush()
        frames.append(await track.recv())
        return frames, sent, elapsed

    frames, sent, elapsed = asyncio.run(scenario())
    assert elapsed >= 10 * 0.020 - LEAD_MS / 1000 - 0.005  # not faster than real time
    assert [f.pts for f in frames] == [i * OUT_FRAME_SAMPLES for i in range(12)]
    assert all(f.samples == OUT_FRAME_SAMPLES and f.sample_rate == 24_000 for f in frames)
    assert np.abs(frames[0].to_ndarray()).min() > 16_000  # 0.5 of full scale
    assert not frames[-1].to_ndarray().any() and sent[-1] == 0

"""Whisper features: exact mode against the reference, chunked mode against its offline twin."""

from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import torch.nn.functional as F
import whisper
from whisper.model import AudioEncoder, ModelDimensions, Whisper

from realtime.audio.encoder import (
    BLOCK_FRAMES,
    ChunkedEncoder,
    StreamingLogMel,
    encode_chunked,
    encode_exact,
    load_whisper_encoder,
)
from realtime.model.config import PRESETS
from realtime.model.tokens import (
    INPUT_SAMPLE_RATE_HZ,
    MEL_HOP_SAMPLES,
    MEL_WINDOW_SAMPLES,
    WHISPER_FRAME_SAMPLES,
    WHISPER_MAX_FRAMES,
    WHISPER_MAX_SAMPLES,
    WHISPER_MEL_FRAMES,
    whisper_frames,
)

AUDIO_DIR = Path(__file__).parent / "data"  # the clips of /work/shared/audio
SHORT_CLIPS = ["mini_omni_sample_1.wav", "q_capital.wav"]  # under one 2 s block
LONG_CLIPS = ["q_story.wav", "two_turns.wav"]  # 2 and 3 blocks
BLOCK_SAMPLES = BLOCK_FRAMES * WHISPER_FRAME_SAMPLES
TOLERANCE = {"atol": 1e-5, "rtol": 1e-5}


def clip(name: str) -> np.ndarray:
    # for 16-bit files this is the int16 / 32768 whisper.load_audio yields (it needs ffmpeg)
    return sf.read(AUDIO_DIR / name, dtype="float32")[0]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A tiny random whisper in the official `small.pt` format."""
    torch.manual_seed(0)
    dims = ModelDimensions(**asdict(PRESETS["tiny"].whisper))
    model = Whisper(dims)
    path = tmp_path_factory.mktemp("whisper") / "tiny.pt"
    torch.save({"dims": asdict(dims), "model_state_dict": model.state_dict()}, path)
    return path


@pytest.fixture(scope="module")
def encoder(checkpoint) -> AudioEncoder:
    return load_whisper_encoder(checkpoint, "cpu")


@pytest.fixture(scope="module")
def reference_model(checkpoint) -> Whisper:
    """The whole model, loaded the reference's way."""
    return whisper.load_model(str(checkpoint), device="cpu")


def stream(chunked: ChunkedEncoder, audio: np.ndarray, push_samples: int) -> torch.Tensor:
    """Push `audio` in pieces, then flush; every output block is checked for its size."""
    outputs = [
        chunked.push(audio[i : i + push_samples]) for i in range(0, len(audio), push_samples)
    ]
    assert all(len(out) % BLOCK_FRAMES == 0 for out in outputs)
    return torch.cat([*outputs, chunked.flush()])  # (T, C)


# --- loading ------------------------------------------------------------------------------


def test_load_keeps_only_the_encoder(checkpoint, encoder):
    stored = torch.load(checkpoint, weights_only=True)["model_state_dict"]
    assert isinstance(encoder, AudioEncoder) and not encoder.training
    for key, value in encoder.state_dict().items():
        assert torch.equal(value, stored["encoder." + key])


def test_half_checkpoint_loads_as_whisper_does(tmp_path, checkpoint):
    # Released checkpoints store float16; whisper.load_model copies them into a float32 model.
    stored = torch.load(checkpoint, weights_only=True)
    half = {key: value.half() for key, value in stored["model_state_dict"].items()}
    path = tmp_path / "half.pt"
    torch.save({**stored, "model_state_dict": half}, path)
    expected = whisper.load_model(str(path), device="cpu").encoder.state_dict()
    for key, value in load_whisper_encoder(path, "cpu").state_dict().items():
        assert value.dtype == torch.float32 and torch.equal(value, expected[key])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_follows_float32(checkpoint, encoder, dtype):
    audio, low = clip("q_story.wav"), load_whisper_encoder(checkpoint, "cpu", dtype)
    streamed = stream(ChunkedEncoder(low), audio, 16000)
    for got, want in [
        (encode_exact(low, audio), encode_exact(encoder, audio)),
        (streamed, encode_chunked(encoder, audio)),
    ]:
        assert got.dtype == dtype
        assert F.cosine_similarity(got.float(), want, dim=-1).min() > 0.999


def test_load_errors_name_the_file(tmp_path, checkpoint):
    with pytest.raises(ValueError, match="missing.pt"):
        load_whisper_encoder(tmp_path / "missing.pt", "cpu")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(RuntimeError, match="corrupt.pt"):
        load_whisper_encoder(corrupt, "cpu")
    stored = torch.load(checkpoint, weights_only=True)
    wider = tmp_path / "wider.pt"
    torch.save({**stored, "dims": {**stored["dims"], "n_audio_state": 128}}, wider)
    with pytest.raises(RuntimeError, match="wider.pt"):
        load_whisper_encoder(wider, "cpu")
    shorter = tmp_path / "shorter.pt"
    torch.save({**stored, "dims": {**stored["dims"], "n_audio_ctx": 750}}, shorter)
    with pytest.raises(ValueError, match="shorter.pt"):
        load_whisper_encoder(shorter, "cpu")


# --- exact mode ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", [SHORT_CLIPS[0], LONG_CLIPS[-1]])
def test_exact_is_the_reference_bit_for_bit(reference_model, encoder, name):
    # The reference's load_audio + get_input_ids_whisper, numbers as it writes them.
    audio = clip(name)
    duration_ms = (len(audio) / 16000) * 1000
    mel = whisper.log_mel_spectrogram(whisper.pad_or_trim(audio))
    with torch.no_grad():
        reference = reference_model.embed_audio(mel.unsqueeze(0))[0][: int(duration_ms / 20) + 1]
    assert torch.equal(encode_exact(encoder, audio), reference)


def test_exact_refuses_more_than_30s(encoder):
    assert encode_exact(encoder, np.zeros(WHISPER_MAX_SAMPLES, np.float32)).shape[0] == 1500
    with pytest.raises(ValueError, match="30 s"):
        encode_exact(encoder, np.zeros(WHISPER_MAX_SAMPLES + 1, np.float32))


# --- streamed log-mel ---------------------------------------------------------------------


def whisper_log_mel_unnormalised(audio: np.ndarray) -> torch.Tensor:
    """The first lines of whisper.log_mel_spectrogram, stopping before the normalisation."""
    samples = torch.from_numpy(whisper.pad_or_trim(audio))
    window = torch.hann_window(MEL_WINDOW_SAMPLES)
    stft = torch.stft(
        samples, MEL_WINDOW_SAMPLES, MEL_HOP_SAMPLES, window=window, return_complex=True
    )
    power = whisper.audio.mel_filters("cpu", 80) @ stft[..., :-1].abs() ** 2
    return torch.clamp(power, min=1e-10).log10()  # (80, 3000)


def near_30s() -> np.ndarray:
    """Speech tiled to the longest input, so the last frames read real audio and the reflection."""
    return np.tile(clip("q_story.wav"), 9)[:WHISPER_MAX_SAMPLES]


@pytest.mark.parametrize("push_samples", [7, 320, 1000, 16000, 50000, 10**6])
@pytest.mark.parametrize("name, num_samples", [("two_turns.wav", None), ("q_capital.wav", 150)])
def test_streamed_log_mel_is_whispers(push_samples, name, num_samples):
    audio, mel = clip(name)[:num_samples], StreamingLogMel(80)
    for i in range(0, len(audio), push_samples):
        mel.push(torch.from_numpy(audio[i : i + push_samples]))
        # a frame is computed as soon as its last sample, 200 after its centre, exists
        expected = (mel.num_samples - MEL_WINDOW_SAMPLES // 2) // MEL_HOP_SAMPLES + 1
        assert mel.num_frames == (expected if mel.num_samples > MEL_WINDOW_SAMPLES // 2 else 0)
    mel.flush(WHISPER_MEL_FRAMES)
    reference = whisper_log_mel_unnormalised(audio)
    torch.testing.assert_close(mel.log_mel, reference, atol=1e-6, rtol=1e-6)
    normalised = (torch.maximum(mel.log_mel, mel.log_mel.max() - 8.0) + 4.0) / 4.0
    torch.testing.assert_close(normalised, whisper.log_mel_spectrogram(whisper.pad_or_trim(audio)))


def test_streamed_log_mel_near_30s():
    audio, mel = near_30s(), StreamingLogMel(80)
    for i in range(0, len(audio), INPUT_SAMPLE_RATE_HZ):
        mel.push(torch.from_numpy(audio[i : i + INPUT_SAMPLE_RATE_HZ]))
    mel.flush(WHISPER_MEL_FRAMES)
    reference = whisper_log_mel_unnormalised(audio)
    torch.testing.assert_close(mel.log_mel, reference, atol=1e-6, rtol=1e-6)


# --- chunked mode -------------------------------------------------------------------------


@pytest.mark.parametrize("push_samples", [320, 1000, 16000, 50000, 10**6])
@pytest.mark.parametrize("name", LONG_CLIPS + SHORT_CLIPS[:1])
def test_streaming_equals_offline_twin(encoder, push_samples, name):
    audio = clip(name)
    streamed = stream(ChunkedEncoder(encoder), audio, push_samples)
    assert streamed.shape == (whisper_frames(len(audio)), encoder.ln_post.weight.shape[0])
    torch.testing.assert_close(streamed, encode_chunked(encoder, audio), **TOLERANCE)


@pytest.mark.parametrize("num_samples", [0, 1, 319, 320, BLOCK_SAMPLES + 100, BLOCK_SAMPLES + 200])
def test_odd_lengths_give_t_frames(encoder, num_samples):
    audio = clip("two_turns.wav")[:num_samples]
    streamed = stream(ChunkedEncoder(encoder), audio, 1000)
    assert len(streamed) == whisper_frames(num_samples)
    torch.testing.assert_close(streamed, encode_chunked(encoder, audio), **TOLERANCE)


def test_longest_input_streams_like_the_twin(encoder):
    audio, chunked = near_30s(), ChunkedEncoder(encoder)
    streamed = stream(chunked, audio, INPUT_SAMPLE_RATE_HZ)
    assert len(streamed) == chunked.frames_emitted == WHISPER_MAX_FRAMES
    torch.testing.assert_close(streamed, encode_chunked(encoder, audio), **TOLERANCE)


def test_a_block_comes_out_once_its_mel_exists(encoder):
    # Block 0's last frame reads mel frame 200, whose window ends 200 samples past the block.
    audio, chunked = clip("two_turns.wav"), ChunkedEncoder(encoder)
    ready = BLOCK_SAMPLES + MEL_WINDOW_SAMPLES // 2
    assert len(chunked.push(audio[: ready - 1])) == 0
    assert len(chunked.push(audio[ready - 1 : ready])) == BLOCK_FRAMES == chunked.frames_emitted


def test_single_block_is_whisper_without_the_padding(encoder):
    # Under 2 s the running max is the global one, so the only difference from exact mode is
    # that exact mode's attention also sees the 30 s of padding frames: drop them and compare
    # with whisper's own modules (its attention included).
    audio = clip("mini_omni_sample_1.wav")
    frames = whisper_frames(len(audio))
    log_mel = whisper_log_mel_unnormalised(audio)
    assert log_mel[:, : 2 * frames + 1].max() == log_mel.max()
    mel = whisper.log_mel_spectrogram(whisper.pad_or_trim(audio))[None]  # (1, 80, 3000)
    with torch.no_grad():
        x = F.gelu(encoder.conv2(F.gelu(encoder.conv1(mel)))).transpose(1, 2)  # (1, 1500, C)
        x = (x + encoder.positional_embedding)[:, :frames]  # (1, T, C)
        for block in encoder.blocks:
            x = block(x)
        reference = encoder.ln_post(x)[0]
    torch.testing.assert_close(encode_chunked(encoder, audio), reference, **TOLERANCE)


@pytest.mark.parametrize("name", SHORT_CLIPS)
def test_single_block_is_close_to_exact(encoder, name):
    # Measured on this tiny random model: mean cosine 0.92, min 0.88. Its near-uniform
    # attention weighs the 1400+ padding frames heavily; a trained model's drift is measured
    # by benchmarks/encoder_drift.py --whisper.
    audio = clip(name)
    cosine = F.cosine_similarity(encode_chunked(encoder, audio), encode_exact(encoder, audio), -1)
    assert cosine.mean() > 0.9 and cosine.min() > 0.85


@pytest.mark.parametrize("cut", [100, 5000, BLOCK_SAMPLES + 200, 3 * BLOCK_SAMPLES - 700])
def test_a_peek_is_the_flush_there_and_changes_nothing(encoder, cut):
    # A tentative end of turn peeks; the caller goes on talking; the turn's features are
    # what they would have been with no peek, and the peek's are a flush's at the cut.
    audio = clip("two_turns.wav")
    chunked = ChunkedEncoder(encoder)
    before = chunked.push(audio[:cut])
    peeked = chunked.peek()
    torch.testing.assert_close(
        torch.cat([before, peeked]), encode_chunked(encoder, audio[:cut]), **TOLERANCE
    )
    rest = stream(chunked, audio[cut:], 1000)
    torch.testing.assert_close(
        torch.cat([before, rest]), encode_chunked(encoder, audio), **TOLERANCE
    )


def test_reset_reuses_the_state(encoder):
    audio, chunked = clip("q_story.wav"), ChunkedEncoder(encoder)
    first, kv = stream(chunked, audio, 1000), chunked.kv.data_ptr()
    with pytest.raises(RuntimeError, match="reset"):
        chunked.push(audio[:320])
    chunked.reset()
    torch.testing.assert_close(stream(chunked, audio, 16000), first, **TOLERANCE)
    assert chunked.kv.data_ptr() == kv


def test_pushing_past_30s_raises(encoder):
    chunked = ChunkedEncoder(encoder)
    chunked.push(np.zeros(WHISPER_MAX_SAMPLES - 10, np.float32))
    with pytest.raises(ValueError, match="30 s"):
        chunked.push(np.zeros(11, np.float32))
    assert len(chunked.push(np.zeros(10, np.float32))) == 0  # the refused push changed nothing
    chunked.flush()
    assert chunked.frames_emitted == WHISPER_MAX_FRAMES

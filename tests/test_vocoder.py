"""The streamed vocoder against its offline twin, the whole-utterance decode."""

import json
from dataclasses import asdict

import numpy as np
import pytest
import torch
from snac import SNAC

from realtime.audio.snac_stream import StreamingDecoder
from realtime.audio.vocoder import (
    Vocoder,
    VocoderStream,
    disable_noise,
    frames_to_codes,
    load_snac,
    repair_codes,
)
from realtime.model import tokens
from realtime.model.config import PRESETS, SnacConfig

# A stream computes what the whole decode computes, in other chunks: float32 rounding only.
MAX_REL_L2 = 2e-6  # ||stream - full|| / ||full||
MAX_ABS_ERROR = 1e-5  # max |stream - full|, relative to max |full|
BURSTS = [1, 2, 3, 1000]  # frames per push: one at a time, bursts, all at once


def random_snac(config: SnacConfig) -> SNAC:
    torch.manual_seed(0)
    snac = SNAC(**asdict(config)).eval()
    assert disable_noise(snac) > 0
    return snac


def random_frames(num_frames: int, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    shape = (num_frames, tokens.AUDIO_LAYERS)  # (N, 7)
    return torch.randint(0, tokens.CODEBOOK_SIZE, shape, generator=generator)


@pytest.fixture(scope="module")
def vocoder() -> Vocoder:
    return Vocoder(random_snac(PRESETS["tiny"].snac))


def stream_audio(vocoder, stream, frames, burst: int) -> tuple[np.ndarray, list[int]]:
    """Push `frames` `burst` at a time, stepping after each push; flush. Also the chunk sizes."""
    chunks = []
    for start in range(0, len(frames), burst):
        stream.push(frames[start : start + burst])
        chunks += vocoder.step([stream])
    chunks += vocoder.flush([stream])
    return np.concatenate(chunks), [len(chunk) for chunk in chunks]


def relative_l2(actual: np.ndarray, expected: np.ndarray) -> float:
    return float(np.linalg.norm(actual - expected) / np.linalg.norm(expected))


def test_frames_to_codes_matches_reference_order():
    frames = torch.tensor([[[0, 1, 2, 3, 4, 5, 6], [10, 11, 12, 13, 14, 15, 16]]])  # (1, 2, 7)
    coarse, mid, fine = frames_to_codes(frames)
    # reconstruct_tensors: tensor1 += [L0]; tensor2 += [L1]; tensor3 += [L2, L3];
    # tensor2 += [L4]; tensor3 += [L5, L6], frame after frame.
    assert coarse.tolist() == [[0, 10]]
    assert mid.tolist() == [[1, 4, 11, 14]]
    assert fine.tolist() == [[2, 3, 5, 6, 12, 13, 15, 16]]


def assert_matches_full(streamed: np.ndarray, full: np.ndarray) -> None:
    assert streamed.dtype == np.float32 and streamed.shape == full.shape
    assert relative_l2(streamed, full) <= MAX_REL_L2
    assert np.abs(streamed - full).max() <= MAX_ABS_ERROR * np.abs(full).max()


@pytest.mark.parametrize("burst", BURSTS)
@pytest.mark.parametrize("num_frames", [1, 2, 3, 4, 23])
def test_stream_matches_full_decode(vocoder, num_frames, burst):
    frames = random_frames(num_frames)
    streamed, _ = stream_audio(vocoder, VocoderStream(), frames, burst)
    assert_matches_full(streamed, vocoder.decode_full(frames))


def test_batched_streams_equal_each_alone(vocoder):
    # (frames, first tick, frames per tick): different lengths, phases and bursts.
    plans = [
        (random_frames(17, 2), 0, 1),
        (random_frames(9, 3), 4, 2),
        (random_frames(12, 4), 2, 5),
        (random_frames(6, 5), 1, 1),
    ]
    streams = [VocoderStream() for _ in plans]
    chunks = [[] for _ in plans]
    for tick in range(20):
        for stream, (frames, start, burst) in zip(streams, plans, strict=True):
            if tick >= start:
                stream.push(frames[(tick - start) * burst : (tick - start + 1) * burst])
        for out, audio in zip(chunks, vocoder.step(streams), strict=True):
            out.append(audio)
    for out, audio in zip(chunks, vocoder.flush(streams), strict=True):
        out.append(audio)
    for (frames, _, burst), out in zip(plans, chunks, strict=True):
        alone, _ = stream_audio(vocoder, VocoderStream(), frames, burst)
        np.testing.assert_allclose(np.concatenate(out), alone, rtol=0, atol=1e-6)
        assert_matches_full(np.concatenate(out), vocoder.decode_full(frames))


def count_decoder_calls(monkeypatch) -> list[tuple[int, int]]:
    """(streams, latent steps) of every StreamingDecoder call from now on."""
    calls = []
    decode = StreamingDecoder.__call__

    def counting_decode(self, latents, *args):
        calls.append((latents.shape[0], latents.shape[-1]))
        return decode(self, latents, *args)

    monkeypatch.setattr(StreamingDecoder, "__call__", counting_decode)
    return calls


def test_equal_chunks_of_many_streams_share_one_call(vocoder, monkeypatch):
    streams = [VocoderStream() for _ in range(5)]
    delay = vocoder.first_audio_delay_frames
    for i, stream in enumerate(streams):  # past their first audio, at different points
        stream.push(random_frames(delay + i, seed=i))
    vocoder.step(streams)
    for i, stream in enumerate(streams):
        stream.push(random_frames(1 if i < 3 else 2, seed=10 + i))
    calls = count_decoder_calls(monkeypatch)
    vocoder.step(streams)
    steps = tokens.SNAC_STEPS_PER_FRAME
    assert sorted(calls) == [(2, 2 * steps), (3, steps)]
    vocoder.step(streams)  # nothing new: no call
    assert len(calls) == 2


def test_frames_wait_for_the_first_audio_in_one_call(vocoder, monkeypatch):
    """Before the first audio is due a step decodes nothing (it would give no audio): the
    first call takes all the frames up to it; a flush takes whatever came."""
    calls = count_decoder_calls(monkeypatch)
    stream, short = VocoderStream(), VocoderStream()
    frames = random_frames(vocoder.first_audio_delay_frames)
    for frame in frames[:-1]:
        stream.push(frame), short.push(frame)
        assert [len(audio) for audio in vocoder.step([stream, short])] == [0, 0]
    assert calls == []
    stream.push(frames[-1])
    assert len(vocoder.step([stream, short])[0]) > 0
    steps = tokens.SNAC_STEPS_PER_FRAME
    assert calls == [(1, len(frames) * steps)]
    audio = vocoder.flush([short])[0]
    assert_matches_full(audio, vocoder.decode_full(frames[:-1]))


def test_stream_shapes_name_every_chunk_an_engine_sends(vocoder, monkeypatch):
    """What Vocoder.capture_streams captures at an engine's start: every chunk of streams
    that get one frame per step (joining at different steps, some at the same one) comes
    out in a shape it names, so no first audio waits for a capture."""
    keys = []
    decode = Vocoder._decode

    def recording(self, streams, final):
        if not final:
            starts = [s.decoded * tokens.SNAC_STEPS_PER_FRAME for s in streams]
            keys.append(self.graph_key(len(streams), len(streams[0]._pending), starts))
        return decode(self, streams, final)

    monkeypatch.setattr(Vocoder, "_decode", recording)
    joins = [0, 0, 1, 4, 4, 9]  # the step each of 6 streams starts speaking at
    streams = [VocoderStream() for _ in joins]
    for step in range(16):
        live = [s for s, join in zip(streams, joins, strict=True) if join <= step]
        for stream in live:
            stream.push(random_frames(1, seed=step))
        vocoder.step(live)
    shapes = vocoder.stream_shapes(len(streams))
    assert set(keys) <= set(shapes) and len(set(keys)) >= 4
    first = vocoder.first_audio_delay_frames
    assert {(frames, masks) for _, frames, masks in shapes} == {(first, True), (1, False)}
    assert {batch for batch, *_ in shapes} == {1, 2, 4, 8}  # up to 8 >= 6 streams
    assert vocoder.capture_streams(6) == 0  # on a CPU there are no graphs to capture


def test_repair_codes_uses_previous_valid_code_of_the_layer():
    frames = torch.tensor([[tokens.PAD_A, 5], [7, tokens.EOA], [-1, 9]])  # (N=3, 2 layers)
    repaired, replaced = repair_codes(frames, last_valid=torch.tensor([3, 4]))
    assert repaired.tolist() == [[3, 5], [7, 5], [7, 9]]
    assert int(replaced) == 3


def test_invalid_codes_do_not_crash_and_are_counted(vocoder):
    frames = random_frames(11)
    frames[0, 3] = tokens.PAD_A  # no earlier valid code: becomes 0
    frames[5, :] = tokens.EOA
    frames[6, 0] = tokens.AUDIO_LAYER_VOCAB + 17
    repaired = frames.clone()
    repaired[0, 3] = 0
    repaired[5, :] = frames[4, :]
    repaired[6, 0] = frames[4, 0]
    stream = VocoderStream()
    streamed, _ = stream_audio(vocoder, stream, frames, burst=2)
    assert stream.replaced_codes == 1 + tokens.AUDIO_LAYERS + 1
    np.testing.assert_allclose(vocoder.decode_full(frames), vocoder.decode_full(repaired))
    assert_matches_full(streamed, vocoder.decode_full(repaired))


def test_reset_lets_a_stream_be_reused(vocoder):
    first, second = random_frames(8, 5), random_frames(13, 6)
    stream = VocoderStream()
    stream.push(first)
    vocoder.step([stream])  # interrupted mid-utterance: no flush
    stream.reset()
    reused, _ = stream_audio(vocoder, stream, second, burst=1)
    fresh, _ = stream_audio(vocoder, VocoderStream(), second, burst=1)
    np.testing.assert_array_equal(reused, fresh)
    assert stream.received == len(second) and stream.replaced_codes == 0


def test_first_audio_delay_is_what_the_stream_needs(vocoder):
    stream = VocoderStream()
    frames = random_frames(10)
    for pushed in range(1, len(frames) + 1):
        stream.push(frames[pushed - 1])
        audio = vocoder.step([stream])[0]
        if len(audio):
            break
    assert pushed == vocoder.first_audio_delay_frames == 3  # SNAC 24 kHz: 2.3 frames of lag
    assert len(audio) == pushed * tokens.FRAME_SAMPLES - vocoder.decoder.lag
    # From then on each frame brings one frame of audio.
    stream.push(frames[pushed])
    assert len(vocoder.step([stream])[0]) == tokens.FRAME_SAMPLES


def test_flush_ends_the_utterance(vocoder):
    stream = VocoderStream()
    assert vocoder.flush([stream])[0].size == 0  # nothing pushed: nothing to drain
    stream.reset()
    stream.push(random_frames(2))
    assert vocoder.step([stream])[0].size == 0  # still inside the lag
    tail = vocoder.flush([stream])[0]
    assert len(tail) == 2 * tokens.FRAME_SAMPLES
    assert vocoder.flush([stream])[0].size == 0  # flushed twice: nothing more
    with pytest.raises(RuntimeError, match="reset"):
        stream.push(random_frames(1))


def test_decode_full_batches_and_handles_empty(vocoder):
    frames = torch.stack([random_frames(6, 7), random_frames(6, 8)])  # (2, 6, 7)
    both = vocoder.decode_full(frames)
    assert both.shape == (2, 6 * tokens.FRAME_SAMPLES)
    np.testing.assert_allclose(both[1], vocoder.decode_full(frames[1]), atol=1e-5)
    assert vocoder.decode_full(random_frames(0)).shape == (0,)
    assert vocoder.decode_full(frames[:, :0]).shape == (2, 0)


def test_load_snac_strict_and_old_weight_norm_names(tmp_path, vocoder):
    config = PRESETS["tiny"].snac
    snac = SNAC(**asdict(config))
    (tmp_path / "config.json").write_text(json.dumps(asdict(config)))
    # Checkpoints saved before parametrized weight_norm name the halves weight_g / weight_v.
    old_names = {
        key.replace("parametrizations.weight.original0", "weight_g").replace(
            "parametrizations.weight.original1", "weight_v"
        ): value
        for key, value in snac.state_dict().items()
    }
    torch.save(old_names, tmp_path / "pytorch_model.bin")
    loaded = load_snac(tmp_path, "cpu")
    assert not loaded.training
    disable_noise(snac), disable_noise(loaded)
    frames = random_frames(4)[None]
    # Loading bakes weight norm into plain weights: the same decode, cheaper.
    torch.testing.assert_close(
        Vocoder(loaded).decode_frames(frames), Vocoder(snac.eval()).decode_frames(frames)
    )


def test_load_snac_names_the_bad_file(tmp_path):
    config = PRESETS["tiny"].snac
    (tmp_path / "config.json").write_text(json.dumps(asdict(config)))
    with pytest.raises(ValueError, match="pytorch_model.bin"):
        load_snac(tmp_path, "cpu")  # missing
    (tmp_path / "pytorch_model.bin").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="pytorch_model.bin"):
        load_snac(tmp_path, "cpu")
    torch.save({"unexpected": torch.zeros(1)}, tmp_path / "pytorch_model.bin")
    with pytest.raises(ValueError, match="do not match"):
        load_snac(tmp_path, "cpu")
    (tmp_path / "config.json").write_text('{"sampling_rate": 44100}')
    with pytest.raises(ValueError, match="config.json"):
        load_snac(tmp_path, "cpu")


def test_real_24khz_shapes():
    vocoder = Vocoder(random_snac(SnacConfig()))
    frames = random_frames(9)
    streamed, _ = stream_audio(vocoder, VocoderStream(), frames, burst=1)
    assert_matches_full(streamed, vocoder.decode_full(frames))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_on_gpu_graph_replays_equal_eager_calls(monkeypatch):
    """CUDA-graphed stream decoding (first chunks with masks, later ones without, batches
    padded to a captured size) gives the eager calls' audio (so their states too, which
    every later chunk reads). In full fp32: with TF32, cuDNN's choice of algorithm for each
    batch size alone moves samples by 1e-4."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    snac = random_snac(PRESETS["mini-omni"].snac).cuda()
    graphed, eager = Vocoder(snac), Vocoder(snac, graphs=False)
    assert graphed.graphs is not None and eager.graphs is None
    utterances = [random_frames(9, seed=s) for s in range(3)]
    outputs = []
    for vocoder in (graphed, eager):
        streams = [VocoderStream("cuda") for _ in utterances]
        chunks = [[] for _ in utterances]
        for index in range(9 + 2):
            live = [i for i in range(3) if 0 <= index - i < 9]  # streams one frame apart
            for i in live:
                streams[i].push(utterances[i][index - i])
            for i, audio in zip(live, vocoder.step([streams[i] for i in live]), strict=True):
                chunks[i].append(audio)
        for i, audio in enumerate(vocoder.flush(streams)):
            chunks[i].append(audio)
        outputs.append([np.concatenate(c) for c in chunks])
    assert {key[:2] for key in graphed.graphs} >= {(1, 3), (2, 1), (4, 1)}
    assert any(masks for *_, masks in graphed.graphs) and any(
        not masks for *_, masks in graphed.graphs
    )
    for got, want, frames in zip(*outputs, utterances, strict=True):
        assert len(got) == len(want) == len(frames) * tokens.FRAME_SAMPLES
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * np.abs(want).max())

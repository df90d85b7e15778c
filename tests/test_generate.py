"""Decoding rules, prompts and sampling, against hand-worked examples of the reference's
behaviour; and the cached step-by-step decoder against one full forward."""

import pytest
import torch

from realtime.decoding.generate import (
    Generation,
    PrefillInput,
    decode_step,
    place_features,
    prefill,
)
from realtime.model import tokens
from realtime.model.config import PRESETS
from realtime.model.lm import OmniLM
from realtime.model.prompts import Task, build_prompt

SPEECH = [11, 12, 13, 14, 15, 16, 17]  # layer-local codes that are not specials


def audio_step(layer6=17):
    return SPEECH[:-1] + [layer6]


def test_speech_task_stops_on_layer6_eoa_without_keeping_it():
    gen = Generation(Task.A2A, prompt_length=10, max_steps=100)
    for _ in range(9):
        assert not gen.accept(5, audio_step()).done
    out = gen.accept(5, audio_step(tokens.EOA))
    assert out.done and gen.stop_reason == "end of audio"
    assert gen.steps == 9 and len(gen.audio) == 9


def test_first_step_is_kept_without_stop_checks():
    gen = Generation(Task.A2A, prompt_length=10, max_steps=100)
    assert not gen.accept(tokens.EOT, audio_step(tokens.EOA)).done  # step 0: no checks
    assert not gen.text_ended
    text_task = Generation(Task.T2T, prompt_length=5, max_steps=100)
    assert not text_task.accept(tokens.EOT, None).done
    assert text_task.accept(tokens.EOT, None).done  # step 1 stops


def test_text_is_forced_to_pad_after_eot():
    gen = Generation(Task.T2A, prompt_length=4, max_steps=100)
    gen.accept(7, audio_step())
    gen.accept(8, audio_step())
    gen.accept(tokens.EOT, audio_step())
    gen.accept(9, audio_step())  # sampled 9, but the text has ended
    assert gen.text == [7, 8, tokens.EOT, tokens.PAD_T]
    assert gen.text_tokens() == [7, 8]
    assert gen.next_input()[0, tokens.TEXT_STREAM] == tokens.PAD_T
    assert not gen.needs_text_logits


def test_text_task_drops_a_leading_eot_from_the_answer():
    gen = Generation(Task.A2T, prompt_length=4, max_steps=100)
    gen.accept(tokens.EOT, None)
    gen.accept(42, None)
    assert gen.text_tokens() == [42]


def test_answer_tokens_stream_until_eot():
    gen = Generation(Task.A2A, prompt_length=4, max_steps=100)
    streamed = [gen.accept(t, audio_step()).text_token for t in (3, 4, tokens.EOT, 5)]
    assert streamed == [3, 4, None, None]


def test_length_cap():
    gen = Generation(Task.T2T, prompt_length=4, max_steps=3)
    outs = [gen.accept(t, None) for t in (1, 2, 3)]
    assert [o.done for o in outs] == [False, False, True] and gen.stop_reason == "length"


def test_frames_remove_the_delay():
    gen = Generation(Task.A2A, prompt_length=4, max_steps=100)
    frames = []
    for step in range(12):
        # layer i at step s says 100 * i + s, so frame f must read 100 * i + f + i + 1
        out = gen.accept(1, [100 * i + step for i in range(tokens.AUDIO_LAYERS)])
        if out.frame is not None:
            frames.append(out.frame)
    expected = [[100 * i + f + i + 1 for i in range(tokens.AUDIO_LAYERS)] for f in range(5)]
    assert frames == expected == gen.frames()


def test_next_input_feeds_back_shifted_audio_and_pads_silent_rows():
    gen = Generation(Task.A2A_BATCH, prompt_length=4, max_steps=100)
    gen.accept(77, SPEECH)
    ids = gen.next_input()
    assert ids.shape == (2, tokens.STREAMS)
    assert ids[0, :7].tolist() == [tokens.layer_shift(c, i) for i, c in enumerate(SPEECH)]
    assert ids[1, :7].tolist() == [tokens.layer_shift(tokens.PAD_A, i) for i in range(7)]
    assert ids[:, tokens.TEXT_STREAM].tolist() == [77, 77]
    assert gen.next_position == 4


def test_prompt_layouts():
    a2a = build_prompt(Task.A2A, audio_frames=3).ids[0]
    assert a2a.shape == (3 + 3, tokens.STREAMS)
    assert a2a[:, tokens.TEXT_STREAM].tolist() == [
        tokens.INPUT_T,
        tokens.PAD_T,
        tokens.PAD_T,
        tokens.PAD_T,
        tokens.EOT,
        tokens.ANSWER_T,
    ]
    assert a2a[:, 2].tolist() == [
        tokens.layer_shift(t, 2)
        for t in (
            tokens.INPUT_A,
            tokens.PAD_A,
            tokens.PAD_A,
            tokens.PAD_A,
            tokens.EOA,
            tokens.ANSWER_A,
        )
    ]
    assert build_prompt(Task.ASR, audio_frames=3).ids[0, -1, tokens.TEXT_STREAM] == tokens.ASR
    assert build_prompt(Task.A2T, audio_frames=3).ids[0, -1, 0] == tokens.layer_shift(
        tokens.PAD_A, 0
    )
    t2a = build_prompt(Task.T2A, text_ids=[5, 6]).ids[0]
    assert t2a[:, tokens.TEXT_STREAM].tolist() == [
        tokens.INPUT_T,
        5,
        6,
        tokens.EOT,
        tokens.ANSWER_T,
    ]
    assert t2a[:, 6].tolist() == [tokens.layer_shift(tokens.PAD_A, 6)] * 4 + [
        tokens.layer_shift(tokens.ANSWER_A, 6)
    ]
    t2t = build_prompt(Task.T2T, text_ids=[5, 6]).ids[0]
    assert t2t[:, 0].tolist() == [tokens.layer_shift(tokens.PAD_A, 0)] * 5
    batch = build_prompt(Task.A2A_BATCH, audio_frames=2).ids
    assert batch.shape[0] == 2 and batch[1, -1, 0] == tokens.layer_shift(tokens.PAD_A, 0)


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    model = OmniLM(PRESETS["tiny"].model).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)
    return model


def test_cached_steps_equal_one_full_forward(tiny_model):
    prompt = build_prompt(Task.A2A, audio_frames=4)
    audio = tiny_model.adapt(torch.randn(4, tiny_model.cfg.whisper_adapter_dim))
    steps = torch.randint(0, tokens.TEXT_VOCAB, (5, tokens.STREAMS))
    full_ids = torch.cat([prompt.ids[0], steps])[None]  # (1, T + 5, 8)
    with torch.inference_mode():
        cache = tiny_model.new_cache(1)
        placed, mask = place_features(audio, 1, full_ids.shape[1])
        positions = torch.arange(full_ids.shape[1])[None]
        full = tiny_model(
            tiny_model.embed(full_ids, placed, mask), positions, torch.tensor([0]), cache
        )[0]
        cache = tiny_model.new_cache(2)  # a different slot than row 0, on purpose
        slot = torch.tensor([1])
        hidden = [prefill(tiny_model, cache, slot, PrefillInput(prompt, audio))[0]]
        for i, ids in enumerate(steps[:-1]):
            pos = torch.tensor([prompt.length + i])
            hidden.append(decode_step(tiny_model, cache, ids[None], pos, slot)[0])
    stepped = torch.stack(hidden)
    torch.testing.assert_close(stepped, full[prompt.length - 1 : -1], rtol=1e-4, atol=1e-4)


def test_rows_of_different_lengths_decode_as_if_alone(tiny_model):
    lengths = [3, 9]
    ids = [torch.randint(0, tokens.TEXT_VOCAB, (n, tokens.STREAMS)) for n in lengths]
    step_ids = torch.randint(0, tokens.TEXT_VOCAB, (2, tokens.STREAMS))
    with torch.inference_mode():
        alone = []
        for row, seq in enumerate(ids):
            cache = tiny_model.new_cache(1)
            n = seq.shape[0]
            tiny_model(tiny_model.embed(seq[None]), torch.arange(n)[None], torch.tensor([0]), cache)
            alone.append(
                decode_step(
                    tiny_model, cache, step_ids[row : row + 1], torch.tensor([n]), torch.tensor([0])
                )[0]
            )
        cache = tiny_model.new_cache(4)
        slots = torch.tensor([3, 1])
        for row, seq in enumerate(ids):
            n = seq.shape[0]
            tiny_model(
                tiny_model.embed(seq[None]), torch.arange(n)[None], slots[row : row + 1], cache
            )
        together = decode_step(tiny_model, cache, step_ids, torch.tensor(lengths), slots)
    torch.testing.assert_close(together, torch.stack(alone), rtol=1e-5, atol=1e-5)


def test_a_prompt_s_last_position_can_be_the_first_decode_step():
    """A transcript's: step 0 is fed its prompt's last position at prompt_length - 1; a
    speaking request's step 0 always comes from its prompt's forward pass."""
    last = build_prompt(Task.ASR, audio_frames=5).ids[:, -1]
    gen = Generation(Task.ASR, prompt_length=8, max_steps=4, first_input=last)
    assert gen.next_position == 7 and torch.equal(gen.next_input(), last)
    gen.accept(tokens.EOT, None)  # (step 0 is kept without the stop checks)
    assert gen.next_position == 8 and gen.next_input()[0, -1] == tokens.EOT and not gen.done
    with pytest.raises(ValueError):
        Generation(Task.A2A, prompt_length=8, max_steps=4, first_input=last)
    with pytest.raises(ValueError):
        Generation(Task.A2T, prompt_length=8, max_steps=4).next_input()

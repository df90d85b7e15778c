"""The WebSocket doors' audio formats (realtime/transports/wire_audio.py) and the OpenAI Realtime
session's settings (realtime/transports/openai/session.py): streamed against whole, both protocol
generations, and every session we report read back by the official `openai` package's own models."""

import av
import numpy as np
import pytest
from pydantic import TypeAdapter

from realtime.audio.io import load_audio
from realtime.model import tokens
from realtime.transports.openai.session import (
    ClientError,
    SemanticVad,
    ServerVad,
    Settings,
    apply_update,
    describe,
    unused_fields,
)
from realtime.transports.wire_audio import FORMATS, InputAudio, OutputAudio
from realtime.turns.options import TurnOptions

from .serving import DATA


def speech_24k() -> np.ndarray:
    """A real question at 24 kHz float (the clips are 16 kHz)."""
    return load_audio(DATA / "q_capital.wav", rate_hz=tokens.OUTPUT_SAMPLE_RATE_HZ)


def chunks(data, size: int) -> list:
    return [data[i : i + size] for i in range(0, len(data), size)]


@pytest.mark.parametrize("name", FORMATS)
def test_output_streamed_in_pieces_equals_encoded_whole(name):
    pcm = speech_24k()
    whole = OutputAudio(FORMATS[name])
    expected = whole.push(pcm) + whole.flush()
    streamed = OutputAudio(FORMATS[name])
    pieces = [streamed.push(piece) for piece in chunks(pcm, tokens.FRAME_SAMPLES)]
    assert b"".join(pieces) + streamed.flush() == expected
    fmt = FORMATS[name]
    assert len(expected) == round(len(pcm) * fmt.rate_hz / tokens.OUTPUT_SAMPLE_RATE_HZ) * (
        fmt.bytes_per_sample
    )


@pytest.mark.parametrize("name", FORMATS)
def test_input_split_anywhere_equals_decoded_whole(name):
    """Odd splits included: a pcm16 sample cut in half across two messages, and empty ones
    between (an empty packet must not end a G.711 decoder's stream)."""
    out = OutputAudio(FORMATS[name])
    wire = out.push(speech_24k()) + out.flush()
    whole = np.concatenate(InputAudio(FORMATS[name]).push(wire))
    split = InputAudio(FORMATS[name])
    frames = [f for piece in chunks(wire, 333) for f in split.push(piece) + split.push(b"")]
    np.testing.assert_array_equal(np.concatenate(frames), whole)  # (empty chunks change nothing)
    assert {len(f) for f in frames} == {320}  # 20 ms at 16 kHz, what webrtcvad takes


@pytest.mark.parametrize(
    "name, tolerance", [("pcm16", 2e-3), ("g711_ulaw", 0.015), ("g711_alaw", 0.015)]
)
def test_a_round_trip_keeps_the_speech(name, tolerance):
    """24 kHz out to the wire and back in at 16 kHz equals the clip resampled to 16 kHz (the
    codecs' and resamplers' own error aside), with no shift in time."""
    out = OutputAudio(FORMATS[name])
    wire = out.push(speech_24k()) + out.flush()
    heard = np.concatenate(InputAudio(FORMATS[name]).push(wire)) / 32768
    reference = load_audio(DATA / "q_capital.wav")[: len(heard)]
    error = heard - reference
    assert len(heard) >= len(reference) - 2 * 320
    assert np.sqrt(np.mean(error**2)) < tolerance
    assert np.corrcoef(heard, reference)[0, 1] > 0.99


def test_g711_is_ffmpegs_codec():
    """Our mu-law bytes are what FFmpeg's encoder makes of the same 8 kHz samples."""
    out = OutputAudio(FORMATS["g711_ulaw"])
    wire = out.push(speech_24k()) + out.flush()
    decoder = av.CodecContext.create("pcm_mulaw", "r")
    decoder.sample_rate, decoder.layout = 8000, "mono"
    decoded = np.concatenate([f.to_ndarray().reshape(-1) for f in decoder.decode(av.Packet(wire))])
    assert len(decoded) == len(wire) and np.abs(decoded).max() > 1000


# --- session.update ---------------------------------------------------------------------------


def test_beta_update():
    settings, refused = apply_update(
        Settings(),
        {
            "input_audio_format": "g711_ulaw",
            "output_audio_format": "g711_alaw",
            "turn_detection": {"type": "server_vad", "silence_duration_ms": 700, "threshold": 0.9},
            "voice": "alloy",
            "temperature": 0.8,
        },
    )
    assert settings.input_format == "g711_ulaw" and settings.output_format == "g711_alaw"
    assert settings.turn_detection == ServerVad(threshold=0.9, silence_duration_ms=700)
    assert refused == []
    turns = settings.turn_detection.turn_options(TurnOptions())
    assert (turns.end_of_turn_ms, turns.aggressiveness, turns.preroll_ms) == (700, 3, 300)


def test_ga_update_and_manual_turns():
    session = {
        "type": "realtime",
        "audio": {
            "input": {"format": {"type": "audio/pcmu"}, "turn_detection": None},
            "output": {"format": {"type": "audio/pcm", "rate": 24000}, "voice": "marin"},
        },
    }
    settings, refused = apply_update(Settings(), session)
    assert settings == Settings(input_format="g711_ulaw", turn_detection=None)
    assert refused == []


def test_what_the_model_cannot_use_is_kept_and_reported_and_the_rest_applies():
    """Frameworks send a system prompt and tools by default (and some end the session on any
    error event): they are kept, echoed in the session and named for the server's log."""
    tools = [{"type": "function", "name": "f", "parameters": {}}]
    settings, unused = apply_update(
        Settings(),
        {
            "instructions": "be brief",
            "tools": tools,
            "tool_choice": "none",
            "input_audio_transcription": {
                "model": "whisper-1",
                "prompt": "names",
                "language": "de",
            },
            "input_audio_format": "g711_alaw",
            "input_audio_noise_reduction": {"type": "near_field"},
        },
    )
    assert settings.input_format == "g711_alaw" and settings.transcribe
    assert settings.noise_reduction == {"type": "near_field"}
    assert (settings.instructions, settings.tools, settings.tool_choice) == (
        "be brief",
        tuple(tools),
        "none",
    )
    assert unused == [
        "session.instructions",
        "session.tools",
        "session.input_audio_transcription.prompt",
        "session.input_audio_transcription.language",
        "session.input_audio_noise_reduction",
    ]
    for ga in (False, True):
        described = describe(settings, "sess_1", "mini-omni", ga)
        assert (described["instructions"], described["tools"]) == ("be brief", tools)
        assert apply_update(Settings(transcribe=True), described)[0] == settings
    assert unused_fields({"tools": [{}], "modalities": ["text"]}, "response") == ["response.tools"]
    with pytest.raises(ClientError) as refused:
        apply_update(Settings(), {"instructions": ["be", "brief"]})
    assert (refused.value.code, refused.value.param) == ("invalid_type", "session.instructions")


@pytest.mark.parametrize("ga", [False, True])
def test_semantic_vad_is_taken_with_its_eagerness_and_flags(ga):
    detection = {"type": "semantic_vad", "eagerness": "high", "interrupt_response": False}
    session = (
        {"type": "realtime", "audio": {"input": {"turn_detection": detection}}}
        if ga
        else {"turn_detection": detection, "input_audio_format": "g711_ulaw"}
    )
    settings, unused = apply_update(Settings(turn_detection=None), session)
    assert settings.turn_detection == SemanticVad(eagerness="high", interrupt_response=False)
    assert unused == []
    options = settings.turn_detection.turn_options(TurnOptions())
    assert options.end_of_turn == "smart-turn" and options.incomplete_ms == 2000
    described = describe(settings, "sess_1", "mini-omni", ga)
    echoed = described["audio"]["input"] if ga else described
    assert echoed["turn_detection"] == {**detection, "create_response": True}
    assert settings.input_format == ("pcm16" if ga else "g711_ulaw")  # the rest applies
    with pytest.raises(ClientError) as refused:
        apply_update(Settings(), {"turn_detection": {"type": "semantic_vad", "eagerness": "x"}})
    assert refused.value.param == "session.turn_detection.eagerness"


@pytest.mark.parametrize(
    "session, transcribe",
    [
        ({"input_audio_transcription": {"model": "whisper-1", "language": "en"}}, True),
        ({"input_audio_transcription": {}}, True),
        ({"input_audio_transcription": None}, False),
        ({"audio": {"input": {"transcription": {"model": "gpt-4o-transcribe"}}}}, True),
        ({"type": "realtime", "audio": {"input": {"transcription": None}}}, False),
    ],
)
def test_transcription_is_turned_on_by_an_object_and_off_by_null(session, transcribe):
    settings, refused = apply_update(Settings(transcribe=not transcribe), session)
    assert settings.transcribe is transcribe and refused == []
    assert apply_update(Settings(), {"turn_detection": None})[0].transcribe is False


@pytest.mark.parametrize(
    "session, speak",
    [
        ({"modalities": ["text"]}, False),
        ({"modalities": ["audio", "text"]}, True),
        ({"type": "realtime", "output_modalities": ["text"]}, False),
        ({"type": "realtime", "output_modalities": ["audio"]}, True),
    ],
)
def test_answers_in_text_only_are_asked_for_with_modalities(session, speak):
    settings, refused = apply_update(Settings(speak=not speak), session)
    assert settings.speak is speak and refused == []
    described = describe(settings, "sess_1", "m", ga="type" in session)
    assert apply_update(Settings(speak=not speak), described)[0].speak is speak


@pytest.mark.parametrize(
    "session, param",
    [
        ({"input_audio_format": "mp3"}, "session.input_audio_format"),
        ({"audio": {"output": {"format": {"type": "audio/pcm", "rate": 16000}}}}, None),
        ({"turn_detection": {"type": "server_vad", "threshold": 7}}, None),
        ({"turn_detection": {"type": "server_vad", "create_response": "yes"}}, None),
        ({"turn_detection": {"type": "server_vad", "silence_duration_ms": True}}, None),
        ({"turn_detection": {"type": "push_to_talk"}}, "session.turn_detection"),
        ({"audio": "loud"}, "session.audio"),
        ({"modalities": ["video"]}, "session.modalities"),
        ({"output_modalities": []}, "session.output_modalities"),
        ({"modalities": "text"}, "session.modalities"),
        ({"input_audio_transcription": "whisper-1"}, "session.input_audio_transcription"),
        ({"audio": {"input": {"transcription": 1}}}, "session.audio.input.transcription"),
        ("all of it", "session"),
    ],
)
def test_invalid_values_reject_the_whole_update(session, param):
    with pytest.raises(ClientError) as refused:
        apply_update(Settings(), session)
    assert str(refused.value)
    if param is not None:
        assert refused.value.param == param


@pytest.mark.parametrize("ga", [False, True])
@pytest.mark.parametrize(
    "settings",
    [Settings(), Settings("g711_alaw", "g711_ulaw", None, speak=False, transcribe=True)],
)
def test_the_session_we_report_is_the_official_clients(ga, settings):
    """Read back by the openai package's own models, and read again into the same settings."""
    if ga:
        model = pytest.importorskip("openai.types.realtime").RealtimeSessionCreateResponse
    else:
        model = pytest.importorskip("openai.types.beta.realtime").Session
    described = describe(settings, "sess_1", "gpt-omni/mini-omni", ga)
    # (the beta model's `model` is a list of OpenAI's names; its clients read any string)
    TypeAdapter(model).validate_python({k: v for k, v in described.items() if k != "model"})
    # (the models allow extra fields; beta's lacks the "object" its server's examples send)
    assert set(described) - {"object"} <= set(model.model_fields)
    assert apply_update(Settings(), described) == (settings, [])


def test_an_answer_truncates_at_its_length_rounded_up():
    """Clients count a part of a ms as one: a truncate at the rounded-up length keeps it all."""
    from realtime.transports.openai.items import Item

    item = Item("item_1", "assistant", samples=313 * 24 + 7)  # 313.3 ms at 24 kHz
    assert item.audio_ms == 314
    item.truncate(314)
    assert item.samples == 313 * 24 + 7
    item.truncate(100)
    assert item.samples == 100 * 24

"""Property-based tests (hypothesis) of every parser that takes input from outside: the WebRTC
offer and its data-channel messages, the OpenAI Realtime events and session updates, Twilio's
Media Streams messages and webhook signatures, and the audio payloads of the WebSocket doors.

Whatever a client sends, it earns a clear refusal and the rest goes on: a parser returns or
raises its own error with a one-line message, never another exception; an OpenAI connection
answers each event, never with the `internal` server_error that stands for a bug, writes only
strict JSON, and still serves a valid event afterwards; a Twilio call never lets an exception
out. The inputs are real events with one field (at any depth) replaced by arbitrary JSON or
dropped, random text and bytes, JSON nested past the parser's depth, huge numbers, NaN and
Infinity, and audio of every format in odd and empty chunks, in any order with the rest.
"""

import asyncio
import base64
import copy
import json
import string

import numpy as np
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from realtime.engine import events
from realtime.model import tokens
from realtime.transports.openai.connection import RealtimeConnection
from realtime.transports.openai.session import ClientError, Settings, apply_update, decode_base64
from realtime.transports.options import CallOptions
from realtime.transports.twilio.connection import TwilioCall, signed_by_twilio, stream_url
from realtime.transports.webrtc.protocol import ProtocolError, parse_client_message, parse_offer
from realtime.transports.wire_audio import FORMATS, InputAudio

from .serving import TWILIO_START, speech

settings.register_profile(
    "fuzz", max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
FUZZ = settings.get_profile("fuzz")
DEEP = "[" * 20_000 + "]" * 20_000  # past any parser's recursion limit
HUGE = "1" * 5_000  # past Python's int-from-text limit (4300 digits)

# --- strategies ----------------------------------------------------------------------------

HUGE_INTS = st.sampled_from([2**63, -(2**64), 10**400, -(10**4000)])
SCALARS = st.none() | st.booleans() | st.integers() | HUGE_INTS | st.floats() | st.text(max_size=12)
JSON = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=10,
)


def _paths(value: object, prefix: tuple = ()) -> list[tuple]:
    """Every place in a JSON value: the keys and indexes that lead to it."""
    places = [prefix]
    if isinstance(value, dict):
        for key, inner in value.items():
            places += _paths(inner, (*prefix, key))
    elif isinstance(value, list):
        for index, inner in enumerate(value):
            places += _paths(inner, (*prefix, index))
    return places


@st.composite
def mutated(draw: st.DrawFn, valid: dict) -> object:
    """A valid message with one value, at any depth (the whole included), replaced by arbitrary
    JSON or (a field's) dropped."""
    message = copy.deepcopy(valid)
    path = draw(st.sampled_from(_paths(message)))
    if not path:
        return draw(JSON)
    parent = message
    for step in path[:-1]:
        parent = parent[step]
    if isinstance(parent, dict) and draw(st.booleans()):
        del parent[path[-1]]
    else:
        parent[path[-1]] = draw(JSON)
    return message


def variants(valids: list[dict]) -> st.SearchStrategy[object]:
    """The valid messages, and each mutated."""
    return st.sampled_from(valids) | st.sampled_from(valids).flatmap(mutated)


def raw_texts(messages: st.SearchStrategy[object]) -> st.SearchStrategy[str]:
    """Messages as JSON text (NaN and Infinity as Python writes them), or any text at all."""
    return messages.map(json.dumps) | st.text(max_size=40) | st.sampled_from([DEEP, HUGE, ""])


def one_line(exc: Exception) -> bool:
    return bool(str(exc)) and "\n" not in str(exc) and "\r" not in str(exc)


def strict_json(text: str) -> object:
    """JSON as a browser parses it: NaN and Infinity are not."""

    def refuse(name: str) -> None:
        raise ValueError(f"{name} is not JSON")

    return json.loads(text, parse_constant=refuse)


# --- the WebRTC door: the offer and the data channel -----------------------------------------

SDP_LINES = [
    "v=0",
    "o=- 1 2 IN IP4 127.0.0.1",
    "s=-",
    "m=audio 9 UDP/TLS/RTP/SAVPF 111",
    "m=audio 0 UDP/TLS/RTP/SAVPF 111",
    "m=video 9 UDP/TLS/RTP/SAVPF 96",
    "a=sendrecv",
    "a=recvonly",
    "a=inactive",
    "a=rtpmap:111 opus/48000/2",
]
SDP = st.tuples(
    st.lists(st.sampled_from(SDP_LINES) | st.from_regex(r"[a-z]=[^\r\n]{0,20}", fullmatch=True)),
    st.sampled_from(["\r\n", "\n", "\r", ""]),
).map(lambda lines_eol: lines_eol[1].join(lines_eol[0]))
OFFER = {"type": "offer", "sdp": "\r\n".join(SDP_LINES[:4] + SDP_LINES[6:7])}


@FUZZ
@given(
    st.binary(max_size=64)
    | raw_texts(variants([OFFER]) | SDP.map(lambda sdp: {"type": "offer", "sdp": sdp})).map(
        str.encode
    )
)
@example(DEEP.encode())
@example(b"\xff\xfe{")
@example(b"x" * 70_000)
def test_an_offer_is_an_audio_sdp_or_a_protocol_error(body):
    try:
        sdp = parse_offer(body)
    except ProtocolError as exc:
        assert exc.code and one_line(exc)
    else:
        assert sdp.startswith("v=0") and "m=audio " in sdp


DATA_CHANNEL = [
    {"type": "interrupt"},
    {"type": "settings", "vad_aggressiveness": 2, "max_answer_ms": 5000},
]


@FUZZ
@given(st.binary(max_size=16) | raw_texts(variants(DATA_CHANNEL)))
@example(DEEP)
@example('{"type": "settings", "max_answer_ms": NaN}')
@example('{"type": "settings", "vad_aggressiveness": ' + HUGE + "}")
def test_a_data_channel_message_is_parsed_or_a_protocol_error(raw):
    try:
        parse_client_message(raw)
    except ProtocolError as exc:
        assert exc.code and one_line(exc)


# --- the OpenAI door: session.update and the connection ------------------------------------

BETA_SESSION = {
    "modalities": ["text", "audio"],
    "instructions": "Be brief.",
    "input_audio_format": "pcm16",
    "output_audio_format": "g711_ulaw",
    "input_audio_transcription": {"model": "whisper-1", "prompt": "", "language": "en"},
    "input_audio_noise_reduction": {"type": "near_field"},
    "turn_detection": {
        "type": "server_vad",
        "threshold": 0.5,
        "prefix_padding_ms": 300,
        "silence_duration_ms": 500,
        "create_response": True,
        "interrupt_response": True,
    },
    "tools": [{"type": "function", "name": "weather", "parameters": {}}],
    "tool_choice": "auto",
}
GA_SESSION = {
    "type": "realtime",
    "output_modalities": ["audio"],
    "audio": {
        "input": {
            "format": {"type": "audio/pcm", "rate": 24000},
            "transcription": {"model": "gpt-4o-transcribe", "language": "en-US"},
            "noise_reduction": None,
            "turn_detection": {"type": "semantic_vad", "eagerness": "auto"},
        },
        "output": {"format": {"type": "audio/pcmu"}, "voice": "alloy"},
    },
}


@FUZZ
@given(variants([BETA_SESSION, GA_SESSION]))
def test_a_session_update_applies_or_is_a_client_error(session):
    try:
        updated, unused = apply_update(Settings(), session)
    except ClientError as exc:
        assert exc.code and one_line(exc)
    else:
        assert isinstance(updated, Settings) and all(isinstance(u, str) for u in unused)


@FUZZ
@given(JSON | st.text(alphabet=string.printable + "é€\x00", max_size=12))
@example("=")
@example("QUJD")
def test_base64_decodes_or_is_a_client_error(value):
    try:
        decode_base64(value, "audio")
    except ClientError as exc:
        assert exc.code == "invalid_value" and one_line(exc)


def _chunks(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


SPEECH = _chunks(speech("pcm16"), 9_600)  # 200 ms each: some voiced, some silent
AUDIO = st.sampled_from(SPEECH) | st.binary(max_size=33)
B64 = AUDIO.map(lambda audio: base64.b64encode(audio).decode())
LATEST = "$latest"  # stands for the latest item's id (serve() puts it in)
ITEM_IDS = st.sampled_from([LATEST, "item_0_1", "nope", ""])


def openai_events() -> st.SearchStrategy[dict]:
    """One of each client event, valid (ids drawn from those a short session makes)."""
    return st.one_of(
        st.sampled_from([BETA_SESSION, GA_SESSION, {}]).map(
            lambda session: {"type": "session.update", "session": session}
        ),
        B64.map(lambda audio: {"type": "input_audio_buffer.append", "audio": audio}),
        st.sampled_from(
            [
                {"type": "input_audio_buffer.commit"},
                {"type": "input_audio_buffer.clear"},
                {"type": "response.cancel"},
                {"type": "output_audio_buffer.clear"},
                {"type": "response.create"},
                {"type": "response.create", "response": {"modalities": ["text"]}},
                {"type": "response.create", "response": {"instructions": "Say hello."}},
            ]
        ),
        st.builds(
            lambda text: {
                "type": "conversation.item.create",
                "item": {"type": "message", "role": "user", "content": [text]},
            },
            st.just({"type": "input_text", "text": "What is the capital of France?"})
            | B64.map(lambda audio: {"type": "input_audio", "audio": audio}),
        ),
        st.builds(
            lambda item_id, end_ms: {
                "type": "conversation.item.truncate",
                "item_id": item_id,
                "content_index": 0,
                "audio_end_ms": end_ms,
            },
            ITEM_IDS,
            st.integers(0, 300),
        ),
        st.builds(
            lambda kind, item_id: {"type": kind, "item_id": item_id},
            st.sampled_from(["conversation.item.delete", "conversation.item.retrieve"]),
            ITEM_IDS,
        ),
    ).map(lambda event: {"event_id": "evt_1", **event})


class Wire:
    """The WebSocket a door writes to, kept in memory."""

    def __init__(self) -> None:
        self.sent: list[str] = []

    async def send_str(self, text: str) -> None:
        self.sent.append(text)


class StubEngine:
    """An engine session that takes everything and answers nothing by itself."""

    id = 0

    def push_audio(self, *args) -> None: ...

    def end_turn(self, *args, **kwargs) -> None: ...

    def resume_turn(self) -> None: ...

    def submit_text(self, *args) -> None: ...

    def cancel(self, *args, **kwargs) -> None: ...

    def clear_input(self) -> None: ...

    def close(self) -> None: ...


# The engine's side of a session, in among the client's events: the answer in progress
# speaks, says a word, ends or fails (events of the current turn).
ENGINE_EVENTS = ["audio", "text", "done", "error", "transcript"]
ENGINE = st.sampled_from(ENGINE_EVENTS).map(lambda kind: ("engine", kind))


def engine_event(kind: str, turn: int) -> events.Event:
    pcm = np.full(tokens.OUTPUT_SAMPLE_RATE_HZ // 25, 0.1, np.float32)  # 40 ms
    return {
        "audio": events.AudioChunk(0, 0.0, turn, pcm),
        "text": events.TextDelta(0, 0.0, turn, "Paris"),
        "done": events.Done(0, 0.0, turn, "end of audio", 3, "Paris", [1], [[0] * 7]),
        "error": events.Error(0, 0.0, turn, "the engine failed"),
        "transcript": events.TranscriptDone(0, 0.0, turn, "end of text", "hi", [1], 9),
    }[kind]


def serve(steps: list, ga: bool) -> list[dict]:
    """Drive an OpenAI connection in memory through `steps` (client texts and engine events);
    every event it sent, checked to be strict JSON."""

    async def scenario() -> list[str]:
        wire = Wire()
        connection = RealtimeConnection(wire, CallOptions(), "mini-omni", ga)
        connection.handle = StubEngine()
        for step in steps:
            if isinstance(step, tuple):
                turn = connection._responses._engine_turn
                connection._on_engine_event(engine_event(step[1], turn))
            else:
                latest = next(reversed(connection._conversation._items), "")
                connection._on_text(step.replace(LATEST, latest))
        connection._on_text(json.dumps({"type": "session.update", "session": {}}))
        await asyncio.sleep(0)  # the outbox writes
        assert not connection.closed
        return wire.sent

    return [strict_json(text) for text in asyncio.run(scenario())]


@FUZZ
@given(
    st.lists(raw_texts(openai_events() | openai_events().flatmap(mutated)) | ENGINE, max_size=12),
    st.booleans(),
)
@example([DEEP, HUGE], False)
@example(['{"type": "session.update", "session": {"tool_choice": NaN}}'], True)
@example(['{"type": "session.update", "session": {"tools": [{"x": 1e400}]}}'], False)
@example(['{"type": "input_audio_buffer.append", "audio": "\\u00e9"}'], False)
def test_every_openai_event_is_answered_and_the_session_keeps_serving(steps, ga):
    sent = serve(steps, ga)
    for event in sent:
        if event["type"] == "error":
            assert event["error"]["code"] != "internal", event
            assert one_line(ClientError("", event["error"]["message"]))
    assert sent[-1]["type"] == "session.updated"


# --- the Twilio door: Media Streams messages and the webhook's signature -------------------

ULAW = _chunks(speech("g711_ulaw"), 1_600)  # 200 ms each
TWILIO = [
    {"event": "connected", "protocol": "Call", "version": "1.0.0"},
    TWILIO_START,
    {"event": "media", "media": {"track": "inbound", "chunk": "1", "payload": "//8="}},
    {"event": "mark", "streamSid": "MZ0001", "mark": {"name": "1:960"}},
    {"event": "mark", "mark": {"name": "1:end"}},
    {"event": "dtmf", "dtmf": {"digit": "1"}},
    {"event": "stop", "stop": {"callSid": "CA0001"}},
]
SPOKEN = st.sampled_from(ULAW).map(
    lambda audio: {"event": "media", "media": {"payload": base64.b64encode(audio).decode()}}
)


@FUZZ
@given(st.lists(raw_texts(variants(TWILIO) | SPOKEN) | ENGINE, max_size=14))
@example([DEEP, HUGE, json.dumps(TWILIO_START), '{"event": "media", "media": {"payload": "é"}}'])
def test_a_twilio_call_takes_any_message(steps):
    async def scenario() -> list[str]:
        wire = Wire()
        call = TwilioCall(wire, CallOptions(max_answer_ms=100))
        call.handle = StubEngine()
        for step in steps:
            if isinstance(step, tuple):
                call._on_engine_event(engine_event(step[1], call._engine_turn))
            else:
                call._on_text(step)
        await asyncio.sleep(0)
        return wire.sent

    for text in asyncio.run(scenario()):
        assert strict_json(text)["streamSid"] == "MZ0001"


ODD_TEXT = st.text(max_size=12) | st.sampled_from(["é", "\udce9", "[", "]", ":", "%", ""])
PARAMS = st.dictionaries(ODD_TEXT, st.lists(ODD_TEXT, max_size=2), max_size=4)
# The URL Twilio signed, as the server makes it from the request's Host (and
# X-Forwarded-Proto) headers when it has no --public-url: the client's to write.
URLS = st.tuples(
    st.sampled_from(["https", "http", "wss", ""]) | ODD_TEXT,
    st.from_regex(r"[a-z0-9.\[\]:%@é-]{0,24}", fullmatch=True) | ODD_TEXT,
).map(lambda scheme_host: f"{scheme_host[0]}://{scheme_host[1]}/twilio/voice?x=1")


@FUZZ
@given(URLS, PARAMS, ODD_TEXT | st.text(max_size=40))
@example("https://voice.example.com/twilio/voice", {}, "é")
@example("https://voice.example.com:99999/twilio/voice", {}, "")
@example("https://[::1/twilio/voice", {}, "")
def test_a_webhook_signature_is_checked_whatever_it_holds(url, params, given_signature):
    assert signed_by_twilio("auth-token", url, params, given_signature) in (True, False)
    public_url = url.removesuffix("/twilio/voice?x=1")
    assert signed_by_twilio("auth-token", stream_url(public_url), {}, given_signature) in (
        True,
        False,
    )


# --- the audio of the WebSocket doors ---------------------------------------------------------


@FUZZ
@given(
    st.sampled_from(list(FORMATS)),
    st.lists(st.binary(max_size=401) | st.just(b""), max_size=12),
)
def test_audio_in_any_chunks_decodes_to_whole_frames(name, chunks):
    """Empty chunks give nothing, and how the bytes are split changes nothing."""
    split = InputAudio(FORMATS[name])
    frames = []
    for chunk in chunks:
        got = split.push(chunk)
        assert chunk or got == []
        frames += got
    assert all(frame.dtype == np.int16 and frame.shape == (320,) for frame in frames)
    whole = InputAudio(FORMATS[name]).push(b"".join(chunks))
    assert len(frames) == len(whole)
    if frames:
        np.testing.assert_array_equal(np.concatenate(frames), np.concatenate(whole))

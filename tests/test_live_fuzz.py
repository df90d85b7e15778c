"""Fuzzing through a live `realtime serve` (tiny model, no token), where test_fuzz.py fuzzes
the parsers in-process: what a client sends reaches aiohttp and aiortc as it would from outside.

Whatever arrives, the answer is a success or a 4xx with a JSON error, never a 5xx nor a hang;
a WebSocket answers errors and keeps serving; the server stays healthy, and every session it
opened (answered offers included, which nobody connects to) is freed in the end.
"""

import asyncio
import base64
import json
import re
import urllib.error
import urllib.parse
import urllib.request

import aiohttp
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from realtime.transports.wire_audio import FORMATS

from .serving import TWILIO_START, ServerProcess, browser_offer, speech
from .test_fuzz import DEEP, HUGE, TWILIO, mutated, openai_events, raw_texts, strict_json, variants

pytestmark = pytest.mark.slow

LIVE = settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
CHEAP = settings(LIVE, max_examples=40)  # requests that open no peer connection
REQUEST_S = 20.0  # any one request's answer; a hang fails
ABANDONED_S = 40.0  # an answered offer nobody connects to holds its slot about this long at most
MAX_SESSIONS = 64  # room for every answered offer of one test while they wait to be freed


@pytest.fixture(scope="module")
def open_server(tiny_dir, tmp_path_factory):
    """A server open to this machine (no token: Twilio's requests are not signed)."""
    server = ServerProcess.start(
        tiny_dir, tmp_path_factory.mktemp("open"), token=None, max_sessions=MAX_SESSIONS
    )
    yield server
    server.stop()


def post(url: str, body: bytes, content_type: str | None) -> tuple[int, str, bytes]:
    """Status, content type and body of a POST, errors included."""
    headers = {"Content-Type": content_type} if content_type else {}
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=REQUEST_S) as reply:
            return reply.status, reply.headers.get_content_type(), reply.read()
    except urllib.error.HTTPError as reply:
        return reply.code, reply.headers.get_content_type(), reply.read()


def assert_json_refusal(status: int, content_type: str, body: bytes) -> None:
    assert 400 <= status < 500, (status, body[:300])
    assert content_type == "application/json", (status, content_type, body[:300])
    error = json.loads(body)["error"]
    assert error["code"] and error["message"]


# --- POST /offer: SDP that reaches aiortc ----------------------------------------------------


OFFER_LINES = browser_offer().splitlines()
NUMBER = re.compile(r"\d+")
JUNK = st.text(max_size=30) | st.sampled_from(["", "é€😀", "\x00", "-1", "1e999", "NaN"])
HUGE_NUMBERS = st.sampled_from(["99999999999999999999", "4294967296", "65536", "-1", "0", HUGE])
ODD_LINES = st.sampled_from(
    [
        "a=candidate:garbage",
        "a=candidate:1 1 udp 2130706431 999.1.1.1 99999 typ host",
        "a=candidate:1 1 udp 1 ::1 9 typ relay raddr ::1 rport 0",
        "a=candidate:1 1 tcp 1 127.0.0.1 9 typ host tcptype active",
        "a=candidate:é 1 udp 1 127.0.0.1 9 typ host",
        "a=end-of-candidates",
        "a=ice-ufrag:",
        "a=ice-pwd:é",
        "a=ice-options:trickle",
        "a=fingerprint:sha-256 ZZ",
        "a=fingerprint:md5 00:11",
        "a=setup:junk",
        "a=setup:passive",
        "a=mid:",
        "a=group:BUNDLE x y z",
        "a=ssrc:99999999999 cname:x",
        "a=extmap:99999 urn:x",
        "a=rtpmap:111 PCMU/8000",
        "a=rtpmap:0 opus/48000/2",
        "a=fmtp:111 minptime=-1;useinbandfec=é",
        "a=rtcp-fb:111 nack",
        "m=audio 9 UDP/TLS/RTP/SAVPF 0 8",
        "m=audio 99999999999 UDP/TLS/RTP/SAVPF 111",
        "m=video 9 UDP/TLS/RTP/SAVPF 96",
        "m=application 9 UDP/DTLS/SCTP webrtc-datachannel",
        "c=IN IP6 ::1",
        "c=IN IP4 999.0.0.1",
        "a=sctp-port:-1",
        "a=max-message-size:1e999",
        "a=sendonly",
        "a=recvonly",
        "a=inactive",
        "a=msid:- é",
        "b=AS:99999999999",
    ]
)
CODECS = st.sampled_from(["PCMU", "PCMA", "G722", "VP8", "telephone-event", "OPUS", "é", ""])


@st.composite
def mutated_offer(draw: st.DrawFn) -> str:
    """The browser's offer with a few lines dropped, repeated, inserted, or given junk fields,
    huge numbers or another codec; any line ending."""
    lines = list(OFFER_LINES)
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(lines) - 1)) if lines else 0
        how = draw(st.sampled_from(["drop", "repeat", "insert", "junk", "number", "codec"]))
        if how == "insert" or not lines:
            lines.insert(at, draw(ODD_LINES))
        elif how == "drop":
            del lines[at]
        elif how == "repeat":
            lines.insert(at, lines[at])
        elif how == "junk":
            head, _, _ = lines[at].partition(draw(st.sampled_from([":", " ", "="])))
            lines[at] = head + draw(st.sampled_from([":", " ", "="])) + draw(JUNK)
        elif how == "number":
            lines[at] = NUMBER.sub(lambda _: draw(HUGE_NUMBERS), lines[at], count=1)
        else:
            lines = [line.replace("opus", draw(CODECS)) for line in lines]
    return draw(st.sampled_from(["\r\n", "\n"])).join(lines) + "\r\n"


@given(mutated_offer())
@LIVE
@example("\r\n".join(line for line in OFFER_LINES if not line.startswith("a=candidate")))
@example("\r\n".join(line for line in OFFER_LINES if not line.startswith("m=application")))
def test_an_offer_is_answered_or_refused_in_json(open_server, sdp):
    body = json.dumps({"type": "offer", "sdp": sdp}).encode()
    status, content_type, reply = post(f"{open_server.url}/offer", body, "application/json")
    if status == 200:
        answer = json.loads(reply)
        assert answer["type"] == "answer" and answer["sdp"].startswith("v=0"), answer
    else:
        assert_json_refusal(status, content_type, reply)
    assert open_server.health()["ok"]


def test_answered_offers_nobody_connects_to_are_freed(open_server):
    """After the fuzzing above, and one more: every answered offer lets its slot go (held
    until the server gives up on the caller, at most ABANDONED_S)."""
    body = json.dumps({"type": "offer", "sdp": "\r\n".join(OFFER_LINES)}).encode()
    assert post(f"{open_server.url}/offer", body, "application/json")[0] == 200
    open_server.wait_idle(timeout_s=ABANDONED_S)
    assert open_server.health()["ok"]


# --- POST /twilio/voice: forms, and what is not a form ---------------------------------------

FORM_TYPES = st.sampled_from(
    [
        "application/x-www-form-urlencoded",
        "application/x-www-form-urlencoded; charset=bogus",
        "multipart/form-data",
        "multipart/form-data; boundary=x",
        "multipart/form-data; boundary=",
        "application/json",
        "text/plain",
        "text/xml; charset=é",
        None,
    ]
)
FIELDS = st.text(max_size=12) | st.sampled_from(["CallSid", "From", "To", "AccountSid"])
FORM = st.dictionaries(FIELDS, st.text(max_size=20), max_size=5).map(
    lambda form: "&".join(
        f"{urllib.parse.quote(k)}={urllib.parse.quote(v, safe='%=&')}" for k, v in form.items()
    ).encode(errors="surrogatepass")
)
MULTIPART = st.tuples(FIELDS, st.binary(max_size=20)).map(
    lambda field: (
        b'--x\r\nContent-Disposition: form-data; name="'
        + field[0].encode(errors="surrogatepass")
        + b'"\r\n\r\n'
        + field[1]
        + b"\r\n--x--\r\n"
    )
)
BODIES = FORM | MULTIPART | st.binary(max_size=60) | st.sampled_from([b"", b"%", b"=&=", b"--x"])


@given(BODIES, FORM_TYPES)
@CHEAP
@example(b"--x\r\n\r\n", "multipart/form-data; boundary=x")
@example(b"a=%ff%fe", "application/x-www-form-urlencoded")
def test_the_voice_webhook_answers_twiml_or_a_json_refusal(open_server, body, content_type):
    status, reply_type, reply = post(f"{open_server.url}/twilio/voice", body, content_type)
    if status == 200:
        assert reply_type == "text/xml" and b"<Stream" in reply, reply
    else:
        assert_json_refusal(status, reply_type, reply)


# --- the WebSockets: /v1/realtime and /twilio/media ----------------------------------------

AUDIO_FORMATS = sorted(FORMATS)


def _appends(fmt: str) -> list[dict]:
    audio = speech(fmt)
    return [
        {"type": "input_audio_buffer.append", "audio": base64.b64encode(chunk).decode()}
        for chunk in (audio[: len(audio) // 3], audio[len(audio) // 3 :], b"", audio[:1])
    ]


FORMAT_STEPS = st.sampled_from(AUDIO_FORMATS).map(
    lambda fmt: [{"type": "session.update", "session": {"input_audio_format": fmt}}] + _appends(fmt)
)
OPENAI_STEP = (
    raw_texts(openai_events() | openai_events().flatmap(mutated))
    | st.binary(max_size=16)
    | st.sampled_from(
        [
            '{"type": "input_audio_buffer.append", "audio": "!!not base64"}',
            '{"type": "session.update", "session": {"input_audio_format": NaN}}',
            '{"type": "conversation.item.truncate", "item_id": "x", "audio_end_ms": 1e400}',
            '{"type": "session.update", "session": {"turn_detection": {"threshold": Infinity}}}',
        ]
    )
)
OPENAI_STEPS = st.lists(
    OPENAI_STEP | FORMAT_STEPS.map(lambda s: list(map(json.dumps, s))), min_size=1, max_size=8
)


async def _send(ws: aiohttp.ClientWebSocketResponse, steps: list) -> None:
    for step in steps:
        for one in step if isinstance(step, list) else [step]:
            await (ws.send_bytes(one) if isinstance(one, bytes) else ws.send_str(one))


async def _until(ws: aiohttp.ClientWebSocketResponse, kind: str) -> list[dict]:
    """Every event up to the first of `kind`; the connection must stay open until then."""
    seen = []
    async for message in ws:
        assert message.type is aiohttp.WSMsgType.TEXT, (message, seen[-3:])
        seen.append(strict_json(message.data))
        if seen[-1]["type"] == "error":
            assert seen[-1]["error"]["code"] != "internal", seen[-1]
        if seen[-1]["type"] == kind:
            return seen
    raise AssertionError(f"closed ({ws.close_code}) before {kind}: {seen[-3:]}")


@given(OPENAI_STEPS, st.booleans())
@CHEAP
@example([DEEP, HUGE, b"\x00"], True)
def test_an_openai_socket_answers_errors_and_keeps_serving(open_server, steps, beta):
    headers = {"OpenAI-Beta": "realtime=v1"} if beta else {}

    async def scenario() -> None:
        url = f"{open_server.url}/v1/realtime"
        async with aiohttp.ClientSession() as http, asyncio.timeout(REQUEST_S):
            async with http.ws_connect(url, protocols=("realtime",), headers=headers) as ws:
                await _until(ws, "session.created")
                await _send(ws, steps)
                await ws.send_str(json.dumps({"type": "session.update", "session": {}}))
                await _until(ws, "session.updated")

    asyncio.run(scenario())
    assert open_server.health()["ok"]


TWILIO_STEP = raw_texts(variants(TWILIO)) | st.binary(max_size=16)


@given(st.lists(TWILIO_STEP, max_size=8))
@CHEAP
@example([json.dumps(TWILIO_START), DEEP, HUGE, '{"event": "media", "media": {"payload": 5}}'])
def test_a_twilio_stream_takes_anything_and_ends_on_stop(open_server, steps):
    """Whatever came before (a wrong start may end the call early, and that is fine), Twilio's
    stop ends the stream normally and never as a server error."""

    async def scenario() -> int | None:
        url = f"{open_server.url}/twilio/media"
        async with aiohttp.ClientSession() as http, asyncio.timeout(REQUEST_S):
            async with http.ws_connect(url) as ws:
                await _send(ws, steps)
                if not ws.closed:
                    await ws.send_str(json.dumps({"event": "stop", "stop": {}}))
                async for message in ws:
                    assert message.type is aiohttp.WSMsgType.TEXT, message
                    assert strict_json(message.data)["event"] in ("media", "mark", "clear")
                return ws.close_code

    assert asyncio.run(scenario()) == aiohttp.WSCloseCode.OK
    assert open_server.health()["ok"]


def test_the_server_is_idle_after_the_sockets(open_server):
    open_server.wait_idle(timeout_s=ABANDONED_S)
    health = open_server.health()
    idle = {"ok": True, "sessions": 0, "engine_sessions": 0, "max_sessions": MAX_SESSIONS}
    assert {k: health[k] for k in idle} == idle
    assert 0 <= health["discarded_steps"] <= health["decode_steps"]

"""Phone calls through Twilio Media Streams: Twilio's request signatures (against the test vectors
of Twilio's own library), the TwiML, and whole calls against `realtime serve` (tiny model) by a
simulated Twilio that speaks the messages spec/protocols.md lists, plays the answer back at once
and echoes its marks, as Twilio does once audio has played."""

import asyncio
import base64
import json
from xml.etree import ElementTree

import aiohttp
import numpy as np
import pytest

from realtime.engine import events
from realtime.model import tokens
from realtime.transports.options import CallOptions
from realtime.transports.twilio.connection import (
    MEDIA_PATH,
    TwilioCall,
    signature,
    signed_by_twilio,
    stream_url,
    turn_choices,
    twiml,
)
from realtime.transports.wire_audio import FORMATS, InputAudio

from .serving import PUBLIC_URL, TWILIO_START, TWILIO_TOKEN, WAIT_S, speech, within

# Twilio's published example (twilio-python's tests/unit/test_request_validator.py)
VECTOR_TOKEN = "12345"
VECTOR_URL = "https://mycompany.com/myapp.php?foo=1&bar=2"
VECTOR_PARAMS = {
    "CallSid": ["CA1234567890ABCDE"],
    "Digits": ["1234"],
    "From": ["+14158675309"],
    "To": ["+18005551212"],
    "Caller": ["+14158675309"],
}
MEDIA_URL = PUBLIC_URL.replace("https", "wss") + MEDIA_PATH


def test_signature_is_twilios():
    assert signature(VECTOR_TOKEN, VECTOR_URL, VECTOR_PARAMS) == "RSOYDt4T1cUTdK1PDd93/VVr8B8="
    with_port = VECTOR_URL.replace(".com/", ".com:443/")
    assert signature(VECTOR_TOKEN, with_port, VECTOR_PARAMS) == "kvajT1Ptam85bY51eRf/AJRuM3w="
    # Twilio may have signed the URL with its default port or without: either is accepted.
    for url, given in (
        (VECTOR_URL, "kvajT1Ptam85bY51eRf/AJRuM3w="),
        (with_port, "RSOYDt4T1cUTdK1PDd93/VVr8B8="),
    ):
        assert signed_by_twilio(VECTOR_TOKEN, url, VECTOR_PARAMS, given)
    assert not signed_by_twilio("54321", VECTOR_URL, VECTOR_PARAMS, "RSOYDt4T1cUTdK1PDd93/VVr8B8=")
    changed = {**VECTOR_PARAMS, "Digits": ["1235"]}
    assert not signed_by_twilio(VECTOR_TOKEN, VECTOR_URL, changed, "RSOYDt4T1cUTdK1PDd93/VVr8B8=")


def test_twiml_connects_the_call_to_our_stream():
    assert stream_url("https://voice.example.com/") == "wss://voice.example.com/twilio/media"
    assert stream_url("http://10.0.0.2:8080/agent") == "ws://10.0.0.2:8080/agent/twilio/media"
    response = ElementTree.fromstring(twiml("wss://voice.example.com/twilio/media?a=1&b=2"))
    stream = response.find("Connect/Stream")
    assert response.tag == "Response" and stream is not None
    assert stream.get("url") == "wss://voice.example.com/twilio/media?a=1&b=2"  # escaped, read back
    chosen = turn_choices({"end_of_turn": "smart-turn", "other": "x"})
    stream = ElementTree.fromstring(twiml("wss://h/twilio/media", chosen)).find("Connect/Stream")
    parameters = {p.get("name"): p.get("value") for p in stream.findall("Parameter")}
    assert parameters == {"end_of_turn": "smart-turn"}
    with pytest.raises(ValueError, match="vad must be one of webrtc, silero"):
        turn_choices({"vad": "nope"})


def test_a_call_takes_the_turn_detection_its_webhook_chose():
    async def scenario():
        call = TwilioCall(Wire(), CallOptions())
        call.handle = StubEngine()
        parameters = {"end_of_turn": "smart-turn", "vad": "webrtc"}
        call._on_text(
            json.dumps(
                {**TWILIO_START, "start": TWILIO_START["start"] | {"customParameters": parameters}}
            )
        )
        chosen = call._turns.options
        call.close("done")
        return chosen

    chosen = asyncio.run(scenario())
    assert (chosen.end_of_turn, chosen.vad) == ("smart-turn", "webrtc")


class FakeTwilio:
    """Twilio's side of one bidirectional media stream."""

    def __init__(self, server, signed: str | None = None) -> None:
        self.url = server.url + MEDIA_PATH
        given = signature(TWILIO_TOKEN, MEDIA_URL, {}) if signed is None else signed
        self.headers = {"X-Twilio-Signature": given}
        self.received: list[dict] = []

    async def __aenter__(self) -> "FakeTwilio":
        self.http = aiohttp.ClientSession()
        try:
            self.ws = await self.http.ws_connect(self.url, headers=self.headers)
        except BaseException:
            await self.http.close()
            raise
        await self.send({"event": "connected", "protocol": "Call", "version": "1.0.0"})
        await self.send(TWILIO_START)
        return self

    async def __aexit__(self, *exc) -> None:
        await self.ws.close()
        await self.http.close()

    async def send(self, message: dict) -> None:
        await self.ws.send_str(json.dumps(message))

    async def say(self, mulaw: bytes) -> None:
        """20 ms a message, as Twilio sends a call's audio (not paced: the VAD counts frames)."""
        for i in range(0, len(mulaw), 160):
            payload = base64.b64encode(mulaw[i : i + 160]).decode()
            await self.send(
                {
                    "event": "media",
                    "streamSid": "MZ0001",
                    "media": {"track": "inbound", "payload": payload},
                }
            )

    async def until(self, test) -> dict:
        """Read (echoing every mark: the audio before it has 'played') until test(message)."""
        while True:
            message = await self.ws.receive()
            if message.type is not aiohttp.WSMsgType.TEXT:
                return {"event": "closed", "type": message.type}
            event = json.loads(message.data)
            self.received.append(event)
            if event["event"] == "mark":
                await self.send({"event": "mark", "streamSid": "MZ0001", "mark": event["mark"]})
            if test(event):
                return event


def mark(name_end: str):
    return lambda e: e["event"] == "mark" and e["mark"]["name"].endswith(name_end)


@pytest.mark.slow
def test_a_phone_call_is_answered_in_mulaw_and_ends_when_twilio_stops(server):
    async def scenario():
        async with FakeTwilio(server) as twilio:
            for garbage in (
                "{not json",
                "[1]",
                '{"event": "media", "media": "oops"}',
                '{"event": "mark", "mark": 5}',
                '{"event": "weird"}',
            ):
                await twilio.ws.send_str(garbage)  # logged and ignored: the call goes on
            await twilio.say(speech("g711_ulaw"))
            await twilio.until(mark(":end"))
            await twilio.send({"event": "dtmf", "streamSid": "MZ0001", "dtmf": {"digit": "1"}})
            await twilio.send({"event": "stop", "streamSid": "MZ0001"})
            closed = await twilio.until(lambda e: e["event"] == "closed")
            return twilio.received, closed

    received, closed = asyncio.run(within(WAIT_S, scenario()))
    assert closed["type"] in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
    assert {e["event"] for e in received} <= {"media", "mark", "closed"}
    assert all(e["streamSid"] == "MZ0001" for e in received if e["event"] != "closed")
    mulaw = b"".join(
        base64.b64decode(e["media"]["payload"]) for e in received if e["event"] == "media"
    )
    heard = np.concatenate(InputAudio(FORMATS["g711_ulaw"]).push(mulaw))
    assert len(heard) > 0
    marks = [e["mark"]["name"] for e in received if e["event"] == "mark"]
    assert marks[-1] == "1:end" and all(m.startswith("1:") for m in marks)
    sent = [int(m.split(":")[1]) for m in marks[:-1]]
    assert sent == sorted(sent) and sent[-1] > 0  # samples sent so far, growing
    # 8 kHz bytes for the 24 kHz samples sent (the resampler's last few ms come at the end)
    assert abs(len(mulaw) - sent[-1] // 3) <= 80
    server.wait_idle()  # "stop" freed the slot


@pytest.mark.slow
def test_speaking_over_the_answer_clears_twilios_buffer(server):
    async def scenario():
        async with FakeTwilio(server) as twilio:
            await twilio.say(speech("g711_ulaw"))
            await twilio.until(lambda e: e["event"] == "media")
            await twilio.say(speech("g711_ulaw", "q_weather.wav"))
            await twilio.until(lambda e: e["event"] == "clear")
            cleared_at = len(twilio.received)
            await twilio.until(mark("2:end"))
            return twilio.received, cleared_at

    received, cleared_at = asyncio.run(within(WAIT_S, scenario()))
    after = [e["mark"]["name"] for e in received[cleared_at:] if e["event"] == "mark"]
    assert after and all(name.startswith("2:") for name in after)  # nothing more of answer 1
    assert not any(e["event"] == "mark" and e["mark"]["name"] == "1:end" for e in received)


@pytest.mark.slow
def test_unsigned_requests_are_refused_and_signed_ones_get_twiml(server):
    async def scenario():
        statuses = []
        for given in ("", signature("not-the-token", MEDIA_URL, {})):
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                async with FakeTwilio(server, signed=given):
                    pass
            statuses.append(refused.value.status)
        form = {"CallSid": "CA0001", "From": "+15550001", "To": "+15550002"}
        voice_url = PUBLIC_URL + "/twilio/voice"
        good = signature(TWILIO_TOKEN, voice_url, {k: [v] for k, v in form.items()})
        replies = []
        async with aiohttp.ClientSession() as http:
            for given in (good, good[::-1]):
                headers = {"X-Twilio-Signature": given}
                async with http.post(
                    server.url + "/twilio/voice", data=form, headers=headers
                ) as reply:
                    replies.append((reply.status, await reply.text()))
        return statuses, replies

    statuses, ((status, body), (bad_status, bad_body)) = asyncio.run(within(WAIT_S, scenario()))
    assert statuses == [403, 403]
    assert (
        status == 200
        and ElementTree.fromstring(body).find("Connect/Stream").get("url") == MEDIA_URL
    )
    assert bad_status == 403 and json.loads(bad_body)["error"]["code"] == "bad_signature"


class Wire:
    """The WebSocket a TwilioCall writes to, kept in memory."""

    def __init__(self) -> None:
        self.sent: list[dict] = []

    async def send_str(self, text: str) -> None:
        self.sent.append(json.loads(text))


class StubEngine:
    """The engine session's face to a door: what the call asked of it."""

    id = 0

    def __init__(self) -> None:
        self.asked: list[str] = []

    def push_audio(self, pcm) -> None:
        pass

    def end_turn(self, *args, tentative: bool = False) -> None:
        self.asked.append("early" if tentative else "end_turn")

    def resume_turn(self) -> None:
        self.asked.append("resume")

    def rejoin_turn(self) -> None:
        self.asked.append("rejoin")

    def cancel(self, *args, **kwargs) -> None:
        self.asked.append("cancel")

    def close(self) -> None:
        self.asked.append("close")


def start_without_a_stream(stream_sid: str | None) -> dict:
    return {"event": "start", "start": TWILIO_START["start"] | {"streamSid": stream_sid}}


def test_the_answer_s_length_limit_stops_the_engine_and_a_second_start_keeps_the_stream():
    """--max-answer-ms: the engine is cancelled in the chunk that reaches the limit (not when
    a later one has nothing left), and the end mark follows. A repeated start without a
    streamSid keeps the call's; a call that never gets one is closed."""

    async def scenario():
        wire, engine = Wire(), StubEngine()
        call = TwilioCall(wire, CallOptions(max_answer_ms=100))
        call.handle = engine
        call._on_text(json.dumps(TWILIO_START))
        for unnamed in ("", None):
            call._on_text(json.dumps(start_without_a_stream(unnamed)))
        assert call.stream_sid == "MZ0001" and not call.closed
        payload = base64.b64encode(speech("g711_ulaw")).decode()
        call._on_text(json.dumps({"event": "media", "media": {"payload": payload}}))
        assert engine.asked == ["early", "end_turn"]  # begun at the pause, then confirmed
        chunk = np.full(tokens.OUTPUT_SAMPLE_RATE_HZ // 25, 0.1, np.float32)  # 40 ms each
        for _ in range(3):  # the third reaches 100 ms
            call._on_engine_event(events.AudioChunk(0, 0.0, 1, chunk))
        await asyncio.sleep(0)  # the outbox writes
        assert engine.asked == ["early", "end_turn", "cancel"]
        marks = [m["mark"]["name"] for m in wire.sent if m["event"] == "mark"]
        assert marks[-1] == "1:end" and all(m["streamSid"] == "MZ0001" for m in wire.sent)
        assert marks[-2] == f"1:{tokens.OUTPUT_SAMPLE_RATE_HZ // 10}"  # all 100 ms of it

        unnamed = TwilioCall(Wire(), CallOptions())
        unnamed.handle = StubEngine()
        unnamed._on_text(json.dumps(start_without_a_stream(None)))
        assert unnamed.closed

    asyncio.run(scenario())

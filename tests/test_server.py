"""`realtime serve` over real WebRTC on 127.0.0.1, driven by the loopback client (tiny model).

Timing bounds are the spec's where it sets them (barge-in stops outbound audio within 150 ms,
measured at the server; a vanished client frees its slot within 5 s); everything else waits
generously, so a loaded machine makes these slower, not red.
"""

import asyncio
import json

import aiohttp
import numpy as np
import pytest
from aiohttp.test_utils import TestClient, TestServer
from aiortc import RTCPeerConnection

from realtime.audio.io import load_audio
from realtime.engine.engine import Engine, EngineOptions
from realtime.engine.session import SessionOptions
from realtime.server import Server
from realtime.server_config import ServerOptions
from realtime.transports.webrtc.caller import LoopbackClient, SignalingError, call, post_offer
from realtime.transports.webrtc.protocol import MAX_MESSAGE_BYTES

from .serving import (
    DATA,
    MAX_SESSIONS,
    SLOT_RELEASE_S,
    TOKEN,
    WAIT_S,
    clip,
    kill_mid_answer,
    within,
)

BARGE_IN_STOP_MS = 150

pytestmark = pytest.mark.slow


def types(client: LoopbackClient) -> list[str]:
    return [e["type"] for e in client.events]


def test_call_speaks_back_with_events_in_order(server):
    async def scenario():
        settings = {"max_answer_ms": 1500}
        return await within(WAIT_S, call(server.url, clip("q_capital.wav"), TOKEN, settings))

    client, spoken = asyncio.run(scenario())
    seen = types(client)
    expected = ["session.ready", "speech.started", "speech.stopped", "response.started"]
    expected += ["turn.latency", "response.done"]
    assert [t for t in seen if t in expected] == expected, seen
    reply = client.recording.audio(since=spoken)
    assert np.count_nonzero(np.abs(reply) > 1e-3) > 0.1 * reply.size
    done = client.of_type("response.done")[0]
    assert 0 < done["played_ms"] <= 1500 and done["reason"] != "error"
    latency = client.of_type("turn.latency")[0]
    assert 0 < latency["end_of_turn_ms"] <= latency["first_audio_ms"] < WAIT_S * 1000
    assert latency["first_text_ms"] is not None
    # serve --transcribe: the page is told so, and the call waited for the caller's words
    assert client.of_type("session.ready")[0]["transcripts"] is True
    heard = client.of_type("speech.transcript.done")
    assert [e["turn"] for e in heard] == [1] and isinstance(heard[0]["text"], str)


def test_realtime_call_keeps_a_reply_that_outlasts_its_timeout(server, tmp_path, capsys):
    """`realtime call` whose --timeout ends mid-reply: it says so, prints the events so far,
    writes the audio so far and exits with status 1 (a call with no reply at all is an error)."""
    from realtime import cli
    from realtime.model import tokens

    speech_s = len(clip("q_capital.wav")) / tokens.INPUT_SAMPLE_RATE_HZ
    out = tmp_path / "reply.wav"
    wav = str(DATA / "q_capital.wav")
    # The server answers with up to 160 steps (13.7 s); its first audio comes in ~1 s.
    argv = ["call", server.url, "--wav", wav, "--token", TOKEN, "--out", str(out)]
    status = cli.main([*argv, "--timeout", str(speech_s + 6)])
    printed = capsys.readouterr()
    assert status == 1 and "the reply was still playing after" in printed.err, printed.err
    printed_types = sorted(json.loads(line)["type"] for line in printed.out.splitlines())
    assert printed_types == ["speech.transcript.done", "turn.latency"]  # (serve --transcribe)
    reply = load_audio(out)  # 16 kHz
    assert len(reply) > tokens.INPUT_SAMPLE_RATE_HZ  # more than a second of it
    server.wait_idle()
    assert cli.main([*argv, "--timeout", "0.5"]) == cli.EXIT_BAD_INPUT
    assert "no reply within" in capsys.readouterr().err


async def _answer_then(client: LoopbackClient, act) -> dict:
    """Speak a question, wait until the answer has played a while, act, await the interrupt."""
    await client.connect()
    client.send({"type": "settings", "max_answer_ms": 60_000})
    await client.say(clip("q_capital.wav"))
    started = await client.wait_for("response.started")
    await asyncio.sleep(1.0)
    await act()
    return await client.wait_for("response.interrupted", after=started["_t"])


def test_barge_in_stops_audio_within_150_ms(server):
    async def scenario():
        client = LoopbackClient(server.url, TOKEN)
        try:
            speech = clip("bargein_stop.wav")
            event = await within(WAIT_S, _answer_then(client, lambda: client.say(speech)))
            # The interrupting speech is a turn of its own and gets its own answer.
            await within(WAIT_S, client.wait_for("response.started", after=event["_t"]))
            return client, event
        finally:
            await client.close()

    client, event = asyncio.run(scenario())
    assert event["reason"] == "speech"
    assert event["stop_ms"] <= BARGE_IN_STOP_MS, event
    assert 500 <= event["played_ms"] <= 60_000
    assert types(client).count("speech.started") == 2
    # Nothing of the old answer arrives once the client is told it stopped (jitter aside).
    quiet = client.recording.audio(since=event["_t"] + 0.25, until=event["_t"] + 0.5)
    assert quiet.size and np.abs(quiet).max() < 1e-3


def test_client_interrupt_stops_audio(server):
    async def scenario():
        client = LoopbackClient(server.url, TOKEN)
        try:
            return await within(WAIT_S, _answer_then(client, _interrupt(client)))
        finally:
            await client.close()

    event = asyncio.run(scenario())
    assert event["reason"] == "client" and event["stop_ms"] <= BARGE_IN_STOP_MS
    assert event["played_ms"] >= 500


def _interrupt(client: LoopbackClient):
    async def act():
        client.send({"type": "interrupt"})

    return act


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b"not json", 400, "bad_json"),
        (json.dumps({"type": "offer"}).encode(), 400, "bad_offer"),
        (json.dumps({"type": "offer", "sdp": "hello"}).encode(), 400, "bad_sdp"),
        (
            json.dumps(
                {"type": "offer", "sdp": "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n"}
            ).encode(),
            400,
            "bad_sdp",
        ),
        (b"x" * (MAX_MESSAGE_BYTES + 1), 413, "too_large"),
    ],
)
def test_bad_offers_get_clear_errors(server, body, status, code):
    async def post():
        headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{server.url}/offer", data=body, headers=headers) as reply:
                return reply.status, await reply.json()

    got_status, reply = asyncio.run(post())
    assert (got_status, reply["error"]["code"]) == (status, code), reply
    assert reply["error"]["message"]
    assert server.wait_idle() < WAIT_S  # a refused offer holds no slot


def test_what_is_not_an_offer_gets_json_and_the_page_its_files(server):
    async def fetch(method, path):
        async with aiohttp.ClientSession() as http:
            async with http.request(method, f"{server.url}{path}") as reply:
                what, message = reply.content_type, ""
                if what == "application/json":
                    error = (await reply.json())["error"]
                    what, message = error["code"], error["message"]
                return (reply.status, what, reply.headers.get("Allow")), message

    expected = {
        ("GET", "/offer"): (405, "method_not_allowed", "POST"),  # a browser opening it
        ("PUT", "/offer"): (405, "method_not_allowed", "POST"),
        ("POST", "/healthz"): (405, "method_not_allowed", "GET,HEAD"),
        ("GET", "/nope"): (404, "not_found", None),
        ("GET", "/..%2Fpyproject.toml"): (404, "not_found", None),  # nothing outside client/
        ("GET", "/app.js"): (200, "application/javascript", None),
    }

    async def scenario():
        return {request: await fetch(*request) for request in expected}

    got = asyncio.run(scenario())
    assert {request: answer for request, (answer, _) in got.items()} == expected
    assert "POST an SDP offer" in got["GET", "/offer"][1]


def test_offer_without_audio_and_wrong_token_are_refused(server):
    async def scenario():
        pc = RTCPeerConnection()
        pc.createDataChannel("events")
        await pc.setLocalDescription(await pc.createOffer())
        errors = []
        for sdp, token in ((pc.localDescription.sdp, TOKEN), ("v=0", "wrong"), ("v=0", None)):
            with pytest.raises(SignalingError) as refused:
                await post_offer(server.url, sdp, token)
            errors.append((refused.value.status, refused.value.code))
        await pc.close()
        return errors

    assert asyncio.run(scenario()) == [
        (400, "no_audio"),
        (401, "unauthorized"),
        (401, "unauthorized"),
    ]


def test_bad_data_channel_messages_get_errors_and_the_call_goes_on(server):
    bad = [
        ("{not json", "bad_json"),
        (json.dumps({"type": "dance"}), "unknown_type"),
        (json.dumps(["interrupt"]), "bad_json"),
        (json.dumps({"type": "settings", "vad_aggressiveness": 9}), "bad_value"),
        (json.dumps({"type": "settings", "volume": 3}), "bad_field"),
        (json.dumps({"type": "settings", "pad": "x" * MAX_MESSAGE_BYTES}), "too_large"),
    ]

    async def scenario():
        client = LoopbackClient(server.url, TOKEN)
        try:
            await within(WAIT_S, client.connect())
            for raw, _ in bad:
                client.send(raw)
            client.send({"type": "settings", "vad_aggressiveness": 3})
            await within(WAIT_S, client.wait_for("settings.updated"))
            return client
        finally:
            await client.close()

    client = asyncio.run(scenario())
    assert [e["error"]["code"] for e in client.of_type("error")] == [code for _, code in bad]
    assert client.of_type("settings.updated")[0]["settings"]["vad_aggressiveness"] == 3


def test_one_session_too_many_is_busy_and_the_others_carry_on(server):
    async def scenario():
        clients = [LoopbackClient(server.url, TOKEN) for _ in range(MAX_SESSIONS)]
        extra = LoopbackClient(server.url, TOKEN)
        try:
            for client in clients:
                await within(WAIT_S, client.connect())
            with pytest.raises(SignalingError) as refused:
                await within(WAIT_S, extra.connect())
            clients[0].send({"type": "settings", "max_answer_ms": 1000})
            await within(WAIT_S, clients[0].wait_for("settings.updated"))
            return refused.value
        finally:
            for client in [*clients, extra]:
                await client.close()

    refused = asyncio.run(scenario())
    assert (refused.status, refused.code) == (503, "busy")


def test_a_client_that_vanishes_mid_answer_frees_its_slot(server):
    assert kill_mid_answer(server) <= SLOT_RELEASE_S
    # ... and the server still serves the next caller.
    client, _ = asyncio.run(
        within(WAIT_S, call(server.url, clip("q_capital.wav"), TOKEN, {"max_answer_ms": 500}))
    )
    assert "response.done" in types(client)


# The least an offer may be to reach the engine (parse_offer's checks): one sending audio line.
AUDIO_OFFER = "\r\n".join(
    ["v=0", "o=- 0 0 IN IP4 127.0.0.1", "s=-", "t=0 0", "m=audio 9 UDP/TLS/RTP/SAVPF 111", ""]
)


class Killed(BaseException):
    """What no loop catches: it ends the inference thread."""


def kill(stage: str, lanes: list) -> None:
    raise Killed("the test killed it")


async def _refusals(client: TestClient) -> list[tuple[int, dict | None]]:
    """/healthz, then a caller at each door: (status, JSON body) each (None for WebSockets)."""
    health = await client.get("/healthz")
    offer = await client.post("/offer", json={"type": "offer", "sdp": AUDIO_OFFER})
    got = [(health.status, await health.json()), (offer.status, await offer.json())]
    for path in ("/v1/realtime", "/twilio/media"):
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await client.ws_connect(path)
        got.append((refused.value.status, None))
    return got


def test_a_dead_engine_fails_healthz_and_every_door_refuses(runtime):
    """Once the inference thread has died, /healthz is 503 with the reason and each door
    refuses a caller at once with engine_down, where a full server would say busy."""
    engine = Engine(runtime, EngineOptions(max_sessions=1)).start()
    engine.fault_hook = kill
    engine.open_session(SessionOptions(), lambda event: None).submit_text("hello")
    engine._thread.join(WAIT_S)
    assert engine.down is not None

    async def scenario():
        client = TestClient(TestServer(Server(engine, ServerOptions(max_sessions=1)).app()))
        await client.start_server()
        try:
            return await _refusals(client)
        finally:
            await client.close()

    try:
        (health, offer, *sockets) = asyncio.run(within(WAIT_S, scenario()))
    finally:
        engine.stop()
    assert health[0] == 503 and health[1]["ok"] is False
    assert "Killed: the test killed it" in health[1]["error"]
    assert (offer[0], offer[1]["error"]["code"]) == (503, "engine_down")
    assert "Killed" in offer[1]["error"]["message"] and sockets == [(503, None), (503, None)]

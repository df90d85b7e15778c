"""The limits every call is held to, at every door (transports/lifetime.py, server.py): idle
calls and calls past their length are ended with the door's closing event, one client address
holds only its share, a shutdown lets answers in progress finish and tells every caller, and a
dead engine ends the calls it can no longer answer.

In-process servers (aiohttp's TestServer) on the tiny model's engine, with limits of seconds;
`realtime serve` itself for SIGTERM."""

import asyncio
import contextlib
import json
import time

import aiohttp
import pytest
from aiohttp import WSCloseCode, WSMsgType
from aiohttp.test_utils import TestClient, TestServer

from realtime.decoding.options import DecodingOptions
from realtime.engine.engine import Engine, EngineOptions
from realtime.server import Server, client_address
from realtime.server_config import ServerOptions
from realtime.transports import lifetime
from realtime.transports.lifetime import Clock
from realtime.transports.options import CallOptions
from realtime.transports.webrtc.caller import LoopbackClient, SignalingError

from .serving import TWILIO_START, WAIT_S, within

SILENCE = "A" * 1280  # 40 ms of pcm16 silence at 24 kHz, base64


def test_a_clock_is_idle_only_while_nothing_happens_and_old_at_its_limit():
    clock = Clock()
    t0 = clock.opened_t
    assert clock.overdue(10, 100, busy=False, now=t0 + 9) is None
    assert clock.overdue(10, 100, busy=False, now=t0 + 10).reason == lifetime.IDLE
    # an answer in progress is activity: never idle while it lasts, nor just after
    assert clock.overdue(10, 100, busy=True, now=t0 + 50) is None
    assert clock.overdue(10, 100, busy=False, now=t0 + 59) is None
    closing = clock.overdue(10, 100, busy=True, now=t0 + 100)
    assert closing.reason == lifetime.MAX_DURATION and "1 min 40 s" not in closing.message
    assert "100 s" in closing.message
    assert clock.overdue(None, None, busy=False, now=t0 + 1e6) is None
    assert lifetime.seconds(300) == "5 min" and lifetime.seconds(3600) == "1 h"


class _Request:
    def __init__(self, remote: str, forwarded: str | None = None) -> None:
        self.remote = remote
        self.headers = {} if forwarded is None else {"X-Forwarded-For": forwarded}


def test_the_client_address_is_the_peer_or_what_a_local_proxy_saw():
    assert client_address(_Request("198.51.100.7")) == "198.51.100.7"
    # a proxy here (a tunnel) names the address it saw last; what comes before is the client's
    assert client_address(_Request("127.0.0.1", "10.0.0.1, 203.0.113.5")) == "203.0.113.5"
    assert client_address(_Request("::1", "203.0.113.5")) == "203.0.113.5"
    # a remote peer cannot pose as someone else
    assert client_address(_Request("198.51.100.7", "203.0.113.5")) == "198.51.100.7"


# --- live servers ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def engine(runtime):
    engine = Engine(runtime, EngineOptions(max_sessions=4)).start()
    yield engine
    engine.stop()


@contextlib.asynccontextmanager
async def serving(engine, **call):
    """An in-process server on `engine` with these call options, short answers, no token."""
    options = CallOptions(decoding=DecodingOptions(max_new_tokens=40), **call)
    server = Server(engine, ServerOptions(max_sessions=4, call=options))
    client = TestClient(TestServer(server.app()))
    await client.start_server()
    try:
        yield server, client
    finally:
        await client.close()


async def events_until_closed(ws) -> tuple[list[dict], int | None]:
    """Every event a WebSocket gets until the server closes it, and the close code."""
    received = []
    async for message in ws:
        if message.type is WSMsgType.TEXT:
            received.append(json.loads(message.data))
    return received, ws.close_code


async def twilio_call(client: TestClient):
    ws = await client.ws_connect("/twilio/media")
    await ws.send_str(json.dumps(TWILIO_START))
    return ws


def url(client: TestClient) -> str:
    return str(client.make_url("")).rstrip("/")


@pytest.mark.slow
def test_idle_calls_are_ended_at_every_door_with_a_reason(engine):
    """Nothing said for the idle limit: each door says why and closes; silence streamed in
    does not count as something said."""

    async def scenario():
        async with serving(engine, idle_timeout_s=2.0) as (server, client):
            caller = LoopbackClient(url(client))
            openai = await client.ws_connect("/v1/realtime")
            phone = await twilio_call(client)
            try:
                ready = await caller.connect()
                start = time.monotonic()
                for _ in range(10):  # 400 ms of silence appended: not activity
                    await openai.send_str(
                        json.dumps({"type": "input_audio_buffer.append", "audio": SILENCE})
                    )
                got, code = await events_until_closed(openai)
                closing = await caller.wait_for("session.closing")
                phone_got, phone_code = await events_until_closed(phone)
                took = time.monotonic() - start
                await within(WAIT_S, _until(lambda: not list(server.calls())))
            finally:
                await caller.close()
            return ready, got, code, closing, phone_code, took

    ready, got, code, closing, phone_code, took = asyncio.run(within(WAIT_S, scenario()))
    assert ready["limits"]["idle_timeout_s"] == 2.0
    assert got[-1]["type"] == "error" and got[-1]["error"]["code"] == "session_idle"
    assert code == WSCloseCode.OK and phone_code == WSCloseCode.OK
    assert closing["reason"] == lifetime.IDLE and "2 s" in closing["message"]
    assert 2.0 <= took < 2.0 + 5.0


async def _until(condition, poll_s: float = 0.05) -> None:
    """Poll `condition` (state of the server's, which has no event to wait on)."""
    while True:
        if condition():
            return
        await asyncio.sleep(poll_s)


@pytest.mark.slow
def test_a_session_ends_at_its_maximum_length_however_busy(engine):
    """OpenAI's session_expired, after expires_at; events sent meanwhile do not extend it."""

    async def scenario():
        async with serving(engine, max_session_s=3.0) as (server, client):
            ws = await client.ws_connect("/v1/realtime")
            created = json.loads((await ws.receive()).data)

            async def keep_talking():
                while not ws.closed:
                    await ws.send_str(json.dumps({"type": "session.update", "session": {}}))
                    await asyncio.sleep(0.3)

            talker = asyncio.ensure_future(keep_talking())
            got, code = await events_until_closed(ws)
            talker.cancel()
            return created, got, code, time.time()

    created, got, code, ended = asyncio.run(within(WAIT_S, scenario()))
    expires_at = created["session"]["expires_at"]
    assert abs(expires_at - (ended - 3.0) - 3.0) < 3.0  # three seconds after it was created
    assert got[-1]["error"]["code"] == "session_expired" and code == WSCloseCode.OK
    assert "3 s" in got[-1]["error"]["message"]


@pytest.mark.slow
def test_one_client_address_holds_only_its_share_of_the_slots(engine):
    """Without a token, a client beyond this machine (through a proxy here) gets half the
    slots; programs on this machine are not capped; --max-sessions-per-client caps all."""

    async def scenario():
        async with serving(engine) as (server, client):
            away = {"X-Forwarded-For": "203.0.113.5"}
            held = [await client.ws_connect("/v1/realtime", headers=away) for _ in range(2)]
            with pytest.raises(aiohttp.WSServerHandshakeError) as third:
                await client.ws_connect("/v1/realtime", headers=away)
            other = await client.ws_connect(
                "/v1/realtime", headers={"X-Forwarded-For": "198.51.100.9"}
            )
            local = await client.ws_connect("/v1/realtime")  # this machine: no cap
            for ws in [*held, other, local]:
                await ws.close()
            await _until(lambda: not list(server.calls()))
            server.options = ServerOptions(max_sessions=4, max_sessions_per_client=1)
            first = await client.ws_connect("/v1/realtime")
            with pytest.raises(aiohttp.WSServerHandshakeError) as second:
                await client.ws_connect("/v1/realtime")
            await first.close()
            return third.value.status, second.value.status

    assert asyncio.run(within(WAIT_S, scenario())) == (429, 429)


@pytest.mark.slow
def test_a_capped_offer_is_refused_with_too_many_sessions(engine):
    async def scenario():
        async with serving(engine) as (server, client):
            server.options = ServerOptions(max_sessions=4, max_sessions_per_client=1)
            first = LoopbackClient(url(client))
            second = LoopbackClient(url(client))
            try:
                await first.connect()
                with pytest.raises(SignalingError) as refused:
                    await second.connect()
            finally:
                await first.close()
                await second.close()
            return refused.value

    refused = asyncio.run(within(WAIT_S, scenario()))
    assert (refused.status, refused.code) == (429, "too_many_sessions")
    assert "--max-sessions-per-client" in str(refused)


@pytest.mark.slow
def test_shutdown_lets_the_answer_finish_then_tells_every_caller(engine):
    """An answer in progress goes on to its end; the idle caller is told at once; newcomers
    and /healthz hear that the server is shutting down."""

    async def scenario():
        async with serving(engine) as (server, client):
            caller = LoopbackClient(url(client))
            await caller.connect()
            ws = await client.ws_connect("/v1/realtime")
            item = {"type": "message", "role": "user"}
            item["content"] = [{"type": "input_text", "text": "hello"}]
            await ws.send_str(json.dumps({"type": "conversation.item.create", "item": item}))
            await ws.send_str(json.dumps({"type": "response.create"}))
            while json.loads((await ws.receive()).data)["type"] != "response.created":
                pass
            hurry = asyncio.Event()
            shutting = asyncio.ensure_future(server.shut_down(WAIT_S, hurry))
            await _until(lambda: server.shutting_down)
            health = await client.get("/healthz")
            newcomer = await client.post("/offer", json={"type": "offer", "sdp": "v=0"})
            refused = await handshake_status(client, "/v1/realtime")
            closing = await caller.wait_for("session.closing")
            got, code = await events_until_closed(ws)
            await within(WAIT_S, shutting)
            await caller.close()
            health_body = await health.json()
            return health.status, health_body, newcomer.status, refused, closing, got, code

    health, health_body, newcomer, refused, closing, got, code = asyncio.run(
        within(WAIT_S, scenario())
    )
    assert health == 503 and health_body["error"] == "shutting down"
    assert newcomer == 503 and refused == 503
    assert closing["reason"] == lifetime.SHUTDOWN
    kinds = [event["type"] for event in got]
    assert kinds.index("response.done") < kinds.index("error")
    done = next(event for event in got if event["type"] == "response.done")
    assert done["response"]["status"] in ("completed", "incomplete")  # not cancelled
    assert got[-1]["error"]["code"] == "server_shutting_down" and code == WSCloseCode.GOING_AWAY


async def handshake_status(client: TestClient, path: str) -> int:
    """The status of a WebSocket upgrade the server must refuse."""
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await client.ws_connect(path)
    return refused.value.status


@pytest.mark.slow
def test_a_dead_engine_ends_every_live_call(runtime):
    """The inference thread dies: each caller is told (engine_down) and closed, not left
    holding a call nothing answers."""
    engine = Engine(runtime, EngineOptions(max_sessions=4)).start()

    async def scenario():
        async with serving(engine) as (server, client):
            caller = LoopbackClient(url(client))
            await caller.connect()
            ws = await client.ws_connect("/v1/realtime")
            phone = await twilio_call(client)
            engine.fault_hook = _kill
            await ws.send_str(
                json.dumps(
                    {
                        "type": "conversation.item.create",
                        "item": {
                            "type": "message",
                            "role": "user",
                            "content": [{"type": "input_text", "text": "hello"}],
                        },
                    }
                )
            )
            await ws.send_str(json.dumps({"type": "response.create"}))
            got, code = await events_until_closed(ws)
            closing = await caller.wait_for("session.closing")
            _, phone_code = await events_until_closed(phone)
            await caller.close()
            return got, code, closing, phone_code

    try:
        got, code, closing, phone_code = asyncio.run(within(WAIT_S, scenario()))
    finally:
        engine.stop()
    assert got[-1]["error"]["code"] == "engine_down" and code == WSCloseCode.INTERNAL_ERROR
    assert closing["reason"] == lifetime.ENGINE_DOWN and "Killed" in closing["message"]
    assert phone_code == WSCloseCode.INTERNAL_ERROR


class _Killed(BaseException):
    """What no loop catches: it ends the inference thread."""


def _kill(stage: str, lanes: list) -> None:
    raise _Killed("the test killed it")


def test_the_server_freezes_its_startup_objects_and_logs_slow_collections(monkeypatch, caplog):
    import gc

    from realtime import server

    monkeypatch.setattr(server, "SLOW_COLLECTION_S", 0.0)
    try:
        server.settle_collector()
        assert gc.get_freeze_count() > 10_000
        with caplog.at_level("WARNING", logger="realtime.server"):
            gc.collect(0)
        assert "a garbage collection of generation 0 took" in caplog.text
    finally:
        gc.callbacks.remove(server._time_collections)
        gc.unfreeze()

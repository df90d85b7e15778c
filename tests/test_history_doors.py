"""Memory of the conversation at the doors: the OpenAI door's items are the model's context
(created, answered, deleted, truncated, or let go to make room, the two never disagree), and
the browser's settings switch it. In-process servers on the tiny model's engine; the tokens
themselves are tests/test_history.py's."""

import asyncio
import base64
import json
import time

import pytest
from aiohttp.test_utils import TestClient, TestServer

from realtime.decoding.options import DecodingOptions
from realtime.engine.engine import Engine, EngineOptions
from realtime.server import Server
from realtime.server_config import ServerOptions
from realtime.transports.options import CallOptions
from realtime.transports.webrtc.caller import LoopbackClient

from .serving import WAIT_S, clip, speech, within

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def engine(runtime):
    engine = Engine(runtime, EngineOptions(max_sessions=2)).start()
    yield engine
    engine.stop()


class Door:
    """One /v1/realtime connection: sends events, keeps every event received and the items
    as the client knows them (added, less deleted)."""

    def __init__(self, ws) -> None:
        self.ws, self.received, self.items = ws, [], {}

    async def send(self, kind: str, **fields) -> None:
        await self.ws.send_str(json.dumps({"type": kind, **fields}))

    async def until(self, kind: str) -> dict:
        while True:
            event = json.loads((await self.ws.receive()).data)
            self.received.append(event)
            if event["type"] in ("conversation.item.added", "conversation.item.created"):
                self.items[event["item"]["id"]] = event["item"]["role"]
            elif event["type"] == "conversation.item.deleted":
                self.items.pop(event["item_id"], None)
            if event["type"] == "error" and kind != "error":
                raise AssertionError(event)
            if event["type"] == kind:
                return event

    async def create(self, role: str, part: dict) -> str:
        await self.send(
            "conversation.item.create", item={"type": "message", "role": role, "content": [part]}
        )
        return (await self.until("conversation.item.added"))["item"]["id"]

    async def answer(self) -> dict:
        await self.send("response.create")
        return (await self.until("response.done"))["response"]


def connection_of(server: Server):
    (connection,) = server.connections
    return connection


def context_parts(server: Server, engine: Engine) -> dict[int, set[str]] | None:
    """What the model attends to, turn by turn: the caller's part (prompt), the answer's (None
    before the engine has built the session)."""
    session = engine._sessions.get(connection_of(server).sid)
    if session is None:
        return None
    parts: dict[int, set[str]] = {}
    for t in session.context.turns:
        parts[t.turn] = {"user"} if t.prompt_length else set()
        if t.length > t.prompt_length:
            parts[t.turn].add("assistant")
    return parts


def item_parts(server: Server) -> dict[int, set[str]]:
    """The same, read from the door's items (an answer that said nothing, ended by the random
    model at its first step, has nothing in the context: no part)."""
    parts: dict[int, set[str]] = {}
    for item in connection_of(server)._conversation._items.values():
        said = item.samples if item.spoken else item.transcript
        if item.turn is not None and (item.role == "user" or said):
            parts.setdefault(item.turn, set()).add(item.role)
    return parts


async def agreed(server: Server, engine: Engine) -> dict[int, set[str]]:
    """Wait until the engine has taken every edit sent (its queue drains in order), then the
    context, which must be what the items say."""
    deadline = time.monotonic() + WAIT_S
    while context_parts(server, engine) != item_parts(server):
        assert time.monotonic() < deadline, (context_parts(server, engine), item_parts(server))
        await asyncio.sleep(0.05)
    return context_parts(server, engine)


def serving(engine, **call) -> tuple[Server, TestClient]:
    options = CallOptions(decoding=DecodingOptions(max_new_tokens=12), **call)
    server = Server(engine, ServerOptions(max_sessions=2, call=options))
    return server, TestClient(TestServer(server.app()))


def test_the_items_are_the_model_s_context_through_every_edit(engine):
    async def scenario():
        the_server, client = serving(engine)
        await client.start_server()
        try:
            door = Door(await client.ws_connect("/v1/realtime"))
            await door.until("session.created")
            await door.send("session.update", session={"turn_detection": None})
            assert "history" not in (await door.until("session.updated"))["session"]
            # An earlier exchange the client sends turns memory on.
            asked = await door.create("user", {"type": "input_text", "text": "Hi, I am Ada."})
            await door.create("assistant", {"type": "text", "text": "Hello Ada."})
            assert await agreed(the_server, engine) == {1: {"user", "assistant"}}
            # A typed turn answered, then a spoken one.
            await door.create("user", {"type": "input_text", "text": "What is my name?"})
            await door.answer()
            audio = base64.b64encode(speech(silence_ms=0)).decode()
            spoken = await door.create("user", {"type": "input_audio", "audio": audio})
            response = await door.answer()
            answer_item = response["output"][0]["id"]
            assert (await agreed(the_server, engine)).keys() == {1, 2, 3}
            # Deleting a question leaves its answer; truncating an answer keeps what was heard.
            await door.send("conversation.item.delete", item_id=asked)
            await door.until("conversation.item.deleted")
            await door.send("conversation.item.delete", item_id=spoken)
            await door.until("conversation.item.deleted")
            await door.send(
                "conversation.item.truncate", item_id=answer_item, content_index=0, audio_end_ms=0
            )
            await door.until("conversation.item.truncated")
            return await agreed(the_server, engine), door.items
        finally:
            await client.close()

    parts, items = asyncio.run(within(WAIT_S, scenario()))
    assert parts[1] == {"assistant"} and "user" in parts[2] and 3 not in parts  # (nothing heard)
    assert len(items) == 4


def test_turns_let_go_to_make_room_leave_the_item_list_too(engine):
    """With room for about one earlier turn, each answer pushes the oldest turn out: its
    items are deleted (conversation.item.deleted), so the list stays the context."""

    async def scenario():
        server, client = serving(engine, history=True, history_positions=200)
        await client.start_server()
        try:
            door = Door(await client.ws_connect("/v1/realtime"))
            created = await door.until("session.created")
            assert created["session"]["history"] is True
            await door.send("session.update", session={"turn_detection": None})
            await door.until("session.updated")
            audio = base64.b64encode(speech(silence_ms=0)).decode()  # ~3 s: 150 positions
            asked = [
                await door.create("user", {"type": "input_audio", "audio": audio}),
                (await door.answer())["output"][0]["id"],
            ]
            for _ in range(2):
                await door.create("user", {"type": "input_audio", "audio": audio})
                await door.answer()
            parts = await agreed(server, engine)
            deleted = [e["item_id"] for e in door.received if e["type"].endswith("item.deleted")]
            return parts, deleted, asked
        finally:
            await client.close()

    parts, deleted, asked = asyncio.run(within(WAIT_S, scenario()))
    assert set(asked) <= set(deleted) and list(parts) == [3]


def test_the_browser_switches_memory_in_its_settings(engine):
    async def scenario():
        _, client = serving(engine)
        await client.start_server()
        try:
            caller = LoopbackClient(str(client.make_url("")).rstrip("/"))
            ready = await caller.connect()
            caller.send({"type": "settings", "history": True})
            updated = await caller.wait_for("settings.updated")
            caller.send({"type": "settings", "history": "yes"})
            refused = await caller.wait_for("error")
            session = engine._sessions[ready["session"]]
            deadline = time.monotonic() + WAIT_S
            while not session.keep_history:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
            await caller.close()
            return ready, updated, refused
        finally:
            await client.close()

    ready, updated, refused = asyncio.run(within(WAIT_S, scenario()))
    assert ready["settings"]["history"] is False and updated["settings"]["history"] is True
    assert refused["error"]["code"] == "bad_value"


def test_a_browser_caller_hears_which_turns_were_forgotten(engine):
    """history.forgotten names the caller's turns that left a full context."""

    async def scenario():
        _, client = serving(engine, history=True, history_positions=200)
        await client.start_server()
        try:
            caller = LoopbackClient(str(client.make_url("")).rstrip("/"))
            ready = await caller.connect()
            for _ in range(3):  # ~3 s of speech, 150 positions, each
                spoken = await caller.say(clip("q_capital.wav"))
                await caller.wait_for(("response.done", "response.interrupted"), after=spoken)
            forgotten = await caller.wait_for("history.forgotten")
            await caller.close()
            return ready, forgotten
        finally:
            await client.close()

    ready, forgotten = asyncio.run(within(WAIT_S, scenario()))
    assert ready["settings"]["history"] is True
    assert forgotten["turns"] and forgotten["turns"][0] == 1 and forgotten["positions"] <= 200

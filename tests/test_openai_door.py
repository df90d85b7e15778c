"""`realtime serve`'s OpenAI-Realtime-compatible WebSocket (`/v1/realtime`) on 127.0.0.1, driven
by the official `openai` package's realtime clients (both generations) and by a raw WebSocket
for what those clients would never send. Every event the server sends is read back by the
openai package's own models. Tiny random model: the answers are noise, their events are not.
"""

import asyncio
import base64
import json

import aiohttp
import pytest
from pydantic import TypeAdapter

from realtime.server import cross_site
from realtime.transports.openai.connection import MAX_MESSAGE_BYTES

from .serving import (
    MAX_SESSIONS,
    SLOT_RELEASE_S,
    TOKEN,
    WAIT_S,
    kill_mid_answer,
    speech,
    within,
)

openai = pytest.importorskip("openai")
pytestmark = pytest.mark.slow
DELTAS = ("audio.delta", "audio_transcript.delta", "output_audio_transcript", "text.delta")
GA_TURN = [  # a server-VAD turn and its answer, deltas left out
    "input_audio_buffer.speech_started",
    "input_audio_buffer.speech_stopped",
    "input_audio_buffer.committed",
    "conversation.item.added",
    "conversation.item.done",
    "response.created",
    "response.output_item.added",
    "conversation.item.added",
    "response.content_part.added",
    "response.output_audio.done",
    "response.output_audio_transcript.done",
    "response.content_part.done",
    "response.output_item.done",
    "conversation.item.done",
    "response.done",
]
BETA_MANUAL_TURN = [  # commit, response.create and the answer, deltas left out
    "input_audio_buffer.committed",
    "conversation.item.created",
    "response.created",
    "response.output_item.added",
    "conversation.item.created",
    "response.content_part.added",
    "response.audio.done",
    "response.audio_transcript.done",
    "response.content_part.done",
    "response.output_item.done",
    "response.done",
]


def pieces(data: bytes, size: int = 4800) -> list[str]:
    return [base64.b64encode(data[i : i + size]).decode() for i in range(0, len(data), size)]


def check_events(received: list[dict], ga: bool) -> None:
    """Every event parses as the openai package's server event of its type."""
    if ga:
        union = pytest.importorskip("openai.types.realtime").RealtimeServerEvent
    else:
        union = pytest.importorskip("openai.types.beta.realtime").RealtimeServerEvent
    adapter = TypeAdapter(union)
    for event in received:
        if event["type"].startswith("session."):  # (beta's `model` lists OpenAI's names only)
            event = {**event, "session": {**event["session"], "model": None}}
        parsed = adapter.validate_python(event)
        assert parsed.type == event["type"]


def without_deltas(received: list[dict]) -> list[str]:
    return [e["type"] for e in received if not e["type"].endswith(DELTAS)]


def answer_audio(received: list[dict]) -> bytes:
    chunks = [e["delta"] for e in received if e["type"].endswith("audio.delta")]
    return b"".join(base64.b64decode(c) for c in chunks)


async def read_until(connection, kind: str) -> list[dict]:
    received = []
    while True:
        event = await connection.recv()
        received.append(event.model_dump(exclude_unset=True))
        if event.type == kind:
            return received


def official(server, ga: bool):
    client = openai.AsyncOpenAI(
        api_key=TOKEN,
        base_url=f"{server.url}/v1",
        websocket_base_url=server.url.replace("http", "ws") + "/v1",
    )
    realtime = client.realtime if ga else client.beta.realtime
    return realtime.connect(model="mini-omni")


def test_the_official_ga_client_talks_with_server_vad(server):
    async def scenario():
        async with official(server, ga=True) as connection:
            created = await connection.recv()
            for audio in pieces(speech()):
                await connection.input_audio_buffer.append(audio=audio)
            return [created.model_dump(exclude_unset=True)] + await read_until(
                connection, "response.done"
            )

    received = asyncio.run(within(WAIT_S, scenario()))
    check_events(received, ga=True)
    assert without_deltas(received) == ["session.created", *GA_TURN]
    assert received[0]["session"]["max_output_tokens"] == 160 * 8  # serve --max-new-tokens 160
    done = received[-1]["response"]
    assert done["status"] in ("completed", "incomplete")  # (incomplete: --max-new-tokens)
    audio = answer_audio(received)
    assert len(audio) > 0 and len(audio) % 2 == 0  # 16-bit samples at 24 kHz
    transcript = "".join(e["delta"] for e in received if e["type"].endswith("transcript.delta"))
    assert done["output"][0]["content"][0]["transcript"] == transcript
    assert done["usage"]["output_token_details"]["audio_tokens"] > 0
    started = next(e for e in received if e["type"] == "input_audio_buffer.speech_started")
    stopped = next(e for e in received if e["type"] == "input_audio_buffer.speech_stopped")
    assert 0 <= started["audio_start_ms"] < stopped["audio_end_ms"] <= 3000  # a 2 s question
    assert started["item_id"] == received[3]["item_id"]  # the committed item is the speech's


def test_the_official_beta_client_commits_itself_in_g711(server):
    async def scenario():
        async with official(server, ga=False) as connection:
            await connection.recv()  # session.created
            await connection.session.update(
                session={
                    "turn_detection": None,
                    "input_audio_format": "g711_ulaw",
                    "output_audio_format": "g711_alaw",
                }
            )
            updated = await read_until(connection, "session.updated")
            for audio in pieces(speech("g711_ulaw", silence_ms=0), 1600):
                await connection.input_audio_buffer.append(audio=audio)
            await connection.input_audio_buffer.commit()
            await connection.response.create()
            return updated + await read_until(connection, "response.done")

    received = asyncio.run(within(WAIT_S, scenario()))
    check_events(received, ga=False)
    session = received[0]["session"]
    assert (session["turn_detection"], session["output_audio_format"]) == (None, "g711_alaw")
    assert without_deltas(received)[1:] == BETA_MANUAL_TURN
    audio = answer_audio(received)  # one byte per 8 kHz sample
    assert len(audio) > 0
    # The answer's length in ms, as the truncate check counts it, matches the bytes sent.
    item = received[-1]["response"]["output"][0]
    assert item["status"] in ("completed", "incomplete")


class Raw:
    """A bare WebSocket client, for what the official ones never send."""

    def __init__(self, server, headers: dict | None = None, protocols=()) -> None:
        self.url = server.url + "/v1/realtime?model=mini-omni"
        self.headers = {"Authorization": f"Bearer {TOKEN}"} if headers is None else headers
        self.protocols, self.received, self._ids = protocols, [], 0

    async def __aenter__(self) -> "Raw":
        self.http = aiohttp.ClientSession()
        try:
            self.ws = await self.http.ws_connect(
                self.url, headers=self.headers, protocols=self.protocols
            )
        except BaseException:
            await self.http.close()
            raise
        return self

    async def __aexit__(self, *exc) -> None:
        await self.ws.close()
        await self.http.close()

    async def send(self, kind: str, **fields) -> str:
        self._ids += 1
        event_id = f"client_{self._ids}"
        await self.ws.send_str(json.dumps({"type": kind, "event_id": event_id, **fields}))
        return event_id

    async def until(self, kind: str, **match) -> dict:
        while True:
            message = await self.ws.receive()
            assert message.type is aiohttp.WSMsgType.TEXT, message
            event = json.loads(message.data)
            self.received.append(event)
            if event["type"] == kind and all(event.get(k) == v for k, v in match.items()):
                return event

    async def error(self, event_id: str) -> dict:
        return (await self.until("error"))["error"] | {"for": event_id}

    async def say(self, audio: bytes) -> None:
        for piece in pieces(audio):
            await self.send("input_audio_buffer.append", audio=piece)


def test_speaking_over_an_answer_cancels_it_and_answers_the_new_turn(server):
    async def scenario():
        async with Raw(server) as client:
            await client.say(speech())
            await client.until("response.output_audio.delta")
            await client.say(speech("pcm16", "q_weather.wav"))
            cancelled = await client.until("response.done")
            second = await client.until("response.done")
            return client.received, cancelled, second

    received, cancelled, second = asyncio.run(within(WAIT_S, scenario()))
    check_events(received, ga=True)
    assert cancelled["response"]["status"] == "cancelled"
    assert cancelled["response"]["status_details"]["reason"] == "turn_detected"
    assert second["response"]["status"] in ("completed", "incomplete")
    kinds = [e["type"] for e in received]
    barge_in = kinds.index("input_audio_buffer.speech_started", kinds.index("response.created"))
    assert barge_in < kinds.index("response.done")  # the speech cancelled the answer
    # No audio of the cancelled answer comes after its response.done.
    first_done = kinds.index("response.done")
    late = [e for e in received[first_done:] if e.get("response_id") == cancelled["response"]["id"]]
    assert late == []


def test_semantic_vad_through_the_official_client_answers_the_turn(server):
    """semantic_vad is taken and echoed; Smart Turn judges the pause (complete: the turn ends
    there; else after eagerness high's 2 s), and the answer follows as server_vad's does."""
    detection = {"type": "semantic_vad", "eagerness": "high"}

    async def scenario():
        async with official(server, ga=True) as connection:
            await connection.recv()  # session.created
            update = {"type": "realtime", "audio": {"input": {"turn_detection": detection}}}
            await connection.session.update(session=update)
            updated = await read_until(connection, "session.updated")
            for audio in pieces(speech(silence_ms=2600)):
                await connection.input_audio_buffer.append(audio=audio)
            return updated + await read_until(connection, "response.done")

    received = asyncio.run(within(WAIT_S, scenario()))
    check_events(received, ga=True)
    echoed = received[0]["session"]["audio"]["input"]["turn_detection"]
    assert echoed == detection | {"create_response": True, "interrupt_response": True}
    assert without_deltas(received)[1:] == GA_TURN
    stopped = next(e for e in received if e["type"] == "input_audio_buffer.speech_stopped")
    assert 1500 <= stopped["audio_end_ms"] <= 2300  # the end of the 2 s question, not of the pause


def test_an_answer_begun_at_a_pause_is_heard_only_once_the_turn_ends(server):
    """server_vad with a long hangover: the engine begins the answer at the first 200 ms of
    silence, but nothing of it reaches the client until the hangover has passed; a pause the
    caller talks on from gets no answer of its own."""
    update = {"turn_detection": {"type": "server_vad", "silence_duration_ms": 1500}}

    async def scenario():
        async with Raw(server) as client:
            await client.send("session.update", session=update)
            await client.until("session.updated")
            await client.say(speech(silence_ms=1000))  # paused, not over
            with pytest.raises(TimeoutError):  # the early answer is made, and held
                await asyncio.wait_for(client.until("input_audio_buffer.speech_stopped"), 2.0)
            held = list(client.received)
            await client.say(bytes(28_800))  # 600 ms more silence (pcm16, 24 kHz): now it ends
            await client.until("response.done")
            first = len(client.received)
            paused = speech(silence_ms=400) + speech("pcm16", "q_weather.wav", silence_ms=1600)
            await client.say(paused)  # goes on after a pause: one turn, one answer
            await client.until("response.done")
            return held, client.received[:first], client.received[first:]

    held, answered, resumed = asyncio.run(within(WAIT_S, scenario()))
    assert [e["type"] for e in held][-1] == "input_audio_buffer.speech_started"
    assert not [e for e in held if e["type"].startswith("response.")]
    for events in (answered, resumed):
        check_events(events, ga=True)
        assert without_deltas(events)[-len(GA_TURN) :] == GA_TURN


def test_a_framework_s_usual_session_is_taken_whole_and_the_bot_speaks_first(server):
    """What the voice-agent frameworks send by default: a system prompt, tools, semantic_vad
    and a greeting asked for before the caller said anything. None of it is an error: the
    session keeps and reports it (Smart Turn judges semantic_vad's turns), the greeting's
    instructions are answered as a typed turn, and the model is named, not its path."""

    async def scenario():
        async with Raw(server) as client:
            created = (await client.until("session.created"))["session"]
            tools = [{"type": "function", "name": "lookup", "parameters": {"type": "object"}}]
            detection = {"type": "semantic_vad", "eagerness": "auto"}
            session = {
                "type": "realtime",
                "instructions": "You are a helpful assistant.",
                "tools": tools,
                "audio": {"input": {"format": {"type": "audio/pcmu"}, "turn_detection": detection}},
            }
            await client.send("session.update", session=session)
            updated = (await client.until("session.updated"))["session"]
            await client.send(
                "response.create", response={"instructions": "Say hello to the caller."}
            )
            greeting = (await client.until("response.done"))["response"]
            return client.received, created, updated, greeting

    received, created, updated, greeting = asyncio.run(within(WAIT_S, scenario()))
    check_events(received, ga=True)
    assert not [e for e in received if e["type"] == "error"]
    assert created["model"] == "mini-omni"  # (a local directory: never its path)
    assert updated["instructions"] == "You are a helpful assistant."
    assert updated["tools"][0]["name"] == "lookup"
    audio = updated["audio"]["input"]
    assert audio["format"] == {"type": "audio/pcmu"}  # the rest of the update applied
    detection = {"type": "semantic_vad", "eagerness": "auto"}
    flags = {"create_response": True, "interrupt_response": True}
    assert audio["turn_detection"] == detection | flags
    assert greeting["status"] in ("completed", "incomplete")
    assert greeting["output"][0]["role"] == "assistant"
    assert any(e["type"] == "response.output_audio.delta" for e in received)


def test_cancel_truncate_and_bad_events_get_clear_errors_and_the_session_goes_on(server):
    async def scenario():
        async with Raw(server) as client:
            await client.until("session.created")
            manual = await client.send("session.update", session={"turn_detection": None})
            await client.until("session.updated")
            errors = []
            for kind, fields in [
                ("response.cancel", {}),
                ("input_audio_buffer.commit", {}),
                ("input_audio_buffer.append", {"audio": "not base64!"}),
                ("dance", {}),
                ("output_audio_buffer.clear", {}),
                (
                    "conversation.item.create",
                    {
                        "item": {
                            "type": "message",
                            "role": "user",
                            "content": [{"type": "input_image", "image_url": "data:,"}],
                        }
                    },
                ),
                ("conversation.item.truncate", {"item_id": "nope", "audio_end_ms": 0}),
                ("session.update", {"session": {"input_audio_format": "mp3"}}),
            ]:
                errors.append(await client.error(await client.send(kind, **fields)))
            await client.ws.send_str("{not json")
            errors.append(await client.error(None))
            await client.ws.send_bytes(b"\x00\x01")
            errors.append(await client.error(None))
            await client.send("response.create")  # nothing heard: a response with no output
            empty = (await client.until("response.done"))["response"]

            await client.say(speech(silence_ms=0))
            await client.send("input_audio_buffer.commit")
            user = (await client.until("input_audio_buffer.committed"))["item_id"]
            await client.send("response.create")
            await client.until("response.output_audio.delta")
            await client.send("response.cancel")
            cancelled = (await client.until("response.done"))["response"]
            item = cancelled["output"][0]["id"]
            sent_ms = len(answer_audio(client.received)) * 1000 // 2 // 24000
            past = await client.send(
                "conversation.item.truncate",
                item_id=item,
                content_index=0,
                audio_end_ms=sent_ms + 100,
            )
            errors.append(await client.error(past))
            user_truncate = await client.send(
                "conversation.item.truncate", item_id=user, content_index=0, audio_end_ms=0
            )
            errors.append(await client.error(user_truncate))
            await client.send(
                "conversation.item.truncate",
                item_id=item,
                content_index=0,
                audio_end_ms=sent_ms // 2,
            )
            truncated = await client.until("conversation.item.truncated")
            await client.send("conversation.item.delete", item_id=item)
            await client.until("conversation.item.deleted", item_id=item)
            errors.append(
                await client.error(await client.send("conversation.item.retrieve", item_id=item))
            )
            await client.send("conversation.item.retrieve", item_id=user)
            retrieved = await client.until("conversation.item.retrieved")
            return client.received, errors, cancelled, truncated, retrieved, manual, sent_ms, empty

    received, errors, cancelled, truncated, retrieved, manual, sent_ms, empty = asyncio.run(
        within(WAIT_S, scenario())
    )
    check_events(received, ga=True)
    assert [(e["code"], e["event_id"] == e["for"]) for e in errors] == [
        ("response_cancel_not_active", True),
        ("input_audio_buffer_commit_empty", True),
        ("invalid_value", True),
        ("unknown_event", True),
        ("unsupported", True),
        ("unsupported", True),
        ("item_truncate_invalid_item_id", True),
        ("invalid_value", True),
        ("invalid_json", True),
        ("invalid_event", True),
        ("invalid_value", True),  # truncate past the audio sent
        ("invalid_value", True),  # truncate the caller's item
        ("item_retrieve_invalid_item_id", True),  # retrieve a deleted item
    ]
    assert all(e["message"] for e in errors)
    # (OpenAI's words, which clients match: LiveKit stays quiet on a late cancel by them)
    assert errors[0]["message"] == "Cancellation failed: no active response found"
    assert errors[2]["param"] == "audio" and errors[7]["param"] == "session.input_audio_format"
    assert (empty["status"], empty["output"]) == ("completed", [])
    assert empty["usage"]["total_tokens"] == 0
    assert (cancelled["status"], cancelled["status_details"]["reason"]) == (
        "cancelled",
        "client_cancelled",
    )
    assert sent_ms > 0 and truncated["audio_end_ms"] == sent_ms // 2
    assert retrieved["item"]["role"] == "user"
    assert not any(e["type"] == "input_audio_buffer.speech_started" for e in received), manual


def test_a_typed_message_is_answered_in_speech(server):
    """The official GA client sends text; the model answers it as a t2a turn, and the audio
    spoken meanwhile waits for the turn after it."""

    async def scenario():
        async with official(server, ga=True) as connection:
            await connection.recv()  # session.created
            await connection.session.update(
                session={"type": "realtime", "audio": {"input": {"turn_detection": None}}}
            )
            await read_until(connection, "session.updated")
            await connection.conversation.item.create(
                item={
                    "type": "message",
                    "role": "user",
                    "content": [{"type": "input_text", "text": "What is the capital of France?"}],
                }
            )
            received = await read_until(connection, "conversation.item.done")
            await connection.input_audio_buffer.append(audio=pieces(speech(silence_ms=0))[0])
            await connection.input_audio_buffer.commit()  # refused: the text waits for its answer
            received += await read_until(connection, "error")
            await connection.response.create()
            return received + await read_until(connection, "response.done")

    received = asyncio.run(within(WAIT_S, scenario()))
    check_events(received, ga=True)
    item = received[0]["item"]
    assert item["content"] == [{"type": "input_text", "text": "What is the capital of France?"}]
    error = next(e for e in received if e["type"] == "error")["error"]
    assert error["code"] == "conversation_has_pending_text"
    done = received[-1]["response"]
    assert done["status"] in ("completed", "incomplete") and answer_audio(received)
    assert done["usage"]["input_tokens"] < 40  # a typed question's prompt, not 2 s of speech


def test_answers_in_text_only(server):
    """A GA session asks for text (output_modalities): the VAD's turn is answered with text
    events and no audio. A beta session that speaks asks for one text-only response; it cannot
    be truncated, and the next response speaks again."""

    async def ga():
        async with official(server, ga=True) as connection:
            await connection.recv()  # session.created
            await connection.session.update(
                session={"type": "realtime", "output_modalities": ["text"]}
            )
            received = await read_until(connection, "session.updated")
            for audio in pieces(speech()):
                await connection.input_audio_buffer.append(audio=audio)
            return received + await read_until(connection, "response.done")

    async def beta():
        async with Raw(
            server, {"Authorization": f"Bearer {TOKEN}", "OpenAI-Beta": "realtime=v1"}
        ) as client:
            await client.send("session.update", session={"turn_detection": None})
            await client.until("session.updated")
            done = []
            for modalities in (["text"], None):
                await client.say(speech(silence_ms=0))
                await client.send("input_audio_buffer.commit")
                request = {} if modalities is None else {"modalities": modalities}
                await client.send("response.create", response=request)
                done.append((await client.until("response.done"))["response"])
                if modalities:
                    truncate = await client.send(
                        "conversation.item.truncate",
                        item_id=done[-1]["output"][0]["id"],
                        content_index=0,
                        audio_end_ms=0,
                    )
                    done.append(await client.error(truncate))
            return client.received, done

    received = asyncio.run(within(WAIT_S, ga()))
    check_events(received, ga=True)
    assert received[0]["session"]["output_modalities"] == ["text"]
    turn = [k.replace("output_audio.done", "output_text.done") for k in GA_TURN]
    turn.remove("response.output_audio_transcript.done")
    assert without_deltas(received)[1:] == turn
    assert not answer_audio(received)
    text = "".join(e["delta"] for e in received if e["type"] == "response.output_text.delta")
    done = received[-1]["response"]
    assert done["output_modalities"] == ["text"]
    assert done["output"][0]["content"] == [{"type": "output_text", "text": text}]
    assert done["usage"]["output_token_details"]["audio_tokens"] == 0
    assert next(e for e in received if e["type"] == "response.output_text.done")["text"] == text

    received, (text_only, refused, spoken) = asyncio.run(within(WAIT_S, beta()))
    check_events(received, ga=False)
    assert text_only["modalities"] == ["text"] and spoken["modalities"] == ["text", "audio"]
    assert text_only["output"][0]["content"][0]["type"] == "text"
    assert spoken["output"][0]["content"][0]["type"] == "audio"
    assert refused["code"] == "invalid_value" and refused["param"] == "item_id"
    kinds = [e["type"] for e in received]
    first_done = kinds.index("response.done")
    assert "response.text.done" in kinds[:first_done]
    assert "response.audio.delta" not in kinds[:first_done]
    assert "response.audio.delta" in kinds[first_done:]


def test_the_caller_s_words_are_transcribed_when_asked(server):
    """GA: audio.input.transcription on: the committed item's transcript arrives as deltas and
    a completed event (read by the SDK's models) and is in the item; turned off (null), the
    next turn has none. Beta: a language the model does not hear is kept, not refused (the
    transcription runs, in English)."""
    transcription = "conversation.item.input_audio_transcription"

    async def turn(connection, transcribing: bool) -> list[dict]:
        received, waiting = (
            [],
            {"response.done"} | ({transcription + ".completed"} if transcribing else set()),
        )
        while waiting:
            event = (await connection.recv()).model_dump(exclude_unset=True)
            received.append(event)
            waiting.discard(event["type"])
        return received

    async def ga():
        async with official(server, ga=True) as connection:
            await connection.recv()  # session.created
            received = []
            for on in (True, False):
                setting = {"model": "whisper-1"} if on else None
                await connection.session.update(
                    session={"type": "realtime", "audio": {"input": {"transcription": setting}}}
                )
                received += await read_until(connection, "session.updated")
                for audio in pieces(speech()):
                    await connection.input_audio_buffer.append(audio=audio)
                received += await turn(connection, on)
            user = next(e for e in received if e["type"] == "input_audio_buffer.committed")
            await connection.conversation.item.retrieve(item_id=user["item_id"])
            return received + await read_until(connection, "conversation.item.retrieved")

    async def beta():
        async with official(server, ga=False) as connection:
            await connection.recv()  # session.created
            await connection.session.update(
                session={"input_audio_transcription": {"model": "whisper-1", "language": "fr"}}
            )
            received = await read_until(connection, "session.updated")
            for audio in pieces(speech()):
                await connection.input_audio_buffer.append(audio=audio)
            return received + await turn(connection, True)

    received = asyncio.run(within(WAIT_S, ga()))
    check_events(received, ga=True)
    assert received[0]["session"]["audio"]["input"]["transcription"]["model"]
    committed = [e["item_id"] for e in received if e["type"] == "input_audio_buffer.committed"]
    deltas = [e for e in received if e["type"] == transcription + ".delta"]
    completed = [e for e in received if e["type"] == transcription + ".completed"]
    assert [e["item_id"] for e in completed] == committed[:1]  # the second turn: none
    assert {e["item_id"] for e in deltas} <= {committed[0]}
    text = completed[0]["transcript"]  # (the tiny model's ids are mostly past its tokenizer's)
    assert text == "".join(e["delta"] for e in deltas).strip()
    assert completed[0]["usage"]["output_tokens"] > 0
    assert received[-1]["item"]["content"][0]["transcript"] == text

    received = asyncio.run(within(WAIT_S, beta()))
    check_events(received, ga=False)
    assert not [e for e in received if e["type"] == "error"]  # (the language is kept, unused)
    assert received[-1]["type"] in ("response.done", transcription + ".completed")
    assert any(e["type"] == transcription + ".completed" for e in received)


def test_audio_appended_after_a_commit_waits_for_its_own_turn(server):
    """The engine answers all it heard since its last answer, so audio that arrives between a
    commit and its response.create is held back: the answer hears the committed audio alone,
    as its prompt's length (usage.input_tokens) shows."""

    async def answer(client: Raw) -> int:
        await client.send("response.create")
        done = await client.until("response.done")
        return done["response"]["usage"]["input_tokens"]

    async def scenario():
        first, second = speech(silence_ms=0), speech(clip="q_story.wav", silence_ms=0)
        heard = []
        async with Raw(server) as client:
            await client.send("session.update", session={"turn_detection": None})
            await client.until("session.updated")
            await client.say(first)
            await client.send("input_audio_buffer.commit")
            await client.say(second)  # not committed yet
            heard.append(await answer(client))
            await client.send("input_audio_buffer.commit")
            heard.append(await answer(client))
        # (a connection of its own afterwards: an idle client that reads nothing misses the
        # server's pings and is let go on a slow machine)
        async with Raw(server) as alone:
            await alone.send("session.update", session={"turn_detection": None})
            await alone.until("session.updated")
            await alone.say(first)
            await alone.send("input_audio_buffer.commit")
            heard.append(await answer(alone))
        return heard

    first, second, first_alone = asyncio.run(within(WAIT_S, scenario()))
    assert first == first_alone
    assert second > first  # the story is longer than the question


def test_a_client_that_commits_may_stream_past_the_buffer_s_limit(server):
    """With turn detection off, pipecat's locally detected turns stream the microphone without
    a pause and clear and commit around each utterance; the silence between, past the 20 s a
    turn may hold, empties the buffer instead of failing every append."""

    async def scenario():
        async with Raw(server) as client:
            await client.send("session.update", session={"turn_detection": None})
            await client.until("session.updated")
            silence = bytes(2 * 24_000 * 21)  # 21 s of pcm16 at 24 kHz
            await client.say(silence + speech(silence_ms=0))
            await client.send("input_audio_buffer.commit")
            await client.send("response.create")
            done = (await client.until("response.done"))["response"]
            return client.received, done

    received, done = asyncio.run(within(WAIT_S, scenario()))
    assert not [e for e in received if e["type"] == "error"]
    assert done["status"] in ("completed", "incomplete")
    # the answer heard the question, not the silence that was dropped
    assert done["usage"]["input_tokens"] < 20_000 // 20


def test_tokens_busy_and_oversized_messages(server):
    async def scenario():
        outcomes = {}
        for name, headers in (("none", {}), ("wrong", {"Authorization": "Bearer wrong"})):
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                async with Raw(server, headers):
                    pass
            outcomes[name] = refused.value.status
        # Browsers cannot set headers: the key rides as a subprotocol, as OpenAI's clients do.
        browser = Raw(server, {}, protocols=("realtime", f"openai-insecure-api-key.{TOKEN}"))
        async with browser, Raw(server) as other:
            await browser.until("session.created")
            outcomes["protocol"] = browser.ws.protocol
            with pytest.raises(aiohttp.WSServerHandshakeError) as busy:
                async with Raw(server):
                    pass
            outcomes["busy"] = busy.value.status
            try:  # the server closes as soon as it reads the frame's length
                await browser.ws.send_str("x" * (MAX_MESSAGE_BYTES + 1))
            except ConnectionError:
                pass
            closing = await browser.ws.receive()
            outcomes["oversized"] = (closing.type, closing.data)
            await other.send("session.update", session={"output_audio_format": "g711_ulaw"})
            outcomes["other"] = (await other.until("session.updated"))["session"]
        return outcomes

    outcomes = asyncio.run(within(WAIT_S, scenario()))
    assert (outcomes["none"], outcomes["wrong"], outcomes["busy"]) == (401, 401, 503)
    assert outcomes["protocol"] == "realtime"
    assert outcomes["oversized"] == (aiohttp.WSMsgType.CLOSE, aiohttp.WSCloseCode.MESSAGE_TOO_BIG)
    assert outcomes["other"]["audio"]["output"]["format"] == {"type": "audio/pcmu"}
    assert MAX_SESSIONS == 2


def test_a_client_that_vanishes_mid_answer_frees_its_slot(server):
    assert kill_mid_answer(server, "realtime") <= SLOT_RELEASE_S


@pytest.mark.parametrize(
    "origin, host, refused",
    [
        (None, "127.0.0.1:8080", False),  # a program (the SDK sends no Origin)
        ("http://127.0.0.1:8080", "127.0.0.1:8080", False),  # our own page
        ("http://localhost:3000", "127.0.0.1:8080", False),  # a page served on this machine
        ("http://[::1]:5173", "127.0.0.1:8080", False),
        ("https://evil.example", "127.0.0.1:8080", True),
        ("https://voice.example.com", "voice.example.com", False),
    ],
)
def test_pages_from_other_sites_need_a_token(origin, host, refused):
    assert cross_site(origin, host) is refused

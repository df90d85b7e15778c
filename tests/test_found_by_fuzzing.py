"""What fuzzing a live server (test_live_fuzz.py) found, each pinned in-process to the input
that showed it."""

import asyncio
import json

import pytest

from realtime.transports.options import CallOptions
from realtime.transports.webrtc.connection import Conversation

from .serving import browser_offer


def test_an_offer_aiortc_gives_up_on_halfway_still_closes():
    """An offer without its data channel's m-line leaves that line's attributes (a second mid,
    its candidates) on the audio: aiortc fails making the answer, then fails closing the peer.
    The server answered 500; the close must succeed so that it answers 400 bad_sdp."""
    lines = browser_offer().splitlines()
    sdp = "\r\n".join(line for line in lines if not line.startswith("m=application")) + "\r\n"

    async def scenario() -> list:
        closed: list = []
        conversation = Conversation(CallOptions(), closed.append)
        with pytest.raises(AttributeError):  # aiortc's, which the server reports as bad_sdp
            await conversation.answer(sdp)
        await conversation.close("bad offer")
        return closed

    assert len(asyncio.run(scenario())) == 1


def test_a_webhook_body_aiohttp_cannot_read_as_a_form_is_a_400():
    """A multipart part without a field name or with a control character in its header, or a
    form in an unknown charset, made aiohttp's form reader raise (ValueError, BadHttpMessage,
    LookupError), which the server answered 500; Twilio sends none of them, but nothing a
    client sends may be a 5xx. The refusal is one line."""
    from aiohttp.test_utils import TestClient, TestServer

    from realtime.server import Server
    from realtime.server_config import ServerOptions

    MULTIPART = "multipart/form-data; boundary=x"
    cases = [
        (b"--x\r\n\r\n", MULTIPART, 400),
        (b"=", "application/x-www-form-urlencoded; charset=bogus", 400),
        (
            b'--x\r\nContent-Disposition: form-data; name="\x0e"\r\n\r\n1\r\n--x--\r\n',
            MULTIPART,
            400,
        ),
        (b"CallSid=CA1", "application/x-www-form-urlencoded", 200),
    ]

    async def scenario() -> list[tuple[int, str]]:
        server = Server(engine=None, options=ServerOptions())  # (the webhook uses no engine)
        client = TestClient(TestServer(server.app()))
        await client.start_server()
        try:
            got = []
            for body, content_type, _ in cases:
                headers = {"Content-Type": content_type}
                reply = await client.post("/twilio/voice", data=body, headers=headers)
                got.append((reply.status, await reply.text()))
            return got
        finally:
            await client.close()

    for (status, text), (body, _, expected) in zip(asyncio.run(scenario()), cases, strict=True):
        assert status == expected, (body, text)
        if expected == 400:
            error = json.loads(text)["error"]
            assert error["code"] == "bad_form" and "\n" not in error["message"], error
        else:
            assert "<Stream" in text

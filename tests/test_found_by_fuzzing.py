"""What fuzzing a live server (test_live_fuzz.py) found, each pinned in-process to the input
that showed it."""

import asyncio

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

"""A caller that speaks, says "answering" on stdout once the reply plays, then hangs forever,
so a test can kill it mid-answer (SIGKILL: no goodbye on any transport). Over WebRTC, or with
a fourth argument `realtime` over the OpenAI Realtime WebSocket."""

import asyncio
import sys
from types import SimpleNamespace

from realtime.audio.io import load_audio
from realtime.transports.webrtc.caller import LoopbackClient


async def main(url: str, token: str, wav: str) -> None:
    client = LoopbackClient(url, token)
    await client.connect()
    client.send({"type": "settings", "max_answer_ms": 60_000})
    await client.say(load_audio(wav))
    await client.wait_for("response.started")
    print("answering", flush=True)
    await asyncio.Event().wait()


async def main_realtime(url: str, token: str, wav: str) -> None:
    from tests.serving import speech
    from tests.test_openai_door import Raw

    server = SimpleNamespace(url=url)  # what Raw needs of the test server
    async with Raw(server, {"Authorization": f"Bearer {token}"}) as client:
        await client.say(speech(clip=wav))
        await client.until("response.output_audio.delta")
        print("answering", flush=True)
        await asyncio.Event().wait()


if __name__ == "__main__":
    door = main_realtime if sys.argv[4:] == ["realtime"] else main
    asyncio.run(door(*sys.argv[1:4]))

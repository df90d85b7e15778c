"""A caller that speaks, says "answering" on stdout once the reply plays, then hangs forever,
so a test can kill it mid-answer (SIGKILL: no goodbye on any transport)."""

import asyncio
import sys

from realtime.audio import load_audio
from realtime.loopback import LoopbackClient


async def main(url: str, token: str, wav: str) -> None:
    client = LoopbackClient(url, token)
    await client.connect()
    client.send({"type": "settings", "max_answer_ms": 60_000})
    await client.say(load_audio(wav))
    await client.wait_for("response.started")
    print("answering", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))

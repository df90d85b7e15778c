"""`realtime call` and the loopback client notice a server that goes away: one that says
`session.closing` or closes the connection, and one that dies without a word (SIGKILL), which
the client hears as its audio stopping. Either ends the call at once, not at --timeout."""

import asyncio
import json
import signal
import subprocess
import sys
import time

import pytest

from realtime.model import tokens
from realtime.transports.webrtc.caller import SERVER_SILENCE_S, LoopbackClient, ServerHungUp

from .serving import DATA, TOKEN, WAIT_S, ServerProcess, clip

EXIT_S = 5.0  # SIGKILL to `realtime call` gone: the 2 s of silence, then closing down
GRACE_S = 1.0  # the server's --shutdown-grace-s: how long the answer plays on after SIGTERM


def _events(client: LoopbackClient, *events: dict) -> None:
    for event in events:
        client._on_message(json.dumps(event))


def test_session_closing_ends_a_wait_and_keeps_what_came():
    async def scenario():
        client = LoopbackClient("http://127.0.0.1:9")  # never connected
        try:
            _events(client, {"type": "response.started", "response": 1})
            waiting = asyncio.ensure_future(client.wait_for("response.done"))
            await asyncio.sleep(0)
            closing = {"type": "session.closing", "reason": "shutdown", "message": "restarting"}
            _events(client, closing)
            with pytest.raises(ServerHungUp, match=r"closed the call \(shutdown\): restarting"):
                await asyncio.wait_for(waiting, 5)
            assert client.hung_up.is_set()
            # an event that came before the hang-up is still found; one that did not, raises
            assert (await client.wait_for("response.started"))["response"] == 1
            with pytest.raises(ServerHungUp):
                await client.wait_for("response.done")
        finally:
            await client.close()

    asyncio.run(scenario())


def test_the_data_channel_closing_is_a_hang_up_but_our_own_close_is_not():
    async def scenario():
        hung_up = LoopbackClient("http://127.0.0.1:9")
        hung_up.channel.emit("close")
        with pytest.raises(ServerHungUp, match="closed the data channel"):
            await asyncio.wait_for(hung_up.wait_for("session.ready"), 5)
        await hung_up.close()
        ours = LoopbackClient("http://127.0.0.1:9")
        await ours.close()
        ours.channel.emit("close")
        assert not ours.hung_up.is_set() and ours.hangup_reason is None

    asyncio.run(scenario())


@pytest.mark.slow
@pytest.mark.parametrize("how", ["SIGKILL", "SIGTERM"])
def test_realtime_call_ends_at_once_when_the_server_goes(tiny_dir, tmp_path, how):
    """Stop the server mid-answer: `realtime call`, with 120 s left of its --timeout and a
    minute-long answer asked for, exits 1 within EXIT_S with one line, and prints the events
    that came. SIGKILL is heard as silence (SERVER_SILENCE_S); on SIGTERM the server lets the
    answer go on for its grace period, then says why it closes the call (session.closing)."""
    server = ServerProcess.start(tiny_dir, tmp_path, extra=["--shutdown-grace-s", str(GRACE_S)])
    wav = DATA / "q_capital.wav"
    argv = ["call", server.url, "--wav", str(wav), "--token", TOKEN, "--timeout", "120"]
    caller = subprocess.Popen(
        [sys.executable, "-m", "realtime", *argv, "--max-answer-ms", "60000"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=DATA.parent.parent,
    )
    try:
        deadline = time.monotonic() + WAIT_S
        while not server.health()["engine_sessions"]:
            assert time.monotonic() < deadline and caller.poll() is None
            time.sleep(0.05)
        # the question is spoken in real time; the answer's audio starts ~1 s after it
        time.sleep(len(clip("q_capital.wav")) / tokens.INPUT_SAMPLE_RATE_HZ + 3)
        server.process.send_signal(getattr(signal, how))
        killed = time.monotonic()
        out, err = caller.communicate(timeout=WAIT_S)
        took = time.monotonic() - killed
        status = server.process.wait(timeout=WAIT_S) if how == "SIGTERM" else 0
    finally:
        caller.kill()
        server.process.kill()
        server.process.wait()
    assert caller.returncode == 1, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    if how == "SIGKILL":
        assert SERVER_SILENCE_S <= took < EXIT_S and "no audio from the server" in err, (took, err)
    else:
        # the answer in progress plays on for the grace period, then the call is closed
        assert GRACE_S <= took < GRACE_S + SERVER_SILENCE_S, (took, err)
        assert "the server closed the call (shutdown)" in err, err
        assert status == 0  # (a drained shutdown exits 0)
    assert all(json.loads(line)["type"] for line in out.splitlines())

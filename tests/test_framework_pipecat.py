"""pipecat as a drop-in client: examples/pipecat_agent.py (pipecat's OpenAI Realtime service
with its default settings and a system prompt, pointed at `realtime serve` by its base URL)
holds a conversation of three turns, the last barging in, and neither pipecat nor the server
reports an error on the way."""

import re

import pytest

from .frameworks import questions, require, run_example

require("pipecat.services.openai.realtime.llm", "pipecat-ai[openai]")

pytestmark = pytest.mark.slow

LISTEN_S = "3"  # the caller hears this much of each answer (the tiny model's run on and on)
# What pipecat (loguru), asyncio or Python print when something went wrong on the client.
CLIENT_FAILURES = re.compile(
    r"\| (ERROR|CRITICAL) +\||Traceback|Task exception was never retrieved|Exception in callback"
)
SERVER_FAILURES = re.compile(r" (ERROR|CRITICAL) |Traceback|refused an event")


def test_pipecat_agent_converses_with_barge_in(server):
    log_start = server.log.stat().st_size
    clips = questions("q_capital.wav", "q_weather.wav", "q_story.wav")
    run = run_example(
        "pipecat_agent.py", server.url, "--say", *clips, "--barge-in", "--listen", LISTEN_S
    )
    output = run.stdout + run.stderr
    assert run.returncode == 0, output
    assert "done: 3 answers" in run.stdout, output
    assert re.search(r"^barge-in:", run.stdout, re.MULTILINE), output
    assert not re.search(r"^error:", run.stdout, re.MULTILINE), output
    assert not CLIENT_FAILURES.search(output), output
    # (the server logs each error event it sends: "refused an event")
    failures = [line for line in server_log(server, log_start) if SERVER_FAILURES.search(line)]
    assert not failures, "\n".join(failures)


def server_log(server, start: int) -> list[str]:
    """The server's log lines since `start` (a byte offset)."""
    with server.log.open() as log:
        log.seek(start)
        return log.read().splitlines()

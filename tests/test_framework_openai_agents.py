"""OpenAI's Agents SDK (`openai-agents`, module agents.realtime) as a client of `realtime serve`
(issue #31): examples/openai_agents_agent.py, the SDK quickstart's agent with a system prompt
and the SDK's default session settings, holds a spoken conversation with the tiny model over
/v1/realtime. The caller barges in on every answer but the last; the server's VAD must cut
those, answer every turn, and give the SDK nothing it reports or logs as an error."""

import re

import pytest

from .frameworks import questions, require, run_example

require("agents.realtime", "openai-agents")

pytestmark = pytest.mark.slow

TURNS = ("q_capital.wav", "q_weather.wav", "q_story.wav")
# An error on the client's side: a line logged at ERROR or CRITICAL (the example logs as
# "LEVEL logger: message"), a traceback, an exception no task retrieved, or an `error` event
# (the example prints those as "error: ...").
CLIENT_ERROR = re.compile(
    r"^(ERROR|CRITICAL) |Traceback|Task exception was never retrieved|Exception in callback"
    r"|^ *[\d.]+s  error: ",
    re.MULTILINE,
)
SERVER_ERROR = re.compile(r" (ERROR|CRITICAL) |Traceback")


def test_a_conversation_with_barge_in(server):
    log_start = server.log.stat().st_size
    run = run_example(
        "openai_agents_agent.py", server.url, "--barge-in", "--say", *questions(*TURNS)
    )
    output = f"{run.stdout}\n--- stderr ---\n{run.stderr}"

    assert run.returncode == 0, output
    assert "done: 3 answers, 2 cut, 0 errors" in run.stdout, output
    assert "barge-in: " in run.stdout, output  # the server heard the caller mid-answer
    final = re.findall(r"answered: turn 3, (\w+)", run.stdout)
    assert final in (["completed"], ["incomplete"]), output  # the last answer ran to its end
    assert not CLIENT_ERROR.findall(output), output
    server_log = server.log.read_text()[log_start:]
    assert not SERVER_ERROR.findall(server_log), server_log

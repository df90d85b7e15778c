"""LiveKit Agents as a drop-in client of `realtime serve` (issue #31): examples/livekit_agent.py,
an agent with a system prompt on the OpenAI plugin's default realtime settings, holds three
turns with a barge-in against the tiny model, and nothing on its side reports an error."""

import re

import pytest

from .frameworks import questions, require, run_example

require("livekit.plugins.openai", "livekit-plugins-openai")

pytestmark = pytest.mark.slow

TURNS = questions("q_capital.wav", "q_weather.wav", "q_story.wav")
# Signs of an error: in the example's stderr (it logs as "LEVEL logger: message") and the
# server's log.
CLIENT_ERROR = ("ERROR", "CRITICAL", "Traceback", "exception was never retrieved", "Exception in")
SERVER_ERROR = re.compile(r" (ERROR|CRITICAL) |Traceback")

# The one error event OpenAI also sends in a barge-in: the server cuts its answer when the
# caller starts speaking, and the plugin, told of the speech, cancels the answer too; the plugin
# ignores the refusal by OpenAI's wording (livekit/agents/llm/_realtime/openai.py,
# _handle_error: "Cancellation failed").
CANCEL_RACE = re.compile(r"'code': 'response_cancel_not_active', 'message': 'Cancellation failed")

# The plugin sets an exception on a future nobody awaits for each response that ends
# "incomplete" (openai.py, _handle_response_done: _done_fut.set_exception); asyncio logs it when
# the future is collected. Every answer of the tiny model runs to the server's
# --max-new-tokens, so ends "incomplete" (max_output_tokens), as OpenAI's would.
UNAWAITED_INCOMPLETE = re.compile(
    r"ERROR asyncio: Future exception was never retrieved\n"
    r"future: .*RealtimeError\('response incomplete: max_output_tokens'\)>\n"
    r".*RealtimeError: response incomplete: max_output_tokens\n"
)


def test_agent_converses_with_barge_in(server):
    log_start = server.log.stat().st_size
    result = run_example("livekit_agent.py", server.url, "--barge-in", "--say", *TURNS)
    out, err = result.stdout, result.stderr
    served = server.log.read_text()[log_start:]
    report = f"stdout:\n{out}\nstderr:\n{err}\nserver log:\n{served}"
    assert result.returncode == 0, report
    assert out.count("agent: answering") >= len(TURNS), report
    assert "barge-in: the server cut answer" in out, report
    errors = [line for line in out.splitlines() if line.startswith("error event from the server")]
    assert all(CANCEL_RACE.search(line) for line in errors), report
    assert "error reported by the framework" not in out, report
    logged = UNAWAITED_INCOMPLETE.sub("", err)
    assert not [sign for sign in CLIENT_ERROR if sign in logged], report
    assert not SERVER_ERROR.search(served), report

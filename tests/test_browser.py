"""The page in a real browser: headless Chromium (Debian's package) with a fake microphone that
plays a WAV, driven by Playwright. It loads client/, connects, speaks, and must receive the
agent's audio, the events and the transcript. CI installs both (see .ci/run)."""

import os
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile

from .serving import WAIT_S, clip

CHROMIUM = Path("/usr/bin/chromium")


def _unavailable(reason: str) -> None:
    """Skip locally; CI sets REALTIME_REQUIRE_BROWSER so a broken install fails instead."""
    if os.environ.get("REALTIME_REQUIRE_BROWSER"):
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason, allow_module_level=True)


try:
    from playwright import sync_api
except ImportError:
    _unavailable("playwright is not installed (pip install -e '.[dev]')")
if not CHROMIUM.is_file():
    _unavailable(f"{CHROMIUM} is missing (apt-get install chromium)")

pytestmark = pytest.mark.slow
RATE_HZ = 16_000

FLAGS = [
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
    "--autoplay-policy=no-user-gesture-required",
    "--no-sandbox",  # CI runs as root
    "--disable-background-networking",  # the machine has no internet
    "--disable-component-update",
    "--disable-sync",
]
INBOUND_AUDIO = """async () => {
    const stats = await window.realtime.peer().getStats();
    let found = null;
    stats.forEach((r) => { if (r.type === "inbound-rtp" && r.kind === "audio") found = r; });
    return found && {energy: found.totalAudioEnergy, samples: found.totalSamplesReceived};
}"""


def fake_mic(path: Path) -> Path:
    """A question after 2 s of silence (time to connect and set up), then 8 s of silence."""
    silence = lambda s: np.zeros(int(s * RATE_HZ), np.float32)  # noqa: E731
    pcm = np.concatenate([silence(2.0), clip("q_capital.wav"), silence(8.0)])
    soundfile.write(path, pcm, RATE_HZ, subtype="PCM_16")
    return path


def event_types(page) -> list[str]:
    return page.evaluate("window.realtime.events.map((e) => e.type)")


def wait_for_event(page, kind: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while kind not in event_types(page):
        assert time.monotonic() < deadline, f"no {kind} in {event_types(page)}"
        page.wait_for_timeout(200)


def test_browser_speaks_and_hears_the_agent(live_server, tmp_path):
    live_server.wait_idle()
    mic = fake_mic(tmp_path / "mic.wav")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch_persistent_context(
            str(tmp_path / "profile"),  # a new, empty profile
            executable_path=str(CHROMIUM),
            headless=True,
            args=[*FLAGS, f"--use-file-for-fake-audio-capture={mic}%noloop"],
        )
        try:
            page = browser.new_page()
            page.goto(live_server.page)
            page.click("#connect")
            wait_for_event(page, "session.ready")
            page.click("summary")  # open the settings, as a user would
            page.fill("#max-answer", "2")
            page.dispatch_event("#max-answer", "change")
            wait_for_event(page, "response.done")
            wait_for_event(page, "speech.transcript.done")  # (serve --transcribe)
            seen, audio = event_types(page), page.evaluate(INBOUND_AUDIO)
            heard = page.evaluate(
                "window.realtime.events.filter((e) => e.type.startsWith('speech.transcript'))"
            )
            transcript = page.inner_text("#transcript")
            latency = page.inner_text("#lat-audio")
        finally:
            browser.close()
    order = ["session.ready", "speech.started", "speech.stopped", "response.started"]
    order += ["turn.latency", "response.done"]
    assert [t for t in seen if t in order] == order, seen
    assert "settings.updated" in seen and "error" not in seen
    assert audio["samples"] > 0 and audio["energy"] > 0  # the agent's (noise) voice arrived
    assert "connected" in transcript and latency.endswith("ms")
    # The caller's words, for their turn: deltas, then the whole (the tiny model's asr ids are
    # mostly past its tokenizer's, so it may be empty: the line then still says they spoke).
    assert heard[-1]["type"] == "speech.transcript.done" and {e["turn"] for e in heard} == {1}
    assert "".join(e["text"] for e in heard[:-1]).strip() == heard[-1]["text"]
    assert (heard[-1]["text"] or "(you spoke)") in transcript
    assert live_server.wait_idle() < WAIT_S  # closing the browser frees the session

"""A `realtime serve` subprocess for tests, and helpers to talk to it."""

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from realtime.audio.io import load_audio
from realtime.model import tokens
from realtime.transports.wire_audio import FORMATS, OutputAudio

DATA = Path(__file__).parent / "data"
TOKEN = "test-token"
TWILIO_TOKEN = "twilio-test-auth-token"
PUBLIC_URL = "https://voice.example.com"  # what Twilio would be told; it signs URLs on it
# Twilio's start message of a call's media stream (spec/protocols.md)
TWILIO_START = {
    "event": "start",
    "sequenceNumber": "1",
    "streamSid": "MZ0001",
    "start": {
        "streamSid": "MZ0001",
        "accountSid": "AC0001",
        "callSid": "CA0001",
        "tracks": ["inbound"],
        "customParameters": {},
        "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
    },
}
MAX_SESSIONS = 2
START_TIMEOUT_S = 120  # importing torch and loading the model on a busy 2-core machine
WAIT_S = 60.0  # generous bound for anything the spec does not time
SLOT_RELEASE_S = 5.0  # the spec's bound for freeing a vanished client's slot


def clip(name: str):
    return load_audio(DATA / name)


def speech(fmt: str = "pcm16", clip: str = "q_capital.wav", silence_ms: int = 800) -> bytes:
    """A question, then silence (so the server's VAD ends the turn), in the WebSocket doors'
    wire format `fmt` (realtime.transports.wire_audio.FORMATS)."""
    pcm = load_audio(DATA / clip, rate_hz=tokens.OUTPUT_SAMPLE_RATE_HZ)
    pcm = np.concatenate([pcm, np.zeros(silence_ms * tokens.OUTPUT_SAMPLE_RATE_HZ // 1000)])
    out = OutputAudio(FORMATS[fmt])
    return out.push(pcm.astype(np.float32)) + out.flush()


@dataclass
class ServerProcess:
    process: subprocess.Popen
    url: str  # http://127.0.0.1:PORT
    page: str  # the URL the server printed (with #token=)
    log: Path

    @classmethod
    def start(
        cls,
        model: Path,
        workdir: Path,
        token: str | None = TOKEN,
        max_sessions: int = MAX_SESSIONS,
        extra: Sequence[str] = (),
    ) -> "ServerProcess":
        """With `token`, Twilio's requests are signed too; without, the server is open to this
        machine: no token, no signatures. `extra` goes after the options below, so where it
        repeats one its value wins."""
        log = workdir / "serve.log"
        command = [
            sys.executable,
            "-m",
            "realtime",
            "serve",
            "--model",
            str(model),
            "--offline",
            "--dtype",
            "float32",
            "--port",
            "0",
            "--max-sessions",
            str(max_sessions),
            "--max-new-tokens",
            "160",
            "--transcribe",  # (the browser's callers see their words)
        ]
        if token is not None:
            command += ["--token", token, "--twilio-auth-token", TWILIO_TOKEN]
            command += ["--public-url", PUBLIC_URL]
        command += extra
        with log.open("w") as err:
            process = subprocess.Popen(
                command,
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        page = cls._wait_for_url(process, log)
        url = re.match(r"(https?://[^/]+)", page).group(1)
        return cls(process, url, page, log)

    @staticmethod
    def _wait_for_url(process: subprocess.Popen, log: Path) -> str:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            if match := re.search(r"open (\S+)", line):
                return match.group(1)
            if process.poll() is not None:
                break
        process.kill()
        raise RuntimeError(f"realtime serve did not start:\n{log.read_text()}")

    def health(self) -> dict:
        with urllib.request.urlopen(f"{self.url}/healthz", timeout=10) as reply:
            return json.load(reply)

    def wait_idle(self, timeout_s: float = WAIT_S) -> float:
        """Wait until no session holds an engine slot; returns how long that took."""
        start = time.monotonic()
        while self.health()["engine_sessions"] or self.health()["sessions"]:
            if time.monotonic() - start > timeout_s:
                raise TimeoutError(f"sessions still open: {self.health()}")
            time.sleep(0.05)
        return time.monotonic() - start

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()


def kill_mid_answer(server: ServerProcess, *door: str) -> float:
    """Run tests.vanishing_caller (over `door`, default WebRTC), SIGKILL it once it is being
    answered, and return how long the server took to free its slot (at most SLOT_RELEASE_S)."""
    wav = str(DATA / "q_capital.wav")
    caller = subprocess.Popen(
        [sys.executable, "-m", "tests.vanishing_caller", server.url, TOKEN, wav, *door],
        stdout=subprocess.PIPE,
        text=True,
        cwd=DATA.parent.parent,
    )
    try:
        assert caller.stdout.readline().strip() == "answering"
        assert server.health()["engine_sessions"] == 1
        caller.kill()
        caller.wait()
        return server.wait_idle(timeout_s=SLOT_RELEASE_S)
    finally:
        caller.kill()


def browser_offer() -> str:
    """An SDP offer as a browser makes it: a sendrecv microphone and the `events` data channel,
    ICE candidates gathered (for ports closed again: nobody answers on them)."""
    from aiortc import RTCPeerConnection

    async def make() -> str:
        pc = RTCPeerConnection()
        pc.createDataChannel("events")
        pc.addTransceiver("audio", "sendrecv")
        await pc.setLocalDescription(await pc.createOffer())
        await pc.close()
        return pc.localDescription.sdp

    return asyncio.run(make())


async def within(seconds: float, awaitable):
    async with asyncio.timeout(seconds):
        return await awaitable

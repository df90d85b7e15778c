"""What the framework tests share: each runs one of examples/ (an agent written in a
voice-agent framework) against the shared live server, as a subprocess."""

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .serving import DATA, TOKEN

ROOT = Path(__file__).parent.parent
EXAMPLES = ROOT / "examples"
RUN_TIMEOUT_S = 240  # a few turns with the tiny model on a busy 2-core machine


def require(module: str, package: str) -> None:
    """Skip the calling test module when a framework is not installed; CI sets
    REALTIME_REQUIRE_FRAMEWORKS (and installs the `frameworks` extra), so there a broken install
    fails instead."""
    try:
        importlib.import_module(module)
    except ImportError as exc:
        reason = f"{package} is not installed (pip install -e '.[frameworks]'): {exc}"
        if os.environ.get("REALTIME_REQUIRE_FRAMEWORKS"):
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason, allow_module_level=True)


def run_example(name: str, url: str, *args: str) -> subprocess.CompletedProcess:
    """examples/`name` against the server at `url` (with the tests' token), its output kept."""
    command = [sys.executable, str(EXAMPLES / name), "--url", url, "--api-key", TOKEN, *args]
    return subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def questions(*names: str) -> list[str]:
    """Speech clips from tests/data, as paths."""
    return [str(DATA / name) for name in names]

"""Shared fixtures: a tiny random model directory written once per test session."""

from pathlib import Path

import pytest
import torch

from realtime.model.config import PRESETS
from realtime.model.init_random import write_random_model

DATA = Path(__file__).parent / "data"


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    """A complete `tiny` model directory (seed 0), as `realtime init-random` writes it."""
    directory = tmp_path_factory.mktemp("tiny-seed0")
    write_random_model(directory, PRESETS["tiny"], seed=0, log=lambda _: None)
    return directory


@pytest.fixture(scope="module")
def runtime(tiny_dir):
    """The tiny model's float32 Runtime on the CPU, one per test module."""
    from realtime.decoding.runtime import Runtime
    from realtime.model import checkpoint

    return Runtime(checkpoint.resolve(str(tiny_dir), offline=True), "cpu", torch.float32)


@pytest.fixture(scope="session")
def live_server(tiny_dir, tmp_path_factory):
    """`realtime serve` on the tiny model in a subprocess (2 sessions, a token), shared."""
    from .serving import ServerProcess

    server = ServerProcess.start(tiny_dir, tmp_path_factory.mktemp("serve"))
    yield server
    server.stop()


@pytest.fixture
def server(live_server):
    """The shared live server, once the previous test's sessions are gone."""
    live_server.wait_idle()
    return live_server

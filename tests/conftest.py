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


@pytest.fixture(scope="session")
def live_server(tiny_dir, tmp_path_factory):
    """`realtime serve` on the tiny model in a subprocess (2 sessions, a token), shared."""
    from .serving import ServerProcess

    server = ServerProcess.start(tiny_dir, tmp_path_factory.mktemp("serve"))
    yield server
    server.stop()

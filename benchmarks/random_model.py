"""A model directory with random weights, for benchmarks run where no model is (a GPU lent for a
few minutes): `realtime init-random` into a temporary directory."""

import tempfile
import time
from pathlib import Path

from realtime.model.config import PRESETS


def temporary_model(preset: str) -> str:
    from realtime.model.init_random import write_random_model

    directory = tempfile.mkdtemp(prefix=f"realtime-{preset}-")
    began = time.perf_counter()
    write_random_model(Path(directory), PRESETS[preset], seed=0, log=lambda _: None)
    print(f"wrote a random {preset} model to {directory} in {time.perf_counter() - began:.0f} s")
    return directory

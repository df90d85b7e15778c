"""Every Triton kernel compiles for an H100 (sm_90) through Triton's real compiler, GPU or not:
the interpreter the other tests use on a CPU never runs that compiler (see compile_check.py)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")

ROOT = Path(__file__).resolve().parents[2]


def test_kernels_and_the_decode_step_compile_for_sm90():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run(
        [sys.executable, "-m", "tests.kernels.compile_check", "--arch", "90"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    # 10 kernels x (bf16, fp32), the head's stage 1 also as it writes the sampling rows' logits
    assert run.stdout.count("ok kernel") == 22
    # the decode step's launches: every kernel; the head's stage 1 in both of its row tilings,
    # with and without the sampling rows' logits
    step = [line.split()[-1] for line in run.stdout.splitlines() if line.startswith("ok step")]
    assert len(step) == 28 and len(set(step)) == 10  # (add_rmsnorm: with and without residual)

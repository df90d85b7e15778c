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
    # 10 kernels x (bf16, fp32), the head's stage 1 also as it writes the sampling rows' logits,
    # the attention's stage 1 also from the qkv rows
    assert run.stdout.count("ok kernel") == 34
    # the decode step's launches, on cuBLAS's products and on ours: every kernel, in each dtype
    # (how many variants of each depends on the launch shapes the step picks)
    step = [line.split()[3:] for line in run.stdout.splitlines() if line.startswith("ok step")]
    kernels = {"_embed_mean_kernel", "_add_rmsnorm_kernel", "_decode_attention_kernel",
               "_decode_attention_reduce_kernel", "_swiglu_kernel", "_gemv_kernel",
               "_head_argmax_kernel", "_head_argmax_reduce_kernel", "_head_sample_kernel",
               "_feedback_kernel"}  # fmt: skip
    for dtype in ("torch.bfloat16", "torch.float32"):
        assert {name for kind, name in step if kind == dtype} == kernels

"""Every Triton kernel compiles for an H100 (sm_90) through Triton's real compiler, GPU or not:
the interpreter the other tests use on a CPU never runs that compiler (see compile_check.py)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def compiled() -> list[tuple[str, str, str, dict[str, str]]]:
    """compile_check's report: (launchers or step, dtype, kernel, facts) per compiled kernel."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run(
        [sys.executable, "-m", "tests.kernels.compile_check", "--arch", "90"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    lines = [line.split() for line in run.stdout.splitlines() if line.startswith("ok ")]
    return [(what, dtype, name, dict(fact.split("=") for fact in facts))
            for _, what, _, dtype, name, *facts in lines]  # fmt: skip


def test_kernels_and_the_decode_step_compile_for_sm90(compiled):
    # 10 kernels x (bf16, fp32), the head's stage 1 also as it writes the sampling rows' logits,
    # the attention's stage 1 also from the qkv rows
    assert sum(what == "kernel" for what, *_ in compiled) == 34
    # the decode step's launches, on cuBLAS's products and on ours: every kernel, in each dtype
    # (how many variants of each depends on the launch shapes the step picks)
    kernels = {"_embed_mean_kernel", "_add_rmsnorm_kernel", "_decode_attention_kernel",
               "_decode_attention_reduce_kernel", "_swiglu_kernel", "_gemv_kernel",
               "_head_argmax_kernel", "_head_argmax_reduce_kernel", "_head_sample_kernel",
               "_feedback_kernel"}  # fmt: skip
    for dtype in ("torch.bfloat16", "torch.float32"):
        step = {name for what, kind, name, _ in compiled if what == "step" and kind == dtype}
        assert step == kernels


def test_the_bf16_step_spills_nothing_and_streams_its_weights_16_bytes_wide(compiled):
    """What decides a memory-bound kernel's speed and can be read without a GPU: no register
    spilled to local memory anywhere in the bf16 step (the engine's dtype), and the products'
    loops copying 16 bytes a thread, pipelined (cp.async)."""
    step = [(dtype, name, facts) for what, dtype, name, facts in compiled if what == "step"]
    spilled = [
        (name, f) for dtype, name, f in step if dtype == "torch.bfloat16" and f["stack"] != "0"
    ]
    assert not spilled
    products = [facts for _, name, facts in step if name == "_gemv_kernel"]
    assert products and all(facts["cp16"] == "yes" for facts in products), products

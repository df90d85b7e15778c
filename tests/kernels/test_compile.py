"""Every Triton kernel compiles for an H100 (sm_90) through Triton's real compiler, GPU or not:
the interpreter the other tests use on a CPU never runs that compiler (see compile_check.py).
The decode step also compiles for the GPUs before Hopper, and fits their shared memory."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")
pytestmark = pytest.mark.slow  # each report is a compile of every kernel (a minute or more)

ROOT = Path(__file__).resolve().parents[2]

# The step's kernels, on cuBLAS's products and on ours, in either dtype.
STEP_KERNELS = {"_embed_mean_kernel", "_add_rmsnorm_kernel", "_decode_attention_kernel",
                "_decode_attention_reduce_kernel", "_swiglu_kernel", "_gemv_kernel",
                "_head_argmax_kernel", "_head_argmax_reduce_kernel", "_head_sample_kernel",
                "_feedback_kernel"}  # fmt: skip
# Shared memory a program may take (cudaDevAttrMaxSharedMemoryPerBlockOptin, what Triton checks
# a launch against): sm_90 (H100, H200); sm_86 and sm_89 (RTX 30 and 40, A10, L4, L40S), the
# least of the GPUs since Ampere (an A100, sm_80, has 166912).
SHARED_LIMIT = {90: 232448, 89: 101376}


def compile_report(arch: int, *options: str) -> list[tuple[str, str, str, dict]]:
    """compile_check's report for `arch` (and its other `options`): (launchers or step, dtype,
    kernel, facts) per compiled kernel."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run(
        [sys.executable, "-m", "tests.kernels.compile_check", "--arch", str(arch), *options],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    lines = [line.split() for line in run.stdout.splitlines() if line.startswith("ok ")]
    return [(what, dtype, name, dict(fact.split("=") for fact in facts))
            for _, what, _, dtype, name, *facts in lines]  # fmt: skip


@pytest.fixture(scope="module")
def compiled() -> list[tuple[str, str, str, dict[str, str]]]:
    return compile_report(90)


@pytest.fixture(scope="module")
def compiled_for_ada() -> list[tuple[str, str, str, dict[str, str]]]:
    """The step alone, for an sm_89 GPU with 24 SMs (an RTX 4060; the fewer SMs, the wider the
    products' tiles) and its 99 KB a program. Triton gives sm_80 and sm_86 the same shared
    memory (registers within one), as compile_check showed for each."""
    return compile_report(89, "--sms", "24", "--shared", str(SHARED_LIMIT[89]), "--parts", "step")


def test_kernels_and_the_decode_step_compile_for_sm90(compiled):
    # 10 kernels x (bf16, fp32), the head's stage 1 also as it writes the sampling rows' logits,
    # the attention's stage 1 also from the qkv rows, gemv also prefetching without PDL
    assert sum(what == "kernel" for what, *_ in compiled) == 36
    # the decode step's launches, on cuBLAS's products and on ours: every kernel, in each dtype
    # (how many variants of each depends on the launch shapes the step picks)
    for dtype in ("torch.bfloat16", "torch.float32"):
        step = {name for what, kind, name, _ in compiled if what == "step" and kind == dtype}
        assert step == STEP_KERNELS


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


def test_the_step_as_dependent_launches_waits_before_it_reads(compiled):
    """KernelStep(pdl=True): every kernel of the step, on either products, waits for the launch
    before it ahead of its first global access and only then lets the next one start; the
    products prefetch their weights into L2 before waiting. Without pdl nothing waits."""
    plain = {name for what, dtype, name, _ in compiled if what == "step"}
    pdl = [(name, facts) for what, _, name, facts in compiled if what == "pdl"]
    assert {name for name, _ in pdl} == plain
    assert all(facts["pdl"] == "ordered" for _, facts in pdl), pdl
    assert all(facts["l2pf"] == "yes" for name, facts in pdl if name == "_gemv_kernel")
    assert all(facts["stack"] == "0" for _, facts in pdl)
    step = [facts for what, _, _, facts in compiled if what == "step"]
    assert all(facts["pdl"] == "none" for facts in step)


def test_the_whole_step_compiles_ahead_through_tritons_jit(compiled):
    """kernels/triton_support.compile_ahead, as an engine runs it before its first step on a
    GPU, hands Triton's JIT every variant of the step once (plain and as dependent launches),
    and afterwards none of the step's launches compiles anything."""
    ahead = [(what, facts) for what, _, _, facts in compiled if what.startswith("ahead")]
    if not ahead:
        pytest.skip("this Triton does not compile in the background (3.5 and later do)")
    assert sorted(what for what, _ in ahead) == ["ahead", "ahead+pdl"]
    for _, facts in ahead:
        assert int(facts["variants"]) == int(facts["distinct"]) > 0
        assert facts["compiled_at_launch"] == "0"


def test_a_product_can_prefetch_its_weights_without_pdl(compiled):
    """gemv's Tiles(prefetch=True), which the sweep times: W's lines asked of L2 before the
    loop, with no dependent launch to overlap."""
    products = [facts for what, _, name, facts in compiled
                if what == "kernel" and name == "_gemv_kernel"]  # fmt: skip
    assert any(f["l2pf"] == "yes" and f["pdl"] == "none" for f in products)
    assert any(f["l2pf"] == "no" for f in products)


def test_dependent_launch_order_is_read_from_the_ptx():
    """The check above can fail: a load ahead of the wait is a race, and so is letting the next
    launch start before waiting."""
    from tests.kernels.compile_check import dependent_launch

    wait, go = "griddepcontrol.wait;", "griddepcontrol.launch_dependents;"
    load, copy = (
        "ld.global.nc.v4.b32 {%r1}, [%rd1];",
        "cp.async.cg.shared.global [%r2], [%rd2], 16;",
    )
    prefetch = "@p prefetch.global.L2 [%rd3];"
    assert dependent_launch("\n".join([load])) == "pdl=none l2pf=no"
    assert dependent_launch("\n".join([prefetch, load])) == "pdl=none l2pf=yes"
    assert dependent_launch("\n".join([prefetch, wait, go, load, copy])) == "pdl=ordered l2pf=yes"
    assert dependent_launch("\n".join([wait, go, copy])) == "pdl=ordered l2pf=no"
    assert dependent_launch("\n".join([load, wait, go])) == "pdl=early l2pf=no"
    assert dependent_launch("\n".join([copy, wait, go])) == "pdl=early l2pf=no"
    assert dependent_launch("\n".join([go, wait, load])) == "pdl=early l2pf=no"


@pytest.mark.parametrize(("arch", "report"), [(90, "compiled"), (89, "compiled_for_ada")])
def test_every_kernel_of_the_step_fits_the_gpus_shared_memory(arch, report, request):
    """The products' and the head's pipelines are sized on Hopper: each of the step's kernels
    must still launch where a program gets the least shared memory (else Triton refuses the
    launch, OutOfResources, at the engine's start), in either dtype, with no register spilled
    in the engine's bf16. On the small GPU the fp32 products' widest tiles need fewer pipeline
    stages (kernels/gemv.py's stages_that_fit): with 4, up to 147456 bytes."""
    compiled = request.getfixturevalue(report)
    step = [(dtype, name, facts) for what, dtype, name, facts in compiled if what == "step"]
    for dtype in ("torch.bfloat16", "torch.float32"):
        assert {name for kind, name, _ in step if kind == dtype} == STEP_KERNELS
    over = [(d, name, f["shared"]) for d, name, f in step if int(f["shared"]) > SHARED_LIMIT[arch]]
    assert not over, f"over sm_{arch}'s {SHARED_LIMIT[arch]} bytes: {over}"
    spilled = [name for d, name, f in step if d == "torch.bfloat16" and f["stack"] != "0"]
    assert not spilled

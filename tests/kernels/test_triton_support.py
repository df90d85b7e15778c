"""How launchers launch: as programmatic dependents only within dependent_launches(), never
under the interpreter (which runs no GPU), and back to plain launches after it; compile_ahead
runs nothing where nothing would compile (what it compiles on a GPU target: test_compile.py)."""

import pytest
import torch

pytest.importorskip("triton")

from kernels import triton_support
from kernels.triton_support import compile_ahead, dependent_launches, launch_options

PLAIN = {"PDL": False, "launch_pdl": False}


def test_dependent_launches_within_the_context_only(monkeypatch):
    monkeypatch.setattr(triton_support, "interpreting", lambda: False)
    assert launch_options() == PLAIN
    with dependent_launches():
        assert launch_options() == {"PDL": True, "launch_pdl": True}
        with dependent_launches(False):  # a step without pdl inside one with it
            assert launch_options() == PLAIN
        assert launch_options()["PDL"]
    assert launch_options() == PLAIN


def test_dependent_launches_are_plain_ones_under_the_interpreter(monkeypatch):
    monkeypatch.setattr(triton_support, "interpreting", lambda: True)
    with dependent_launches():
        assert launch_options() == PLAIN


def test_compile_ahead_leaves_the_interpreter_and_the_torch_path_alone(monkeypatch):
    """Under the interpreter nothing compiles, and with REALTIME_TORCH_ONLY no kernel runs: the
    launches `run` would make must not be made as mere warm-ups there (they would compute
    nothing), so `run` is not called at all."""
    calls = []
    monkeypatch.setattr(triton_support, "interpreting", lambda: True)
    assert compile_ahead(lambda: calls.append("run")) == 0
    monkeypatch.setattr(triton_support, "interpreting", lambda: False)
    monkeypatch.setenv("REALTIME_TORCH_ONLY", "1")
    assert compile_ahead(lambda: calls.append("run")) == 0
    assert not calls


def test_an_interpreter_that_cannot_run_beside_numpy_is_named(monkeypatch, tiny_lm):
    """Triton before 3.7 interprets a loop bound that a kernel loaded by way of int(), which
    numpy 2.4 refuses for a one-element array: with that pair the kernel step says so as it is
    built (the tests fail with the same words), instead of failing deep inside a kernel."""
    import numpy
    import triton

    from realtime.decoding.gpu.step import KernelStep

    def versions(triton_version, numpy_version, interpreting=True):
        monkeypatch.setattr(triton, "__version__", triton_version)
        monkeypatch.setattr(numpy, "__version__", numpy_version)
        monkeypatch.setattr(triton_support, "interpreting", lambda: interpreting)
        return triton_support.interpreter_problem()

    assert versions("3.6.0", "2.4.6") == (
        "Triton 3.6.0's interpreter cannot run with numpy 2.4.6: install numpy<2.4 or"
        " triton>=3.7 to run the kernels on a CPU"
    )
    assert versions("3.4.0", "2.5.2") is not None
    lm = tiny_lm(torch.float32)
    with pytest.raises(RuntimeError, match="cannot run with numpy 2.5.2"):
        KernelStep(lm, lm.new_cache(2, max_seq=16), 1, pad_slot=1)
    assert versions("3.7.0", "2.4.6") is None
    assert versions("3.6.0", "2.3.5") is None
    assert versions("3.6.0", "2.4.6", interpreting=False) is None  # compiled: no numpy in it


def test_a_launch_within_the_context_computes_the_same(device):
    """On a GPU of sm_90 or later this launches gemv as a dependent; elsewhere plainly."""
    import torch

    from kernels.gemv import gemv, gemv_ref

    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(2, 64, generator=g), torch.randn(48, 64, generator=g)
    x, w = x.to(device), w.to(device)
    with dependent_launches(triton_support.supports_dependent_launches(w.device)):
        y, _ = gemv(x, w)
    torch.testing.assert_close(y, gemv_ref(x, w)[0], rtol=1e-5, atol=1e-5)

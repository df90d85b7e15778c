"""How launchers launch: as programmatic dependents only within dependent_launches(), never
under the interpreter (which runs no GPU), and back to plain launches after it; compile_ahead
runs nothing where nothing would compile (what it compiles on a GPU target: test_compile.py)."""

import pytest

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

"""Triton kernel tests run compiled on a CUDA GPU and in Triton's interpreter everywhere else.

The interpreter is chosen here, before any test module imports triton or a kernel module; the
CPU GEMV test in this directory does not use triton and runs the same either way.
"""

import copy
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# bf16 keeps 8 significant bits: one rounding step apart is a relative 2^-8 .. 2^-7.
BF16_ULP = 2**-7


@pytest.fixture
def device() -> str:
    """Where the kernel tests put their tensors; skips when the launchers would not run
    their kernels (REALTIME_TORCH_ONLY set)."""
    pytest.importorskip("triton")
    from kernels.triton_support import interpreter_problem, runs_kernel

    name = "cuda" if torch.cuda.is_available() else "cpu"
    if not runs_kernel(torch.empty(0, device=name)):
        pytest.skip("the Triton kernels are switched off here")
    if problem := interpreter_problem():
        pytest.fail(problem, pytrace=False)
    return name


@pytest.fixture(scope="session")
def tiny_lm():
    """(dtype, device="cpu") -> a random OmniLM of the `tiny` preset (the real token layout,
    n_embd 64), set up as realtime.model.checkpoint.load_lm leaves one: fp32 RoPE tables, fused
    SwiGLUs. Each (dtype, device) has its own copy, which tests must not move."""
    from realtime.model.config import PRESETS
    from realtime.model.lm import OmniLM, RMSNorm, rope_cache

    cfg = PRESETS["tiny"].model
    models = {}

    def build(dtype: torch.dtype, device: str = "cpu") -> OmniLM:
        if (dtype, device) not in models and device != "cpu":
            lm = copy.deepcopy(build(dtype))
            models[dtype, device] = lm.to(device)
        if (dtype, device) not in models:
            torch.manual_seed(0)
            lm = OmniLM(cfg)
            with torch.no_grad():  # norm weights other than 1, so both paths must apply them
                for module in lm.modules():
                    if isinstance(module, RMSNorm):
                        module.weight.normal_(1.0, 0.1)
            lm = lm.to(dtype).eval().requires_grad_(False)
            lm.cos, lm.sin = rope_cache(cfg.block_size, cfg.head_size, cfg.rope_base)
            models[dtype, device] = lm.fuse()
        return models[dtype, device]

    return build


class Products(list):
    """(weight, input, output) of every product realtime.model.lm made."""

    def of(self, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The (input, output) of the one product with `weight`."""
        (found,) = [(x, out) for w, x, out in self if w is weight]
        return found


@pytest.fixture
def model_products(monkeypatch) -> Products:
    """Records every product realtime.model.lm makes, so a reference can start from the model's
    own activations and be compared with it bit for bit (the model's bf16 products may take
    our CPU GEMV, which sums in another order than F.linear)."""
    from realtime.model import lm as model

    products = Products()
    original = model.linear

    def spy(x, weight, bias=None, packed=None):
        out = original(x, weight, bias, packed)
        products.append((weight, x, out))
        return out

    monkeypatch.setattr(model, "linear", spy)
    return products

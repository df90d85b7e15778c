"""realtime/decoding/gpu/prompt_graphs.py: graphed prompts against the eager forward pass they
replace."""

import pytest
import torch

from realtime.model.config import PRESETS
from realtime.model.lm import OmniLM, rope_cache

TOLERANCE = {
    torch.float32: dict(rtol=1e-5, atol=1e-5),
    torch.bfloat16: dict(rtol=2**-6, atol=2e-2),
}


def tiny(dtype: torch.dtype, device: str) -> OmniLM:
    cfg = PRESETS["tiny"].model
    torch.manual_seed(0)
    lm = OmniLM(cfg).to(dtype).eval().requires_grad_(False)
    lm.cos, lm.sin = rope_cache(cfg.block_size, cfg.head_size, cfg.rope_base)
    return lm.fuse().to(device)


def prompt(lm: OmniLM, rows: int, start: int, length: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, length, lm.cfg.n_embd, generator=g).to(lm.lm_head.weight)
    positions = torch.arange(start, start + length).expand(rows, -1).to(x.device)
    return x, positions


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_reading_the_whole_cache_under_the_mask_changes_nothing(dtype):
    """The static shape the graphs use: attention over every cache position, masked."""
    lm = tiny(dtype, "cpu")
    caches = [lm.new_cache(3, max_seq=96) for _ in range(2)]
    slots = torch.tensor([2, 0])
    with torch.inference_mode():
        for start, length in ((0, 21), (21, 9)):  # a turn, then a second after it
            x, positions = prompt(lm, 2, start, length, seed=start)
            want = lm(x, positions, slots, caches[0])
            got = lm(x, positions, slots, caches[1], length=96)
            torch.testing.assert_close(got, want, **TOLERANCE[dtype])
    torch.testing.assert_close(caches[1].k, caches[0].k, **TOLERANCE[dtype])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_on_gpu_replays_equal_the_eager_pass(dtype):
    from realtime.decoding.gpu.prompt_graphs import BUCKETS, PromptGraphs

    lm = tiny(dtype, "cuda")
    eager, graphed = lm.new_cache(4, max_seq=512), lm.new_cache(4, max_seq=512)
    graphs = PromptGraphs(lm, graphed, pad_slot=3)
    slots = torch.tensor([2, 0], device="cuda")
    with torch.inference_mode():
        # a 2 s block, the end of the turn, a second turn after it, one too long to pad
        for start, length in ((0, 104), (104, 5), (109, 30), (139, BUCKETS[-1] + 1)):
            x, positions = prompt(lm, 2, start, length, seed=start)
            want = lm(x, positions, slots, eager)
            got = graphs.forward(x, positions, slots, start)
            torch.testing.assert_close(got, want, **TOLERANCE[dtype])
    assert set(graphs.graphs) == {(2, 128), (2, 16), (2, 32)}
    end = 139 + BUCKETS[-1] + 1  # every real position's keys and values, in the rows' slots
    for cache_got, cache_want in ((graphed.k, eager.k), (graphed.v, eager.v)):
        torch.testing.assert_close(
            cache_got[:, [2, 0], :, :end], cache_want[:, [2, 0], :, :end], **TOLERANCE[dtype]
        )
        assert not cache_got[:, 1].any()  # no other request's slot is touched

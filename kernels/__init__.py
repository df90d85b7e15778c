"""Our own kernels, each a launcher `name()` with its torch reference `name_ref()`:

- cpu_decode: bf16 decode on CPUs, in C (a GEMV for a few rows; one row's RoPE, cache write
  and attention in one call);
- Triton kernels for the GPU decode step, one module per op: embed_mean, add_rmsnorm,
  qkv_rope_cache, decode_attention, swiglu, head_argmax, head_sample (top-k / temperature /
  top-p drawn on the device), feedback.

realtime/kernel_step.py puts the Triton kernels together into the decode step (captured as a
CUDA graph per batch-size bucket). They have only run in Triton's CPU interpreter and been
compiled for sm_90; on a first GPU: `pytest tests/kernels` including the `gpu`-marked tests
(the bf16 tensor-core dots and the graph capture have never executed); bf16 outputs may move by
one rounding step from FMA contraction and the approximate exp2/log2/rsqrt; then
`python -m benchmarks.decode_step` and tune head_argmax's blocks and warps (254 registers at 4
warps) and decode_attention's split length (184 registers) with their benchmarks, and time
head_sample's 2 x 64 rounds of max-and-remove (benchmarks.kernels.head_sample; tl.topk's
bitonic sort is the alternative, far too slow for the interpreter's tests); and
`python -m benchmarks.vocoder_speed --device cuda` for the streaming vocoder's share of each step.
"""

import os

TORCH_ONLY_ENV = "REALTIME_TORCH_ONLY"  # set to 1: never use our kernels, CPU or GPU


def torch_only() -> bool:
    """Whether REALTIME_TORCH_ONLY asks for the plain torch path everywhere."""
    return os.environ.get(TORCH_ONLY_ENV, "0") not in ("", "0")

"""Our own kernels, each a launcher `name()` with its torch reference `name_ref()`:

- cpu_decode: bf16 decode on CPUs, in C (a GEMV for a few rows; one row's RoPE, cache write
  and attention in one call);
- Triton kernels for the GPU decode step, one module per op: embed_mean, add_rmsnorm,
  qkv_rope_cache (any number of positions per row, a launch of its own: the decode step does
  this inside decode_attention_qkv, and the attention benchmark times the two against it),
  decode_attention, swiglu, gemv (the products for a few rows, with the norm, bias, SwiGLU and
  split-K slices folded in), head_argmax, head_sample (top-k / temperature / top-p drawn on
  the device), feedback.

realtime/decoding/gpu/step.py puts the Triton kernels together into the decode step (captured as a
CUDA graph per batch-size bucket). On an H100 (2026-11-22) every test in tests/kernels passed
compiled, `gpu`-marked ones included, and the graphed step took 1.07 ms at batch 1 and 1.44 ms
at batch 64 (benchmarks/results/decode_step-*.json). `python -m benchmarks.step_profile` lists
where that goes: cuBLAS's four products per layer (4-9 us each where the weights need 1-6 us at
HBM speed), 49 RMSNorms of 1.8 us, the head at 2.9 TB/s. gemv is the answer to that (5
launches a block instead of 10 for up to 4 rows, 8 for more; KernelStep(products="fused")), and
decode_attention_qkv (RoPE and the cache write inside the attention) took one launch a block
out of both products. Both were written after that run and are not yet timed:
`benchmarks/gpu_checklist.sh sweep decode` sets gemv's launch shapes and decides whether it
becomes the default. Then tune head_argmax's blocks and decode_attention's split length with
their benchmarks. Launched within `triton_support.dependent_launches()` (KernelStep(pdl=True),
sm_90+) every kernel starts as a programmatic dependent of the launch before it, and gemv
prefetches its weights into L2 while it waits: also untimed (decode_step's `[+pdl]`
contenders).
`bash benchmarks/gpu_checklist.sh` runs the tests and every benchmark on a GPU in one command.
`triton_support.compile_ahead` compiles every kernel variant a function would launch, many at
once, without launching any: the engine does it for its step before its first one, and the
benchmarks for what they time.
"""

import os

TORCH_ONLY_ENV = "REALTIME_TORCH_ONLY"  # set to 1: never use our kernels, CPU or GPU


class KernelsUnavailable(RuntimeError):
    """The decode step on our Triton kernels cannot be built on this machine: a kernel that
    does not compile for this GPU or needs more than it has, a capture the driver refuses, an
    interpreter that cannot run beside this numpy. The message says which; the torch path
    still runs here."""


def torch_only() -> bool:
    """Whether REALTIME_TORCH_ONLY asks for the plain torch path everywhere."""
    return os.environ.get(TORCH_ONLY_ENV, "0") not in ("", "0")

"""Our own kernels for the decode step. Each is a set under one name: a launcher `name()`, its
plain-torch reference `name_ref()` (what the kernel computes, in the model's roundings) and,
for the Triton ones, the `_name_kernel` the launcher launches.

- cpu_decode: bf16 decode on CPUs, in C (csrc/): a GEMV for a few rows, and one row's RoPE,
  cache write and attention in one call.
- Triton kernels for the GPU decode step, one module per op: embed_mean (the streams'
  embeddings gathered and averaged), add_rmsnorm, qkv_rope_cache (the qkv split, RoPE and cache
  write for any number of positions a row), decode_attention (split-KV attention for one new
  position a row; decode_attention_qkv does qkv_rope_cache's work inside it, a launch fewer),
  swiglu, gemv (the products for a few rows, with the norm, bias, SwiGLU and split-K slices
  folded in: a block in 5 launches for up to 4 rows and 8 for more, where it takes 10 on
  cuBLAS's products), head_argmax (the tied head with the greedy pick, no logits written),
  head_sample (top-k / temperature / top-p drawn on the device), feedback (the sampled ids
  made the next step's input, no host sync).
- What they share: triton_support (when and how a launcher launches its kernel, programmatic
  dependent launches, compiling ahead, exact rounding), splits (results left in parts for the
  next launch to combine as it loads them), layout (the token layout), sampling (the
  counter-based draw, in torch; head_sample computes the same on the device).

A launcher runs its kernel on CUDA tensors, or on any tensors under Triton's interpreter
(TRITON_INTERPRET=1, how the tests run on a CPU); otherwise it returns its reference, so the
model runs on a machine without a GPU. REALTIME_TORCH_ONLY=1 keeps the torch path everywhere.

The kernels take what they need of a model as arguments: its weights, caches and RoPE tables,
and its token layout as a `layout.TokenLayout`. They never import the realtime package, which
imports them: realtime/decoding/gpu/step.py puts the Triton kernels together into its decode step.
`bash benchmarks/gpu_checklist.sh` runs the tests and every benchmark on a GPU in one command.
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

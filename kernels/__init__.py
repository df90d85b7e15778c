"""Our own kernels, each a launcher `name()` with its torch reference `name_ref()`:

- cpu_decode: bf16 decode on CPUs, in C (a GEMV for a few rows; one row's RoPE, cache write
  and attention in one call);
- Triton kernels for the GPU decode step, one module per op: embed_mean, add_rmsnorm,
  qkv_rope_cache, decode_attention, swiglu, head_argmax, feedback.
"""

"""Our own kernels: a CPU bf16 GEMV (cpu_gemv), and Triton kernels for the GPU decode step, one
module per op, each with its launcher and torch reference (`name`, `name_ref`): embed_mean,
add_rmsnorm, qkv_rope_cache, decode_attention, swiglu, head_argmax, feedback."""

"""Our own kernels: a CPU bf16 GEMV now; the Triton GPU decode kernels join it here."""

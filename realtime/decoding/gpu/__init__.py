"""The decode step on our Triton kernels and its CUDA graphs (the host's side: which step runs
at which batch size), and the prefill's graphs."""

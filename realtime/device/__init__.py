"""How torch runs on the machine: one thread pool at a time on a CPU, CUDA graph capture on a
GPU."""

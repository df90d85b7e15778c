"""The one recipe for capturing a CUDA graph, shared by the decode step, the prompts and the
vocoder: warm up on a side stream (kernels compiled, cuDNN's choices and the allocator settled
outside the graph), then capture one call."""

from collections.abc import Callable

import torch


def capture(fn: Callable[[], object], pool=None, warmups: int = 1):
    """Run fn `warmups` times on a side stream, then capture one call of it into a new graph
    (sharing the memory pool `pool` if given) -> (graph, what the captured call returned: the
    tensors every replay writes)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmups):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool):
        out = fn()
    return graph, out

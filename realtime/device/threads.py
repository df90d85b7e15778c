"""Which threads run torch on a CPU: one at a time, so that its ops do not wait on each other.

torch's CPU ops, and our C kernels (kernels/cpu_decode.py), split their work over threads in
OpenMP parallel regions. GNU OpenMP (libgomp, the runtime of torch's Linux wheels) gives every
thread that starts a region a pool of worker threads and keeps it until that thread ends. While
two threads hold pools and their workers outnumber the CPUs, libgomp's workers stop spinning
between regions and sleep, so every region waits for them to wake: tens of microseconds on
every op, which adds up to a third more on the engine's step on a small CPU
(docs/architecture.md, `benchmarks.engine_speed`).

So in the server only the inference thread runs torch for long. Loading the models and setting
up the engine run on a thread of their own that ends when they are done (`on_fresh_thread`),
taking its pool with it, and the main thread and the event loop run none.
"""

import threading
from collections.abc import Callable
from typing import TypeVar

import torch

T = TypeVar("T")


def on_fresh_thread(fn: Callable[..., T], *args, **kwargs) -> T:
    """fn(*args, **kwargs) on a new thread that ends with it; returns its result or raises its
    exception. The caller's current CUDA device goes with it (it is per thread); thread-local
    torch modes (inference_mode, no_grad) do not."""
    device = torch.cuda.current_device() if torch.cuda.is_initialized() else None
    result: list[T] = []
    error: list[BaseException] = []
    finished = threading.Event()

    def run() -> None:
        try:
            if device is not None:
                torch.cuda.set_device(device)
            result.append(fn(*args, **kwargs))
        except BaseException as exc:  # handed to the caller, who raises it
            error.append(exc)
        finally:
            finished.set()

    # Interrupted while it waits (Ctrl-C during a load), the caller raises at once and the
    # interpreter ends once fn has. Not a daemon, and not waited for with join() until it is
    # done: an interrupted join() marks the thread as ended (CPython 3.11), and a thread still
    # inside torch's C++ code at shutdown aborts the process ("terminate called without an
    # active exception").
    thread = threading.Thread(target=run, name=f"fresh:{getattr(fn, '__name__', 'call')}")
    thread.start()
    finished.wait()
    thread.join()  # a moment: it has returned; its thread pool goes with it
    if error:
        raise error[0]
    return result[0]

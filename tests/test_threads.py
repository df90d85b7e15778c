"""Only the inference thread keeps a torch thread pool (realtime/threads.py says why)."""

import subprocess
import sys
import threading
from pathlib import Path

import pytest

from realtime.threads import on_fresh_thread

ROOT = Path(__file__).resolve().parents[1]

# In a fresh process, whose main thread has run no torch op: the model loads and the engine sets
# up without leaving an OpenMP pool (one parked worker per pool at 2 threads) to any thread
# that lives on; the same work on the main thread leaves one, which shows the count can see it.
POOLS = """
import os, sys, time
import torch
from realtime import checkpoint
from realtime.engine import Engine, EngineOptions
from realtime.runtime import Runtime

def threads_once_settled(expected):  # a pool's workers end a moment after its thread
    for _ in range(300):
        count = len(os.listdir("/proc/self/task"))
        if count == expected:
            break
        time.sleep(0.01)
    return count

torch.set_num_threads(2)
before = len(os.listdir("/proc/self/task"))
runtime = Runtime(checkpoint.resolve(sys.argv[1], offline=True), "cpu")
engine = Engine(runtime, EngineOptions(max_sessions=2, kernels=False))
print(threads_once_settled(before) - before, engine.cache.k.shape[1])
runtime.lm.new_cache(4)  # torch's work on this thread
print(threads_once_settled(before + 1) - before)
"""


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="counts threads in /proc")
def test_loading_and_engine_set_up_leave_no_thread_pool_behind(tiny_dir):
    command = [sys.executable, "-c", POOLS, str(tiny_dir)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["0", "4", "1"]


def test_on_fresh_thread_returns_and_raises_what_the_call_does():
    caller = threading.get_ident()
    assert on_fresh_thread(lambda a, b=0: (a + b, threading.get_ident()), 2, b=3)[0] == 5
    assert on_fresh_thread(threading.get_ident) != caller

    def fails():
        raise KeyError("missing")

    with pytest.raises(KeyError, match="missing"):
        on_fresh_thread(fails)

"""Only the inference thread keeps a torch thread pool (realtime/device/threads.py says why)."""

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from realtime.device.threads import on_fresh_thread

ROOT = Path(__file__).resolve().parents[1]

# In a fresh process, whose main thread has run no torch op: the model loads and the engine sets
# up without leaving an OpenMP pool (one parked worker per pool at 2 threads) to any thread
# that lives on; the same work on the main thread leaves one, which shows the count can see it.
POOLS = """
import os, sys, time
import torch
from realtime.model import checkpoint
from realtime.engine.engine import Engine, EngineOptions
from realtime.decoding.runtime import Runtime

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


INTERRUPTED = """
import time, torch
from realtime.device.threads import on_fresh_thread

def load():
    print("loading", flush=True)
    x, end = torch.randn(256, 256), time.monotonic() + 1.5
    while time.monotonic() < end:  # torch's C++ code, as a load is
        x = torch.tanh(x @ x)
    print("loaded", flush=True)

on_fresh_thread(load)
"""


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_ctrl_c_during_a_load_on_a_fresh_thread_ends_cleanly():
    """The caller is interrupted at once; the process ends as Ctrl-C ends Python, once the
    load has, not with an abort from a thread cut off inside torch."""
    done = subprocess.Popen(
        [sys.executable, "-c", INTERRUPTED], cwd=ROOT, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # as a terminal's
    )  # fmt: skip
    assert done.stdout.readline() == "loading\n"
    time.sleep(0.3)
    done.send_signal(signal.SIGINT)
    out, err = done.communicate(timeout=60)
    assert done.returncode == -signal.SIGINT, err[-2000:]
    assert "KeyboardInterrupt" in err and "terminate called" not in err
    assert out == "loaded\n"

"""What the benchmarks' results files say about the machine they ran on."""

import os
import platform

import torch


def cpu_name() -> str:
    """The CPU's model name (Linux's /proc/cpuinfo: platform.processor() is empty there)."""
    try:
        with open("/proc/cpuinfo") as info:
            names = [line.split(":", 1)[1].strip() for line in info if "model name" in line]
    except OSError:
        names = []
    return names[0] if names else platform.processor() or platform.machine()


def machine_tag() -> str:
    """A short name for this machine in a results file's name, e.g. x86_64-2cpu."""
    return f"{platform.machine()}-{os.cpu_count()}cpu"


def describe(device: str) -> dict:
    """The machine entry of a results file: platform, device, torch's threads and version."""
    name = torch.cuda.get_device_name(device) if device.startswith("cuda") else None
    return {
        "platform": platform.platform(),
        "device": name or f"{cpu_name()} ({torch.get_num_threads()} threads)",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }

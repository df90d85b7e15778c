"""A server process's health over time, from Linux's /proc: resident memory, threads and open
file descriptors, sampled every few seconds, and the memory's growth fitted after a warm-up."""

import asyncio
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

SAMPLE_S = 10.0
WARMUP_SHARE, WARMUP_MIN_S = 0.2, 120.0
MIN_FIT_SAMPLES = 3
TCP_LISTEN = "0A"  # the state column of /proc/net/tcp


@dataclass
class HealthSeries:
    """Samples of process `pid` (None: nothing to watch, no samples)."""

    pid: int | None
    samples: list[dict] = field(default_factory=list)
    began: float = field(default_factory=time.monotonic)

    async def sample_every(self, seconds: float = SAMPLE_S) -> None:
        while self.pid is not None:
            self.sample()
            await asyncio.sleep(seconds)

    def sample(self) -> None:
        """Read /proc/PID now; a process that has gone adds nothing."""
        proc = Path(f"/proc/{self.pid}")
        try:
            status = dict(line.split(":", 1) for line in (proc / "status").read_text().splitlines())
            fds = len(os.listdir(proc / "fd"))
        except OSError:
            return
        self.samples.append(
            {
                "t_s": round(time.monotonic() - self.began, 1),
                "rss_mib": round(int(status["VmRSS"].split()[0]) / 1024, 1),  # kB
                "threads": int(status["Threads"]),
                "fds": fds,
            }
        )

    @staticmethod
    def warmup_s(run_s: float) -> float:
        """The first 20 % of the run or 2 minutes, whichever is longer, but at most half of it."""
        return max(WARMUP_SHARE * run_s, min(WARMUP_MIN_S, run_s / 2))

    def growth_pct_per_hour(self, run_s: float) -> float | None:
        """RSS growth from the warm-up's end to the run's (not the callers' hanging up after
        it), by a least-squares line, in % per hour of the line's value at the warm-up's end;
        None with fewer than MIN_FIT_SAMPLES samples to fit."""
        warm = self.warmup_s(run_s)
        kept = [(s["t_s"], s["rss_mib"]) for s in self.samples if warm <= s["t_s"] <= run_s]
        if len(kept) < MIN_FIT_SAMPLES:
            return None
        t, rss = np.array(kept).T  # (2, N)
        slope, intercept = np.polyfit(t, rss, 1)  # MiB/s, MiB
        return round(float(slope * 3600 / (slope * warm + intercept) * 100), 3)


def listening_pid(url: str) -> int | None:
    """The process listening on `url`'s port on this machine (None if not found: another
    user's, or not Linux)."""
    port = urlsplit(url).port or 80
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            local, state, inode = row.split()[1], row.split()[3], row.split()[9]
            if state == TCP_LISTEN and int(local.rsplit(":", 1)[1], 16) == port:
                inodes.add(f"socket:[{inode}]")
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if any(os.readlink(fd) in inodes for fd in (proc / "fd").iterdir()):
                return int(proc.name)
        except OSError:
            continue
    return None

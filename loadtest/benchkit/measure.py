"""Latency percentiles and CPU accounting from /proc, shared by every measurement."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CLIENT_BOUND_PCT = 90
"""Client CPU (% of its core) from which a row is marked as possibly client-bound."""
NOISY_PCT = 10
"""CPU used by other processes (% of one core) from which a row is marked as noisy."""
QUIET_SAMPLE_S = 5.0
"""Window over which the machine must be quiet before a measurement starts."""


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def latency_ms(seconds: Sequence[float]) -> dict[str, float | None]:
    """p50/p90/p99/mean/max of latencies given in seconds, in milliseconds."""
    if not seconds:
        return dict.fromkeys(("p50", "p90", "p99", "mean", "max"))
    ms = np.asarray(seconds) * 1e3
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    return {
        "p50": float(p50),
        "p90": float(p90),
        "p99": float(p99),
        "mean": float(ms.mean()),
        "max": float(ms.max()),
    }


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads) from /proc/<pid>/stat, in seconds."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat.rsplit(")", 1)[1].split()  # the name in parentheses may contain spaces
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True, slots=True)
class CpuSample:
    """CPU seconds used so far: by the server, by this process, and by the whole machine."""

    wall: float
    server: float
    own: float
    machine_busy: float
    machine_steal: float

    @classmethod
    def take(cls, server_pid: int | None) -> CpuSample:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]
        user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields)
        tick = os.sysconf("SC_CLK_TCK")
        return cls(
            wall=time.perf_counter(),
            server=0.0 if server_pid is None else cpu_seconds(server_pid),
            own=time.process_time(),
            machine_busy=(user + nice + system + irq + softirq) / tick,
            machine_steal=steal / tick,
        )


def cpu_figures(before: CpuSample, after: CpuSample) -> dict[str, float]:
    """CPU use between two samples, in % of one core. `other` is everything but server + own."""
    wall = after.wall - before.wall
    server, own = after.server - before.server, after.own - before.own
    other = after.machine_busy - before.machine_busy - server - own
    return {
        "server_cpu_s": server,
        "server_cpu_pct": 100 * server / wall,
        "own_cpu_pct": 100 * own / wall,
        "other_cpu_pct": max(0.0, 100 * other / wall),
        "steal_pct": 100 * (after.machine_steal - before.machine_steal) / wall,
    }


def wait_for_quiet(timeout_s: float, sample_s: float = QUIET_SAMPLE_S) -> bool:
    """Wait until other processes use less than NOISY_PCT of a core over `sample_s` seconds."""
    deadline = time.monotonic() + timeout_s
    while True:
        before = CpuSample.take(None)
        time.sleep(sample_s)
        figures = cpu_figures(before, CpuSample.take(None))
        busy = figures["other_cpu_pct"] + figures["steal_pct"]
        if busy < NOISY_PCT:
            return True
        if time.monotonic() >= deadline:
            log(f"the machine is still busy ({busy:.0f} % of a core); measuring anyway")
            return False
        log(f"other processes use {busy:.0f} % of a core; waiting for quiet")

"""Latency percentiles and CPU accounting from /proc, shared by every measurement."""

from __future__ import annotations

import os
import re
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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


POOL_THREAD = re.compile(r"(?P<pool>[a-z]+)_\d+")
THREAD_ROLE_ORDER = ("loop", "inference", "grpc", "event_engine", "other", "ended")
"""How the report orders the server's threads; roles not named here follow, sorted."""


def thread_role(pid: int, tid: int, comm: str) -> str:
    """What a server thread does, from its OS name: the main thread is the event loop; the
    gateway names its pools' threads `<pool>_<n>` (inference, grpc, load, shadow) and gRPC's
    C-core names its own (event_engine); anything else (grpcio's poller, a server that names
    none) is `other`. A new Linux thread inherits its creator's name: onnxruntime's intra-op
    threads (intra_op_threads > 1) are started while a load thread builds the session, so
    they count as `load`."""
    if tid == pid:
        return "loop"
    if comm == "event_engine":
        return comm
    pool = POOL_THREAD.fullmatch(comm)
    return pool["pool"] if pool else "other"


@dataclass(frozen=True, slots=True)
class ThreadCpu:
    role: str
    seconds: float
    """utime + stime so far."""
    voluntary_switches: int = 0
    """Context switches so far where the thread blocked (waited for a lock, a socket, work)."""
    involuntary_switches: int = 0
    """Context switches so far where the kernel preempted it (for a thread it woke, say)."""


SWITCHES = re.compile(r"^(voluntary|nonvoluntary)_ctxt_switches:\s+(\d+)$", re.MULTILINE)


def cpu_by_thread(pid: int) -> dict[int, ThreadCpu]:
    """Each live thread of a process (by thread id): its role (thread_role), CPU and context
    switches so far."""
    tick = os.sysconf("SC_CLK_TCK")
    threads: dict[int, ThreadCpu] = {}
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return threads
    for task in tasks:
        try:
            comm = Path(f"/proc/{pid}/task/{task}/comm").read_text().strip()
            fields = Path(f"/proc/{pid}/task/{task}/stat").read_text().rsplit(")", 1)[1].split()
            switches = dict(SWITCHES.findall(Path(f"/proc/{pid}/task/{task}/status").read_text()))
        except OSError:  # the thread ended meanwhile
            continue
        tid = int(task)
        threads[tid] = ThreadCpu(
            thread_role(pid, tid, comm),
            (int(fields[11]) + int(fields[12])) / tick,
            int(switches.get("voluntary", 0)),
            int(switches.get("nonvoluntary", 0)),
        )
    return threads


def cpu_by_role(
    before: Mapping[int, ThreadCpu], after: Mapping[int, ThreadCpu], total_s: float
) -> dict[str, float]:
    """CPU seconds by role between two samples of cpu_by_thread: each thread alive at the end
    counts from the first sample (from 0 if it started since); `ended` is what the process
    used beyond them (threads that ended in between, and the rounding of each thread's clock
    to ticks), 0 if none."""
    roles: dict[str, float] = {}
    for thread, start in _since(before, after):
        roles[thread.role] = roles.get(thread.role, 0.0) + thread.seconds - start.seconds
    roles["ended"] = max(0.0, total_s - sum(roles.values()))
    return roles


def switches_between(
    before: Mapping[int, ThreadCpu], after: Mapping[int, ThreadCpu]
) -> dict[str, int]:
    """Context switches of a process's threads between two samples of cpu_by_thread, voluntary
    and involuntary; as in cpu_by_role, each thread alive at the end counts from the first
    sample (from 0 if it started since). Threads that ended in between are not counted."""
    if not after:  # nothing sampled (no server process): no figures, rather than zeros
        return {}
    pairs = list(_since(before, after))
    return {
        "voluntary": sum(t.voluntary_switches - s.voluntary_switches for t, s in pairs),
        "involuntary": sum(t.involuntary_switches - s.involuntary_switches for t, s in pairs),
    }


def _since(
    before: Mapping[int, ThreadCpu], after: Mapping[int, ThreadCpu]
) -> Iterator[tuple[ThreadCpu, ThreadCpu]]:
    """(end, start) for each thread alive at the end; a thread started since the first sample
    starts from zero."""
    for tid, thread in after.items():
        yield thread, before.get(tid) or ThreadCpu(thread.role, 0.0)


@dataclass(frozen=True, slots=True)
class CpuSample:
    """CPU seconds used so far: by the server (and by each of its threads), by this process,
    and by the whole machine."""

    wall: float
    server: float
    own: float
    machine_busy: float
    machine_steal: float
    server_threads: Mapping[int, ThreadCpu] = field(default_factory=dict)
    """Read before `server`, so that the process's total includes what they used."""

    @classmethod
    def take(cls, server_pid: int | None) -> CpuSample:
        threads = {} if server_pid is None else cpu_by_thread(server_pid)
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]
        user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields)
        tick = os.sysconf("SC_CLK_TCK")
        return cls(
            wall=time.perf_counter(),
            server=0.0 if server_pid is None else cpu_seconds(server_pid),
            own=time.process_time(),
            machine_busy=(user + nice + system + irq + softirq) / tick,
            machine_steal=steal / tick,
            server_threads=threads,
        )


def cpu_figures(before: CpuSample, after: CpuSample) -> dict[str, Any]:
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
        "server_cpu_s_by_thread": cpu_by_role(before.server_threads, after.server_threads, server),
        "server_context_switches": switches_between(before.server_threads, after.server_threads),
        "server_threads": len(after.server_threads),
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

"""The hot-swap run: a closed loop on one model, phase by phase, while another model is reloaded
over and over through the admin API during the swap phases.

The phase runner (`measured_phases`: windows of equal length with the server's CPU, memory and
threads at their bounds, and an action per phase) and the closed-loop `worker` are shared with
other A/B runs (shadow_bench.py)."""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .clients import Client, LoadJob, make_client
from .measure import CpuSample, cpu_figures
from .tensors import random_feeds

STEADY, SWAP = "steady", "swap"
PHASE_PATTERN = (STEADY, SWAP, SWAP, STEADY)
"""ABBA: a drift that is linear in time weighs on both kinds of phase alike."""
FAILED_SWAP_PAUSE_S = 0.5
"""Pause after a failed swap, so a failing admin API is not called in a tight loop."""
NO_SWAPS = (401, 403, 404, 405, 501)
"""Answers meaning no swap can succeed (no admin token or a wrong one, no load route): the swap
phases go on without swaps."""


def phase_kinds(rounds: int, pattern: Sequence[str] = PHASE_PATTERN) -> list[str]:
    """`2 * rounds` phases, both kinds alike often, in ABBA order (steady and swap unless
    `pattern` names two others)."""
    return [pattern[i % len(pattern)] for i in range(2 * rounds)]


@dataclass(frozen=True, slots=True)
class SwapJob:
    """The load on model A (as bench.py's load generator runs it) and the swaps of model B."""

    load: LoadJob
    swap_url: str
    swap_body: dict[str, Any]
    admin_token: str
    phase_s: float
    rounds: int
    settle_s: float
    swap_timeout_s: float

    def limit_s(self) -> float:
        """The longest the whole run may take: every phase overrun by a whole swap."""
        phases = 2 * self.rounds * (self.phase_s + self.swap_timeout_s)
        return self.load.warmup_s + phases + self.load.timeout_s + 30


@dataclass(slots=True)
class Requests:
    """Every request to model A: when it was sent and answered (perf_counter s), and errors."""

    stop_at: float = float("inf")
    starts: list[float] = field(default_factory=list)
    dones: list[float] = field(default_factory=list)
    oks: list[bool] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)

    def record(self, start: float, done: float, error: str | None) -> None:
        self.starts.append(start)
        self.dones.append(done)
        self.oks.append(error is None)
        if error is not None and len(self.errors) < 50:
            self.errors.append({"done": done, "error": error})


async def worker(client: Client, first: int, step: int, requests: Requests) -> None:
    """Closed loop: send, wait for the checked answer, send the next, until the run stops."""
    index = first
    while (start := time.perf_counter()) < requests.stop_at:
        error = None
        try:
            await client.infer(index)
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"[:300]
        requests.record(start, time.perf_counter(), error)
        index += step


def process_status(pid: int) -> dict[str, int]:
    """Resident memory (MiB) and thread count of a process, from /proc/<pid>/status."""
    figures = {"rss_mib": 0, "threads": 0}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key == "VmRSS":
            figures["rss_mib"] = int(value.split()[0]) // 1024
        elif key == "Threads":
            figures["threads"] = int(value)
    return figures


class Swapper:
    """Calls the load route of model B, one call after another, and keeps every outcome."""

    def __init__(self, job: SwapJob, session: Any) -> None:
        self._job = job
        self._session = session
        self.swaps: list[dict[str, Any]] = []
        self.unavailable = ""
        """Why swaps stopped for good (refused, or no load route), or empty."""

    def _expected_s(self) -> float:
        durations = [s["end"] - s["start"] for s in self.swaps if s["ok"]]
        return statistics.median(durations) if durations else 0.0

    async def swap_until(self, phase_end: float) -> None:
        """Swap back to back: once at the start of the phase, then while the next swap should
        end `settle_s` before `phase_end` (at the median duration so far)."""
        last_end = phase_end - self._job.settle_s
        first = True
        while not self.unavailable and (
            first or time.perf_counter() + self._expected_s() <= last_end
        ):
            first = False
            swap = await self.swap_once()
            self.swaps.append(swap)
            if swap["status"] in NO_SWAPS:
                self.unavailable = f"HTTP {swap['status']}: {json.dumps(swap['answer'])}"[:300]
            elif not swap["ok"]:
                await asyncio.sleep(FAILED_SWAP_PAUSE_S)

    async def swap_once(self) -> dict[str, Any]:
        headers = {}
        if self._job.admin_token:
            headers["Authorization"] = f"Bearer {self._job.admin_token}"
        status: int | None = None
        start = time.perf_counter()
        try:
            async with self._session.post(
                self._job.swap_url, json=self._job.swap_body, headers=headers
            ) as answer:
                status, text = answer.status, await answer.text()
        except Exception as exc:
            text = f"{type(exc).__name__}: {exc}"
        end = time.perf_counter()
        try:
            document: Any = json.loads(text)
        except ValueError:
            document = text[:300]
        # A reload swaps every version: an answer that loaded none did not swap.
        ok = status == 200 and isinstance(document, dict) and bool(document.get("loaded"))
        return {
            "start": start,
            "end": end,
            "status": status,
            "ok": ok,
            "answer": document,
            "server_after": process_status(self._job.load.server_pid),
        }


PhaseStep = Callable[[str], Awaitable[None]]
"""Done for a kind of phase before its window opens."""
PhaseDone = Callable[[dict[str, Any]], Awaitable[None]]
"""Done with a phase's record after its window closed (it may add figures to it)."""
PhaseAction = Callable[[str, float], Awaitable[dict[str, Any]]]
"""Done inside the window of a kind of phase, which ends at the given perf_counter time; the
figures it returns go into the phase's record."""


async def measured_phases(
    server_pid: int,
    phase_s: float,
    kinds: Sequence[str],
    action: PhaseAction,
    before: PhaseStep | None = None,
    after: PhaseDone | None = None,
) -> list[dict[str, Any]]:
    """One window of `phase_s` per kind, back to back, each running `action`, with the server's
    CPU, memory and threads at its bounds; `before` and `after` run outside the windows."""
    phases = []
    for kind in kinds:
        if before is not None:
            await before(kind)
        sample_before, status_before = CpuSample.take(server_pid), process_status(server_pid)
        end = sample_before.wall + phase_s
        done = await action(kind, end)
        await asyncio.sleep(max(0.0, end - time.perf_counter()))
        sample_after, status_after = CpuSample.take(server_pid), process_status(server_pid)
        figures = cpu_figures(sample_before, sample_after)
        figures["client_cpu_pct"] = figures.pop("own_cpu_pct")
        phase = {
            "kind": kind,
            "start": sample_before.wall,
            "end": sample_after.wall,
            **done,
            **figures,
            "server_before": status_before,
            "server_after": status_after,
        }
        phases.append(phase)
        if after is not None:
            await after(phase)
    return phases


async def run_phases(job: SwapJob, swapper: Swapper) -> list[dict[str, Any]]:
    """Warm-up, then each phase with the server's CPU, memory and threads at its bounds."""
    await asyncio.sleep(job.load.warmup_s)

    async def swaps(kind: str, end: float) -> dict[str, Any]:
        swaps_before = len(swapper.swaps)
        if kind == SWAP:
            await swapper.swap_until(end)
        return {"swaps": len(swapper.swaps) - swaps_before}

    return await measured_phases(job.load.server_pid, job.phase_s, phase_kinds(job.rounds), swaps)


async def run_swap(job: SwapJob) -> dict[str, Any]:
    """The whole run; times in the result are seconds since the warm-up started."""
    import aiohttp

    feeds = random_feeds(job.load.inputs, 1, job.load.batched, job.load.seed)
    client = make_client(job.load, feeds)
    requests = Requests()
    timeout = aiohttp.ClientTimeout(total=job.swap_timeout_s)
    origin = time.perf_counter()
    try:
        async with aiohttp.ClientSession(timeout=timeout) as session:
            swapper = Swapper(job, session)
            concurrency = job.load.concurrency
            workers = [
                asyncio.ensure_future(worker(client, i, concurrency, requests))
                for i in range(concurrency)
            ]
            try:
                phases = await asyncio.wait_for(run_phases(job, swapper), job.limit_s())
            finally:
                requests.stop_at = time.perf_counter()
                await asyncio.wait_for(asyncio.gather(*workers), job.load.timeout_s + 5)
    finally:
        await client.close()

    def since(moment: float) -> float:
        return moment - origin

    for phase in phases:
        phase["start"], phase["end"] = since(phase["start"]), since(phase["end"])
    for swap in swapper.swaps:
        swap["start"], swap["end"] = since(swap["start"]), since(swap["end"])
    return {
        "phases": phases,
        "swaps": swapper.swaps,
        "swap_api": swapper.unavailable or "ok",
        "requests": {
            "start": [since(t) for t in requests.starts],
            "done": [since(t) for t in requests.dones],
            "ok": requests.oks,
        },
        "error_samples": [{**e, "done": since(e["done"])} for e in requests.errors],
    }


def run(job: SwapJob) -> dict[str, Any]:
    """On uvloop when it is installed, as the gateway runs."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(run_swap(job))
    return uvloop.run(run_swap(job))

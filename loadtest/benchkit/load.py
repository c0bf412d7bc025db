"""The closed-loop load generator that runs in its own pinned subprocess, one row at a time."""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass, field
from typing import Any

from .clients import Client, LoadJob, make_client
from .measure import CpuSample, cpu_figures, latency_ms
from .stats import read_stats, stats_delta
from .tensors import random_feeds

STATS_TIMEOUT_S = 5.0


@dataclass(slots=True)
class LoadTally:
    """What the workers saw: latencies of requests completed in the window, and errors."""

    window_start: float
    window_end: float
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    warmup_errors: int = 0
    error_samples: list[str] = field(default_factory=list)

    def record(self, start: float, done: float, error: str | None) -> None:
        in_window = self.window_start <= done < self.window_end
        if error is None:
            if in_window:
                self.latencies.append(done - start)
            return
        if in_window:
            self.errors += 1
        elif done < self.window_start:
            self.warmup_errors += 1
        if len(self.error_samples) < 5:
            self.error_samples.append(error)


async def worker(client: Client, first: int, step: int, tally: LoadTally) -> None:
    """Closed loop: send, wait for the checked answer, send the next, until the window ends."""
    index = first
    while (start := time.perf_counter()) < tally.window_end:
        error = None
        try:
            await client.infer(index)
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"[:300]
        tally.record(start, time.perf_counter(), error)
        index += step


async def _sleep_until(moment: float) -> None:
    await asyncio.sleep(max(0.0, moment - time.perf_counter()))


async def observe_window(job: LoadJob, tally: LoadTally) -> dict[str, Any]:
    """Server, client (this process) and other CPU over the window; the server's statistics
    (read just before and just after, outside the CPU window) when the job names a route."""
    import aiohttp

    url = f"http://{job.host}:{job.http_port}{job.stats_path}"
    async with aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=STATS_TIMEOUT_S)
    ) as session:
        await _sleep_until(tally.window_start)
        stats_before = await read_stats(session, url) if job.stats_path else "not read"
        before = CpuSample.take(job.server_pid)
        await _sleep_until(tally.window_end)
        after = CpuSample.take(job.server_pid)
        stats_after = await read_stats(session, url) if job.stats_path else "not read"
    figures: dict[str, Any] = cpu_figures(before, after)
    figures["client_cpu_pct"] = figures.pop("own_cpu_pct")
    figures["window_s"] = after.wall - before.wall
    figures["server_stats"] = stats_delta(stats_before, stats_after, job.model)
    return figures


async def run_load(job: LoadJob) -> dict[str, Any]:
    feeds = random_feeds(job.inputs, 1, job.batched, job.seed)
    client = make_client(job, feeds)
    start = time.perf_counter()
    tally = LoadTally(start + job.warmup_s, start + job.warmup_s + job.duration_s)
    try:
        observer = asyncio.ensure_future(observe_window(job, tally))
        workers = [worker(client, i, job.concurrency, tally) for i in range(job.concurrency)]
        limit_s = job.warmup_s + job.duration_s + job.timeout_s + 2 * STATS_TIMEOUT_S + 5
        await asyncio.wait_for(asyncio.gather(observer, *workers), limit_s)
        observed = observer.result()
    finally:
        await client.close()
    requests = len(tally.latencies)
    return {
        "target": job.target,
        "protocol": job.protocol,
        "concurrency": job.concurrency,
        "seconds": job.duration_s,
        "requests": requests,
        "requests_per_s": requests / job.duration_s,
        "samples_per_s": requests / job.duration_s,  # batch-1 requests
        "latency_ms": latency_ms(tally.latencies),
        "errors": tally.errors,
        "warmup_errors": tally.warmup_errors,
        "error_samples": tally.error_samples,
        **observed,
        "server_cpu_us_per_request": (
            1e6 * observed["server_cpu_s"] / requests if requests else None
        ),
        "server_cpu_us_per_request_by_thread": per_request(
            observed["server_cpu_s_by_thread"], requests, 1e6
        ),
        "server_switches_per_request": per_request(observed["server_context_switches"], requests),
        "client_cpu_affinity": sorted(os.sched_getaffinity(0)),
    }


def per_request(totals: dict[str, float], requests: int, scale: float = 1.0) -> dict[str, float]:
    """Each of a window's totals a request (times `scale`); empty if no request completed."""
    return {key: scale * total / requests for key, total in totals.items()} if requests else {}


def load_main(document: dict[str, Any]) -> dict[str, Any]:
    """In the pinned subprocess: run one row on uvloop (asyncio without it)."""
    job = LoadJob.from_json(document)
    try:
        import uvloop
    except ImportError:
        return asyncio.run(run_load(job))
    return uvloop.run(run_load(job))

"""The shadow run: an open-loop load on one model whose traffic policy alternates, phase by phase
(ABBA), between no shadow and a 100 % shadow to another version; then an overload with the
shadow on.

The phases, the closed-loop workers and the request log are those of the hot-swap run
(`benchkit/swap.py`); what is new here is the open-loop generator (each request sent at its
scheduled time, whether or not earlier ones were answered), the traffic API and the overload.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .clients import Client, LoadJob, make_client
from .measure import CpuSample, cpu_figures
from .swap import Requests, measured_phases, phase_kinds, worker
from .tensors import random_feeds

PLAIN, SHADOW = "plain", "shadow"
PHASE_PATTERN = (PLAIN, SHADOW, SHADOW, PLAIN)
"""ABBA: a drift that is linear in time weighs on both kinds of phase alike."""
ARRIVALS = ("uniform", "poisson")
REFUSALS = ("StatusCode.RESOURCE_EXHAUSTED", "HTTP 429")
"""How a refused request (the gateway's line is full) reads in the load generator's errors."""
OUTCOMES = ("agree", "disagree", "error", "dropped")
"""A shadow pair's counters in `GET /v2/models/{m}/traffic`."""
PROBE_WARMUP_S = 1.0
"""Closed-loop requests before the probe's window opens (not counted)."""
OVERLOAD_LEAD_S = 1.0
"""Traffic samples before the overload's load starts (the baseline of its counters)."""
OVERLOAD_TAIL_S = 2.0
"""Traffic samples after the overload's load stopped (shadow copies still finishing)."""
SETTLE_S = 1.0
"""Pause between the open-loop load and the overload: the last shadow copies finish."""


def is_refusal(error: str) -> bool:
    return any(marker in error for marker in REFUSALS)


def policies(primary: str, shadow: str) -> dict[str, dict[str, Any]]:
    """The traffic policy of each kind of phase: every routed request to `primary`, and in the
    shadow phases a copy of every one to `shadow`."""
    weights = {primary: 100}
    return {
        PLAIN: {"weights": weights},
        SHADOW: {"weights": weights, "shadows": [{"version": shadow, "percent": 100}]},
    }


@dataclass(frozen=True, slots=True)
class ShadowJob:
    """The load (bench.py's clients; `load.concurrency` caps the open loop's requests in
    flight), the policies, the phases and the overload."""

    load: LoadJob
    traffic_url: str
    admin_token: str
    primary: str
    shadow: str
    rate: float
    """Requests per second of the open loop; 0: `load_fraction` of the probed capacity."""
    load_fraction: float
    arrivals: str
    probe_s: float
    phase_s: float
    rounds: int
    overload_concurrency: int
    overload_s: float
    overload_ramp_s: float
    sample_s: float
    api_timeout_s: float = 10.0

    def limit_s(self) -> float:
        """The longest the whole run may take."""
        phases = 2 * self.rounds * (self.phase_s + 2 * self.api_timeout_s)
        probe = PROBE_WARMUP_S + self.probe_s + self.load.timeout_s
        overload = OVERLOAD_LEAD_S + self.overload_s + OVERLOAD_TAIL_S + 2 * self.load.timeout_s
        return probe + self.load.warmup_s + phases + SETTLE_S + overload + 60


@dataclass(slots=True)
class Tally(Requests):
    """Requests as `Requests` keeps them, plus when each was really sent (an open loop's
    `start` is when it was due) and whether the gateway refused it (full line)."""

    sents: list[float] = field(default_factory=list)
    refusals: list[bool] = field(default_factory=list)

    def record(
        self, start: float, done: float, error: str | None, sent: float | None = None
    ) -> None:
        Requests.record(self, start, done, error)
        self.sents.append(start if sent is None else sent)
        self.refusals.append(error is not None and is_refusal(error))


class TrafficApi:
    """`GET` and `PUT /v2/models/{m}/traffic` (the admin token on PUT, if any)."""

    def __init__(self, session: Any, url: str, admin_token: str) -> None:
        self._session = session
        self._url = url
        self._headers = {"Authorization": f"Bearer {admin_token}"} if admin_token else {}

    async def put(self, policy: dict[str, Any]) -> dict[str, Any]:
        async with self._session.put(self._url, json=policy, headers=self._headers) as answer:
            text = await answer.text()
            if answer.status != 200:
                raise SystemExit(f"shadow_bench: PUT {self._url}: HTTP {answer.status}: {text}")
        document: dict[str, Any] = await answer.json(content_type=None)
        return document

    async def get(self) -> dict[str, Any]:
        async with self._session.get(self._url) as answer:
            if answer.status != 200:
                raise RuntimeError(f"GET {self._url}: HTTP {answer.status}")
            document: dict[str, Any] = await answer.json(content_type=None)
        return document


def pair_counts(document: dict[str, Any], primary: str, shadow: str) -> dict[str, int]:
    """The (primary, shadow) pair's counters in a traffic document (zeros before any copy)."""
    for pair in document.get("comparisons", []):
        if pair["primary"] == primary and pair["shadow"] == shadow:
            return {key: int(pair[key]) for key in OUTCOMES}
    return dict.fromkeys(OUTCOMES, 0)


def difference(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {key: after[key] - before[key] for key in OUTCOMES}


async def open_loop(client: Client, job: ShadowJob, rate: float, requests: Tally) -> dict[str, int]:
    """Send request i when it is due (uniform: every 1/rate s; poisson: exponential gaps), each
    in its own task, until `requests.stop_at`; its latency counts from when it was due. Past
    `load.concurrency` requests in flight a due request is not sent and counts as failed.

    The schedule is kept by a thread that sleeps until each request is due (the event loop's
    timers wake up to a millisecond late) and hands it to the loop, which sends it at once."""
    loop = asyncio.get_running_loop()
    in_flight: set[asyncio.Task[None]] = set()
    limit = job.load.concurrency
    counts = {"sent": 0, "not_sent": 0}

    async def one(number: int, due: float) -> None:
        start = time.perf_counter()
        error = None
        try:
            await client.infer(number)
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"[:300]
        requests.record(due, time.perf_counter(), error, start)

    def launch(number: int, due: float) -> None:
        if len(in_flight) >= limit:
            counts["not_sent"] += 1
            requests.record(due, due, f"NotSent: {limit} requests already in flight", due)
            return
        task = loop.create_task(one(number, due))
        in_flight.add(task)
        task.add_done_callback(in_flight.discard)
        counts["sent"] += 1

    def schedule() -> None:
        rng = np.random.default_rng(job.load.seed)
        number, due = 0, time.perf_counter()
        while due < requests.stop_at:
            delay = due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
                continue  # stop_at may have moved meanwhile
            loop.call_soon_threadsafe(launch, number, due)
            number += 1
            due += 1.0 / rate if job.arrivals == "uniform" else float(rng.exponential(1.0 / rate))

    await asyncio.to_thread(schedule)
    await asyncio.sleep(0)  # the last launches handed over run before this
    if in_flight:
        await asyncio.wait(in_flight, timeout=job.load.timeout_s + 5)
    return counts


async def probe(client: Client, job: ShadowJob) -> dict[str, Any]:
    """One closed-loop worker (every execution a batch of 1) for `probe_s` after a short
    warm-up: the gateway's CPU per request, and so what one core sustains at batch 1."""
    pid = job.load.server_pid
    tally = Tally()
    task = asyncio.ensure_future(worker(client, 0, 1, tally))
    await asyncio.sleep(PROBE_WARMUP_S)
    before, first = CpuSample.take(pid), len(tally.dones)
    await asyncio.sleep(job.probe_s)
    after, last = CpuSample.take(pid), len(tally.dones)
    tally.stop_at = time.perf_counter()
    await asyncio.wait_for(task, job.load.timeout_s + 5)
    figures = cpu_figures(before, after)
    ok = sum(tally.oks[first:last])
    latencies = np.asarray(tally.dones[first:last]) - np.asarray(tally.starts[first:last])
    us_per_request = 1e6 * figures["server_cpu_s"] / ok if ok else None
    return {
        "seconds": after.wall - before.wall,
        "requests": ok,
        "errors": (last - first) - ok,
        "requests_per_s": ok / (after.wall - before.wall),
        "p50_ms": float(np.percentile(latencies, 50) * 1e3) if latencies.size else None,
        "server_cpu_pct": figures["server_cpu_pct"],
        "server_cpu_us_per_request": us_per_request,
        "capacity_per_s": 1e6 / us_per_request if us_per_request else None,
        "other_cpu_pct": figures["other_cpu_pct"] + figures["steal_pct"],
    }


async def sample_traffic(
    api: TrafficApi, job: ShadowJob, samples: list[dict[str, Any]], stop: asyncio.Event
) -> None:
    """GET the traffic document every `sample_s` s: the pair's counters, when asked and when
    answered (the counters are those of a moment in between)."""
    while not stop.is_set():
        sent = time.perf_counter()
        try:
            counts: dict[str, Any] = pair_counts(await api.get(), job.primary, job.shadow)
        except Exception as exc:
            counts = {"failed": f"{type(exc).__name__}: {exc}"[:200]}
        samples.append({"sent": sent, "at": time.perf_counter(), **counts})
        await asyncio.sleep(max(0.0, sent + job.sample_s - time.perf_counter()))


async def ramped_worker(client: Client, first: int, step: int, requests: Tally, at: float) -> None:
    await asyncio.sleep(max(0.0, at - time.perf_counter()))
    await worker(client, first, step, requests)


async def overload(client: Client, job: ShadowJob, api: TrafficApi) -> dict[str, Any]:
    """The shadow policy, then a closed loop that ramps up to `overload_concurrency` workers
    over `overload_ramp_s` and runs `overload_s` in all, with the traffic sampled throughout."""
    pid = job.load.server_pid
    await api.put(policies(job.primary, job.shadow)[SHADOW])
    samples: list[dict[str, Any]] = []
    stop = asyncio.Event()
    sampler = asyncio.ensure_future(sample_traffic(api, job, samples, stop))
    await asyncio.sleep(OVERLOAD_LEAD_S)
    tally = Tally()
    count = job.overload_concurrency
    before = CpuSample.take(pid)
    ramp = [before.wall + job.overload_ramp_s * i / count for i in range(count)]
    workers = [
        asyncio.ensure_future(ramped_worker(client, i, count, tally, ramp[i])) for i in range(count)
    ]
    await asyncio.sleep(max(0.0, before.wall + job.overload_s - time.perf_counter()))
    after = CpuSample.take(pid)
    tally.stop_at = time.perf_counter()
    await asyncio.wait(workers, timeout=job.load.timeout_s + 5)
    stopped = time.perf_counter()
    await asyncio.sleep(OVERLOAD_TAIL_S)
    stop.set()
    await asyncio.wait_for(sampler, job.api_timeout_s + job.sample_s + 5)
    figures = cpu_figures(before, after)
    figures["client_cpu_pct"] = figures.pop("own_cpu_pct")
    return {
        "start": before.wall,
        "end": after.wall,
        "stopped": stopped,
        "ramp": ramp,
        **figures,
        "samples": samples,
        "tally": tally,
    }


async def run_shadow(job: ShadowJob) -> dict[str, Any]:
    """The whole run; times in the result are seconds since the open loop's warm-up started."""
    import aiohttp

    feeds = random_feeds(job.load.inputs, 1, job.load.batched, job.load.seed)
    client = make_client(job.load, feeds)
    policy = policies(job.primary, job.shadow)
    timeout = aiohttp.ClientTimeout(total=job.api_timeout_s)
    try:
        async with aiohttp.ClientSession(timeout=timeout) as session:
            api = TrafficApi(session, job.traffic_url, job.admin_token)
            await api.put(policy[PLAIN])
            probed = await probe(client, job)
            rate = job.rate or job.load_fraction * (probed["capacity_per_s"] or 0.0)
            if rate <= 0:
                raise SystemExit("shadow_bench: the probe measured no capacity; give --rate")
            tally = Tally()
            origin = time.perf_counter()  # the open loop's warm-up starts
            generator = asyncio.ensure_future(open_loop(client, job, rate, tally))
            counters: dict[str, dict[str, int]] = {}
            answers: dict[str, Any] = {}

            async def set_policy(kind: str) -> None:
                answers[kind] = await api.put(policy[kind])
                counters["before"] = pair_counts(answers[kind], job.primary, job.shadow)

            async def nothing(kind: str, end: float) -> dict[str, Any]:
                return {}  # the policy is all the difference; the load runs on its own

            async def count_copies(phase: dict[str, Any]) -> None:
                now = pair_counts(await api.get(), job.primary, job.shadow)
                phase["comparisons"] = difference(now, counters["before"])

            try:
                warm_start = time.perf_counter()
                await api.put(policy[SHADOW])  # both paths warm: primary and shadow
                await asyncio.sleep(job.load.warmup_s / 2)
                await api.put(policy[PLAIN])
                await asyncio.sleep(max(0.0, warm_start + job.load.warmup_s - time.perf_counter()))
                phases = await asyncio.wait_for(
                    measured_phases(
                        job.load.server_pid,
                        job.phase_s,
                        phase_kinds(job.rounds, PHASE_PATTERN),
                        nothing,
                        before=set_policy,
                        after=count_copies,
                    ),
                    job.limit_s(),
                )
            finally:
                tally.stop_at = time.perf_counter()
                generated = await asyncio.wait_for(generator, job.load.timeout_s + 10)
            await asyncio.sleep(SETTLE_S)
            after_phases = await api.get()
            overloaded = await overload(client, job, api)
            final = await api.get()
            metrics = await metric_lines(session, job.traffic_url)
    finally:
        await client.close()

    def since(moment: float) -> float:
        return moment - origin

    for phase in phases:
        phase["start"], phase["end"] = since(phase["start"]), since(phase["end"])
    over_tally: Tally = overloaded.pop("tally")
    for key in ("start", "end", "stopped"):
        overloaded[key] = since(overloaded[key])
    overloaded["ramp"] = [since(t) for t in overloaded["ramp"]]
    for sample in overloaded["samples"]:
        sample["sent"], sample["at"] = since(sample["sent"]), since(sample["at"])
    return {
        "probe": probed,
        "rate": {"used_per_s": rate, "given": job.rate or None},
        "open_loop": generated,
        "policies": policy,
        "policy_answers": answers,
        "phases": phases,
        "comparisons_after_phases": pair_counts(after_phases, job.primary, job.shadow),
        "comparisons_final": pair_counts(final, job.primary, job.shadow),
        "traffic_final": final,
        "overload": overloaded,
        "metrics": metrics,
        "requests": tally_columns(tally, since),
        "overload_requests": tally_columns(over_tally, since),
        "error_samples": [{**e, "done": since(e["done"])} for e in tally.errors],
        "overload_error_samples": [{**e, "done": since(e["done"])} for e in over_tally.errors],
    }


def tally_columns(tally: Tally, since: Any) -> dict[str, list[Any]]:
    return {
        "start": [since(t) for t in tally.starts],
        "sent": [since(t) for t in tally.sents],
        "done": [since(t) for t in tally.dones],
        "ok": tally.oks,
        "refused": tally.refusals,
    }


async def metric_lines(session: Any, traffic_url: str) -> list[str]:
    """The gateway's shadow and refusal counters from `GET /metrics` (none if it has no
    metrics): what the gateway itself counted, to set beside the load generator's figures."""
    url = traffic_url.split("/v2/", 1)[0] + "/metrics"
    try:
        async with session.get(url) as answer:
            if answer.status != 200:
                return []
            text = await answer.text()
    except Exception:
        return []
    wanted = ("gateway_shadow_", 'code="overloaded"', 'role="shadow"')
    return [
        line
        for line in text.splitlines()
        if not line.startswith("#") and any(w in line for w in wanted)
    ][:200]


def run(job: ShadowJob) -> dict[str, Any]:
    """On uvloop when it is installed, as the gateway runs."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(run_shadow(job))
    return uvloop.run(run_shadow(job))

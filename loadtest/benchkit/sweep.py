"""Rows of a run: the load generator against one server, per protocol and concurrency."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .gateway import load_document
from .measure import NOISY_PCT, log, wait_for_quiet
from .processes import RunningServer, run_pinned


def is_noisy(run: dict[str, Any]) -> bool:
    return bool(run["other_cpu_pct"] + run["steal_pct"] >= NOISY_PCT)


def measure_row(
    args: argparse.Namespace, server: RunningServer, job: dict[str, Any]
) -> dict[str, Any]:
    """One row; while other processes disturbed it, wait for quiet and measure it again
    (at most --retry-noisy times), keeping the quietest attempt."""
    budget = args.warmup + args.duration + args.request_timeout + 60
    attempts: list[dict[str, Any]] = []
    for attempt in range(1 + args.retry_noisy):
        if attempt:
            log(f"  other processes used {attempts[-1]['other_cpu_pct']:.0f} % of a core; again")
            if args.wait_quiet > 0:
                wait_for_quiet(args.wait_quiet)
        attempts.append(run_pinned(args.client_core, "_load", job, budget))
        server.check_alive()
        if not is_noisy(attempts[-1]):
            break
    run = min(attempts, key=lambda r: r["other_cpu_pct"] + r["steal_pct"])
    run["attempts"] = len(attempts)
    return run


def measure(
    args: argparse.Namespace,
    server: RunningServer,
    signature: dict[str, Any],
    target: str,
    protocol: str,
    concurrency: int,
    stats_path: str = "",
) -> dict[str, Any]:
    """One row against `server`; `target` names it in the results."""
    job = load_document(
        args,
        server,
        signature,
        target=target,
        protocol=protocol,
        concurrency=concurrency,
        model_version=args.model_version,
        stats_path=stats_path,
    )
    log(f"{target} {protocol} x {concurrency}: {args.warmup:g} s + {args.duration:g} s")
    run = measure_row(args, server, job)
    batch = run["server_stats"]["mean_batch_size"]
    log(
        f"  {run['requests_per_s']:.0f} req/s, p50 {run['latency_ms']['p50'] or 0:.3f} ms"
        f", {run['errors']} errors" + ("" if batch is None else f", mean batch {batch:.2f}")
    )
    return run


@dataclass(frozen=True, slots=True)
class Target:
    """A server under test and what its rows are called and which protocols it serves."""

    name: str
    server: RunningServer
    protocols: tuple[str, ...]
    stats_path: str = ""


def median_row(repeats: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The repeat with the median samples/s (the lower middle one of an even count) stands for
    the row: every figure in it comes from one window, so they stay consistent with each other.
    Each repeat's headline figures are kept beside it, in the order they were measured."""
    ordered = sorted(repeats, key=lambda run: run["samples_per_s"])
    row = dict(ordered[(len(ordered) - 1) // 2])
    if len(repeats) > 1:
        row["repeats"] = [
            {
                "samples_per_s": run["samples_per_s"],
                "p50_ms": run["latency_ms"]["p50"],
                "server_cpu_us_per_request": run["server_cpu_us_per_request"],
                "errors": run["errors"] + run["warmup_errors"],
                "noisy": is_noisy(run),
            }
            for run in repeats
        ]
    return row


BareBatch1 = Callable[[str], dict[str, Any]]
"""Measures bare onnxruntime's batch-1 run beside the concurrency-1 rows of a protocol."""


def interleaved(
    args: argparse.Namespace,
    signature: dict[str, Any],
    targets: Sequence[Target],
    bare_batch1: BareBatch1 | None = None,
) -> tuple[dict[str, list[dict[str, Any]]], dict[str, list[dict[str, Any]]]]:
    """Every protocol x concurrency, measured on each target that serves the protocol one
    after the other, so that a gateway row and the echo rows it is compared with are taken
    seconds apart, not minutes: this VM's speed drifts by 10-20 % over minutes. With
    --repeat N that round is measured N times in a row and each target's row is the repeat with
    the median samples/s (median_row). With `bare_batch1`, each round at concurrency 1 starts
    with bare onnxruntime's batch-1 run, the model's part of the latency target.

    The rows of each target, by its name; and the bare batch-1 runs of each protocol, one a
    round, in the order measured."""
    rows: dict[str, list[dict[str, Any]]] = {target.name: [] for target in targets}
    batch1: dict[str, list[dict[str, Any]]] = {}
    for protocol in args.protocols:
        for concurrency in args.concurrency:
            serving = [target for target in targets if protocol in target.protocols]
            repeats: dict[str, list[dict[str, Any]]] = {target.name: [] for target in serving}
            for _ in range(args.repeat):
                if concurrency == 1 and bare_batch1 is not None:
                    batch1.setdefault(protocol, []).append(bare_batch1(protocol))
                for target in serving:
                    run = measure(
                        args,
                        target.server,
                        signature,
                        target.name,
                        protocol,
                        concurrency,
                        target.stats_path,
                    )
                    repeats[target.name].append(run)
            for name, runs in repeats.items():
                rows[name].append(median_row(runs))
    return rows, batch1

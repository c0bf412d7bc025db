"""The limits (model, front end, combined) and how each gateway row compares with them."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

from .measure import CLIENT_BOUND_PCT
from .sweep import is_noisy

SATURATED_PCT = 90
"""Server CPU (% of its core) from which an echo server counts as saturated."""
LATENCY_SLACK_MS = 0.2
"""Allowed at concurrency 1: gateway p50 <= echo p50 + bare onnxruntime batch-1 p50 + this."""


def model_limit(
    baseline: dict[str, Any], max_batch_size: int, baseline_end: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The best bare-onnxruntime samples/s among batch sizes the gateway accepts, each batch
    size's the better of the session as onnxruntime makes it and with its memory in huge pages
    (as the gateway loads it); with a second baseline measured after the servers' rows, each
    batch size's mean of the two, so that a host drifting during the run moves the limit as it
    moved the rows."""

    def servable(run: dict[str, Any]) -> dict[int, float]:
        best: dict[int, float] = {}
        for step in [*run["sweep"], *(run.get("huge_pages") or {}).get("sweep", [])]:
            size = step["batch_size"]
            if size <= max(1, max_batch_size):
                best[size] = max(best.get(size, 0.0), step["samples_per_s"])
        return best

    start = servable(baseline)
    end = servable(baseline_end) if baseline_end else {}
    means = {size: (start[size] + end[size]) / 2 if size in end else start[size] for size in start}
    best = max(means, key=lambda size: means[size])
    return {
        "batch_size": best,
        "samples_per_s": means[best],
        "start_samples_per_s": start[best],
        "end_samples_per_s": end.get(best),
    }


def combined(model_samples_per_s: float, front_end_per_s: float) -> float:
    """What one core can do when every request costs front-end time plus model time."""
    return 1 / (1 / model_samples_per_s + 1 / front_end_per_s)


def limits(
    model: dict[str, Any], echo_runs: list[dict[str, Any]], protocols: list[str]
) -> dict[str, dict[str, Any]]:
    """Per protocol: the front-end limit (best echo req/s, at its concurrency), the model's
    limit and the combined limit. None where no echo run of that protocol succeeded."""
    result: dict[str, dict[str, Any]] = {}
    for protocol in protocols:
        rows = [r for r in echo_runs if r["protocol"] == protocol and r["requests"]]
        best = max(rows, key=lambda r: r["requests_per_s"]) if rows else None
        front = None if best is None else best["requests_per_s"]
        result[protocol] = {
            "model_samples_per_s": model["samples_per_s"],
            "model_batch_size": model["batch_size"],
            "echo_requests_per_s": front,
            "echo_concurrency": None if best is None else best["concurrency"],
            # Below SATURATED_PCT the load generator gave out first: the limit is a lower bound;
            # 1e6 / CPU us per request is what the echo's core could do if fed fast enough.
            "echo_saturated": None if best is None else best["server_cpu_pct"] >= SATURATED_PCT,
            "echo_cpu_capacity_per_s": (
                None
                if best is None or not best["server_cpu_us_per_request"]
                else 1e6 / best["server_cpu_us_per_request"]
            ),
            "combined_samples_per_s": (
                None if front is None else combined(model["samples_per_s"], front)
            ),
        }
    return result


def ratio(value: float | None, reference: float | None) -> float | None:
    return None if value is None or not reference else value / reference


def annotate(runs: list[dict[str, Any]], limit_by_protocol: dict[str, dict[str, Any]]) -> None:
    """Add each row's ratios to the limits of its protocol, and its flags."""
    for run in runs:
        limit = limit_by_protocol.get(run["protocol"], {})
        run["vs_limits"] = {
            "combined_ratio": ratio(run["samples_per_s"], limit.get("combined_samples_per_s")),
            "model_ratio": ratio(run["samples_per_s"], limit.get("model_samples_per_s")),
            "echo_ratio": ratio(run["requests_per_s"], limit.get("echo_requests_per_s")),
        }
        run["flagged"] = bool(
            run["errors"]
            or run["warmup_errors"]
            or not run["requests"]
            or any(repeat["errors"] for repeat in run.get("repeats", ()))
        )
        run["client_bound"] = run["client_cpu_pct"] >= CLIENT_BOUND_PCT
        run["noisy"] = is_noisy(run)


def latency_targets(
    runs: list[dict[str, Any]],
    echo_runs: list[dict[str, Any]],
    baseline: dict[str, Any],
    beside: dict[str, list[dict[str, Any]]] | None = None,
) -> list[dict[str, Any]]:
    """At concurrency 1, per protocol: gateway p50 <= echo p50 + ORT batch-1 p50 + slack; and
    the same with ORT's batch-1 p50 with its memory in huge pages, as the gateway loads it
    (the stricter target, where the kernel could collapse it).

    ORT's batch-1 p50 is that of the runs measured beside the protocol's concurrency-1 rows
    (`beside`, one a round: their median, and each repeat judged against its own round's),
    else, in runs that have none, the baseline's at the run's start."""
    checks = []
    for run in runs:
        if run["concurrency"] != 1:
            continue
        echo = _alone(echo_runs, run["protocol"])
        rounds = (beside or {}).get(run["protocol"]) or []
        if rounds:
            source = "beside the rows"
            stock_p50s = [r["p50_ms"] for r in rounds]
            huge_p50s = [r["huge_pages_p50_ms"] for r in rounds]
        else:  # one figure for every round
            source = "the run's start"
            huge = (baseline.get("huge_pages") or {}).get("batch1")
            stock_p50s = [baseline["batch1"]["latency_ms"]["p50"]]
            huge_p50s = [None if huge is None else huge["latency_ms"]["p50"]]
        stock = _target(run, echo, stock_p50s)
        strict = _target(run, echo, huge_p50s)
        checks.append(
            {
                "protocol": run["protocol"],
                "gateway_p50_ms": run["latency_ms"]["p50"],
                "echo_p50_ms": None if echo is None else echo["latency_ms"]["p50"],
                "ort_batch1_p50_ms": stock["ort_p50"],
                "ort_batch1_measured": source,
                "ort_batch1_rounds": len(rounds) or None,
                "slack_ms": LATENCY_SLACK_MS,
                "target_ms": stock["target"],
                "met": stock["met"],
                "repeats": stock["repeats"],
                "repeats_met": stock["repeats_met"],
                "ort_batch1_huge_pages_p50_ms": strict["ort_p50"],
                "target_huge_pages_ms": strict["target"],
                "met_huge_pages": strict["met"],
                "repeats_met_huge_pages": strict["repeats_met"],
            }
        )
    return checks


def _target(
    run: dict[str, Any], echo: dict[str, Any] | None, ort_p50s: list[float | None]
) -> dict[str, Any]:
    """One latency target: echo p50 + ORT's batch-1 p50 (the median of `ort_p50s`, one a
    round, or one for every round) + slack, whether the row met it, and in how many repeats,
    each against its own round's ORT figure. None where a figure is missing."""
    present = [p50 for p50 in ort_p50s if p50 is not None]
    if not present:
        return {"ort_p50": None, "target": None, "met": None, "repeats": None, "repeats_met": None}
    ort_p50 = statistics.median(present)
    p50 = run["latency_ms"]["p50"]
    target = None if echo is None else echo["latency_ms"]["p50"] + ort_p50 + LATENCY_SLACK_MS
    allowances = [None if v is None else v + LATENCY_SLACK_MS for v in ort_p50s]
    return {
        "ort_p50": ort_p50,
        "target": target,
        "met": None if target is None or p50 is None else p50 <= target,
        **repeats_met(run, echo, allowances[0] if len(allowances) == 1 else allowances),
    }


def repeats_met(
    run: dict[str, Any] | None,
    reference: dict[str, Any] | None,
    allowance_ms: float | Sequence[float | None],
) -> dict[str, int | None]:
    """With --repeat: in how many of the repeats was the row's p50 at most its reference's
    p50 + allowance, each repeat against the reference's repeat of the same round (a verdict
    that one quiet or busy window cannot swing). The allowance is one for every round, or one
    a round (a round without one, or of a different count, is not counted). Only rounds where
    both have a p50 count; None for both figures when there is nothing to count."""
    ours, theirs = (run or {}).get("repeats") or [], (reference or {}).get("repeats") or []
    if isinstance(allowance_ms, int | float):
        allowances: Sequence[float | None] = [allowance_ms] * len(ours)
    else:
        allowances = allowance_ms
    same = len(ours) == len(theirs) == len(allowances)
    rounds = zip(ours, theirs, allowances, strict=True) if same else iter(())
    pairs = [
        (a["p50_ms"], b["p50_ms"] + allowance)
        for a, b, allowance in rounds
        if a["p50_ms"] is not None and b["p50_ms"] is not None and allowance is not None
    ]
    met = sum(p50 <= limit for p50, limit in pairs)
    return {"repeats": len(pairs) or None, "repeats_met": met if pairs else None}


def minimal_checks(
    runs: list[dict[str, Any]], minimal_runs: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Per protocol, against the minimal server on the gateway's own stack (the model inline,
    no batching): at concurrency 1, gateway p50 <= minimal p50 + slack (what the gateway adds
    to a lone request beyond what any server pays to run the model behind that front end);
    and the best samples/s of each (what batching buys)."""
    checks = []
    for protocol in dict.fromkeys(r["protocol"] for r in minimal_runs):
        gateway = [r for r in runs if r["protocol"] == protocol and r["requests"]]
        minimal = [r for r in minimal_runs if r["protocol"] == protocol and r["requests"]]
        if not (gateway and minimal):
            continue
        alone, minimal_alone = _alone(gateway, protocol), _alone(minimal, protocol)
        p50 = None if alone is None else alone["latency_ms"]["p50"]
        minimal_p50 = None if minimal_alone is None else minimal_alone["latency_ms"]["p50"]
        target = None if minimal_p50 is None else minimal_p50 + LATENCY_SLACK_MS
        best = max(gateway, key=lambda r: r["samples_per_s"])
        minimal_best = max(minimal, key=lambda r: r["samples_per_s"])
        checks.append(
            {
                "protocol": protocol,
                "gateway_p50_ms": p50,
                "minimal_p50_ms": minimal_p50,
                "slack_ms": LATENCY_SLACK_MS,
                "target_ms": target,
                "met": None if target is None or p50 is None else p50 <= target,
                **repeats_met(alone, minimal_alone, LATENCY_SLACK_MS),
                "gateway_best_samples_per_s": best["samples_per_s"],
                "gateway_best_concurrency": best["concurrency"],
                "minimal_best_samples_per_s": minimal_best["samples_per_s"],
                "minimal_best_concurrency": minimal_best["concurrency"],
                "batching_gain": ratio(best["samples_per_s"], minimal_best["samples_per_s"]),
            }
        )
    return checks


def _alone(runs: list[dict[str, Any]], protocol: str) -> dict[str, Any] | None:
    """The protocol's row at concurrency 1, if measured."""
    return next((r for r in runs if r["protocol"] == protocol and r["concurrency"] == 1), None)

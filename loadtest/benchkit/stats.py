"""Triton's statistics extension read around a window: mean executed batch size, queue, compute."""

from __future__ import annotations

from typing import Any

StatsDocument = dict[str, Any]


async def read_stats(session: Any, url: str) -> StatsDocument | str:
    """`GET .../stats` as JSON, or why it could not be read (e.g. 'HTTP 501')."""
    try:
        async with session.get(url) as answer:
            if answer.status != 200:
                return f"HTTP {answer.status}"
            document: StatsDocument = await answer.json(content_type=None)
            return document
    except Exception as exc:  # any failure only makes the batch size unknown
        return f"{type(exc).__name__}: {exc}"[:200]


def _totals(document: StatsDocument, model: str) -> dict[str, int]:
    """Counters summed over the model's versions (a label or weights may spread requests)."""
    totals = dict.fromkeys(
        ("inference_count", "execution_count", "success_count", "queue_ns", "compute_infer_ns"), 0
    )
    for entry in document.get("model_stats", []):
        if entry.get("name") != model:
            continue
        stats = entry.get("inference_stats", {})
        totals["inference_count"] += int(entry.get("inference_count", 0))
        totals["execution_count"] += int(entry.get("execution_count", 0))
        totals["success_count"] += int(stats.get("success", {}).get("count", 0))
        totals["queue_ns"] += int(stats.get("queue", {}).get("ns", 0))
        totals["compute_infer_ns"] += int(stats.get("compute_infer", {}).get("ns", 0))
    return totals


def stats_delta(
    before: StatsDocument | str, after: StatsDocument | str, model: str
) -> dict[str, Any]:
    """What the server did in the window: mean batch size = rows / executions, None if unknown.

    `queue_ms` and `compute_infer_ms` are per successful request, as Triton counts them (a
    request is charged its whole batch's compute time).
    """
    unknown: dict[str, Any] = {
        "mean_batch_size": None,
        "executions": None,
        "queue_ms": None,
        "compute_infer_ms": None,
    }
    if isinstance(before, str) or isinstance(after, str):
        return {**unknown, "status": before if isinstance(before, str) else after}
    first, last = _totals(before, model), _totals(after, model)
    delta = {k: last[k] - first[k] for k in first}
    executions, requests = delta["execution_count"], delta["success_count"]
    return {
        "status": "ok" if executions > 0 else "no executions counted",
        "mean_batch_size": delta["inference_count"] / executions if executions > 0 else None,
        "executions": executions,
        "queue_ms": delta["queue_ns"] / requests / 1e6 if requests > 0 else None,
        "compute_infer_ms": delta["compute_infer_ns"] / requests / 1e6 if requests > 0 else None,
    }

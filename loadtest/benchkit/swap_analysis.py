"""Figures of a hot-swap run: latency, errors and server CPU per kind of phase, and the swaps."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from .measure import CLIENT_BOUND_PCT, NOISY_PCT, latency_ms
from .swap import STEADY, SWAP

P99_RATIO_TARGET = 1.2
"""p99 under swaps over p99 in steady state, at most."""

Arrays = dict[str, npt.NDArray[Any]]


def request_arrays(requests: dict[str, list[Any]]) -> Arrays:
    """Per-request columns: start, done (s since the warm-up started), latency (s), ok."""
    start = np.asarray(requests["start"], dtype=np.float64)
    done = np.asarray(requests["done"], dtype=np.float64)
    return {"start": start, "done": done, "latency": done - start, "ok": np.asarray(requests["ok"])}


def in_windows(done: npt.NDArray[Any], windows: list[dict[str, Any]]) -> npt.NDArray[np.bool_]:
    """Requests answered inside any of the windows (each [start, end))."""
    mask = np.zeros(done.shape, dtype=bool)
    for window in windows:
        mask |= (done >= window["start"]) & (done < window["end"])
    return mask


def _weighted(windows: list[dict[str, Any]], key: str) -> float | None:
    seconds = sum(w["end"] - w["start"] for w in windows)
    if not seconds:
        return None
    return float(sum(w[key] * (w["end"] - w["start"]) for w in windows) / seconds)


def _with_steal(windows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{**w, "other_and_steal_pct": w["other_cpu_pct"] + w["steal_pct"]} for w in windows]


def summarise(
    windows: list[dict[str, Any]], arrays: Arrays, counted: Sequence[str] = ("swaps",)
) -> dict[str, Any]:
    """Latency, errors and CPU over a set of windows, as one measurement; the windows'
    `counted` figures (the swaps done in them) are summed."""
    windows = _with_steal(windows)
    mask = in_windows(arrays["done"], windows)
    good = mask & arrays["ok"]
    seconds = sum(w["end"] - w["start"] for w in windows)
    requests = int(good.sum())
    server_cpu_s = sum(w["server_cpu_s"] for w in windows)
    return {
        "windows": len(windows),
        "seconds": seconds,
        "requests": requests,
        "requests_per_s": requests / seconds if seconds else None,
        "latency_ms": latency_ms(arrays["latency"][good].tolist()),
        "errors": int((mask & ~arrays["ok"]).sum()),
        **{key: sum(w[key] for w in windows) for key in counted},
        "server_cpu_s": server_cpu_s,
        "server_cpu_pct": 100 * server_cpu_s / seconds if seconds else None,
        "server_cpu_us_per_request": 1e6 * server_cpu_s / requests if requests else None,
        "client_cpu_pct": _weighted(windows, "client_cpu_pct"),
        "other_cpu_pct": _weighted(windows, "other_cpu_pct"),
        "other_and_steal_pct": _weighted(windows, "other_and_steal_pct"),
        "steal_pct": _weighted(windows, "steal_pct"),
    }


def ratio(over: float | None, under: float | None) -> float | None:
    return None if over is None or not under else over / under


def swap_figures(swaps: list[dict[str, Any]]) -> dict[str, Any]:
    """How many swaps, how long they took, and what the server answered."""
    done = [s for s in swaps if s["ok"]]
    durations = np.asarray([s["end"] - s["start"] for s in done]) * 1e3
    statuses: dict[str, int] = {}
    for swap in swaps:
        statuses[str(swap["status"])] = statuses.get(str(swap["status"]), 0) + 1
    failed = [s for s in swaps if not s["ok"]]
    return {
        "calls": len(swaps),
        "done": len(done),
        "failed": len(failed),
        "statuses": statuses,
        "duration_ms": {
            "min": float(durations.min()) if done else None,
            "p50": float(np.percentile(durations, 50)) if done else None,
            "mean": float(durations.mean()) if done else None,
            "max": float(durations.max()) if done else None,
        },
        "first_answer": done[0]["answer"] if done else None,
        "failures": [{k: s[k] for k in ("start", "status", "answer")} for s in failed[:5]],
    }


def during_swaps(swaps: list[dict[str, Any]], arrays: Arrays) -> dict[str, Any]:
    """Model A's latency while a swap call was under way, and the swap with the slowest request."""
    done, ok, latency = arrays["done"], arrays["ok"], arrays["latency"]
    inside = in_windows(done, swaps) & ok
    worst: dict[str, Any] = {"max_ms": None}
    for number, swap in enumerate(swaps, 1):
        chosen = latency[in_windows(done, [swap]) & ok]
        if chosen.size and (worst["max_ms"] is None or chosen.max() * 1e3 > worst["max_ms"]):
            worst = {"swap": number, "at_s": swap["start"], "max_ms": float(chosen.max() * 1e3)}
    return {
        "requests": int(inside.sum()),
        "latency_ms": latency_ms(latency[inside].tolist()),
        "worst": worst,
    }


def analyse(results: dict[str, Any], arrays: Arrays) -> None:
    """Per kind of phase, per window, the ratios, the swaps and the targets (also on render)."""
    phases = results["phases"]
    by_kind = {
        kind: summarise([p for p in phases if p["kind"] == kind], arrays) for kind in (STEADY, SWAP)
    }
    results["summary"] = by_kind
    for phase in phases:
        phase["figures"] = summarise([phase], arrays)
    steady, swap = by_kind[STEADY], by_kind[SWAP]
    results["ratios"] = {
        key: ratio(swap["latency_ms"][key], steady["latency_ms"][key])
        for key in ("p50", "p90", "p99", "max")
    }
    results["ratios"]["server_cpu_us_per_request"] = ratio(
        swap["server_cpu_us_per_request"], steady["server_cpu_us_per_request"]
    )
    results["swap_figures"] = swap_figures(results["swaps"])
    results["swap_figures"]["model_during_swaps"] = during_swaps(results["swaps"], arrays)
    busy_s = sum(s["end"] - s["start"] for s in results["swaps"])
    results["swap_figures"]["busy_pct"] = (
        100 * busy_s / swap["seconds"] if swap["seconds"] else None
    )
    measured = in_windows(arrays["done"], phases)
    outside_errors = int((~measured & ~arrays["ok"]).sum())
    errors = steady["errors"] + swap["errors"]
    p99_ratio = results["ratios"]["p99"]
    results["targets"] = {
        "p99_ratio": {
            "value": p99_ratio,
            "target": P99_RATIO_TARGET,
            "met": None if p99_ratio is None else p99_ratio <= P99_RATIO_TARGET,
        },
        "errors": {"value": errors, "outside_windows": outside_errors, "met": errors == 0},
        "swaps": {
            "value": results["swap_figures"]["done"],
            "met": results["swap_figures"]["done"] > 0 and not results["swap_figures"]["failed"],
        },
    }
    results["flags"] = {
        "noisy": [
            i for i, p in enumerate(phases) if p["other_cpu_pct"] + p["steal_pct"] >= NOISY_PCT
        ],
        "client_bound": [
            i for i, p in enumerate(phases) if p["client_cpu_pct"] >= CLIENT_BOUND_PCT
        ],
    }


def exit_status(results: dict[str, Any]) -> int:
    """1 when a request failed or a swap failed or none was done; a missed ratio is a finding."""
    targets = results["targets"]
    failed = targets["errors"]["value"] or targets["errors"]["outside_windows"]
    return 1 if failed or not targets["swaps"]["met"] else 0

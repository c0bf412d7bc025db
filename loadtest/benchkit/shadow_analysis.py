"""Figures of a shadow run: latency, errors and server CPU with and without the shadow, the
shadow comparisons, and what the overload refused and dropped, in which order."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import numpy.typing as npt

from .measure import CLIENT_BOUND_PCT, NOISY_PCT, latency_ms
from .shadow import OUTCOMES, PLAIN, SHADOW
from .swap_analysis import Arrays, in_windows, ratio, request_arrays, summarise

P99_RATIO_TARGET = 1.1
"""Primary p99 with a 100 % shadow over p99 without, at most."""


def shadow_arrays(requests: dict[str, Any]) -> Arrays:
    """Per-request columns: start (when due), sent, done (s since the run started), latency
    (from when due), ok, refused."""
    arrays = request_arrays({k: requests[k] for k in ("start", "done", "ok")})
    arrays["sent"] = np.asarray(requests["sent"], dtype=np.float64)
    arrays["refused"] = np.asarray(requests["refused"], dtype=bool)
    return arrays


def _counts(windows: list[dict[str, Any]]) -> dict[str, int]:
    return {key: sum(w["comparisons"][key] for w in windows) for key in OUTCOMES}


def agreement(counts: dict[str, int]) -> float | None:
    compared = counts["agree"] + counts["disagree"]
    return counts["agree"] / compared if compared else None


def window_figures(windows: list[dict[str, Any]], arrays: Arrays) -> dict[str, Any]:
    """swap_analysis's figures over the windows, plus the open loop's own: the rate offered,
    latency from when each request was really sent, how late the generator sent, refusals, and
    the shadow copies counted by the gateway in the windows."""
    figures = summarise(windows, arrays, counted=())
    done, ok = arrays["done"], arrays["ok"]
    mask = in_windows(done, windows)
    good = mask & ok
    seconds = figures["seconds"]
    due = int(in_windows(arrays["start"], windows).sum())
    figures["offered_per_s"] = due / seconds if seconds else None
    figures["service_latency_ms"] = latency_ms((done - arrays["sent"])[good].tolist())
    figures["send_lag_ms"] = latency_ms((arrays["sent"] - arrays["start"])[mask].tolist())
    figures["refused"] = int((mask & arrays["refused"]).sum())
    figures["comparisons"] = _counts(windows)
    copies = sum(figures["comparisons"].values())
    figures["copies_per_request"] = copies / figures["requests"] if figures["requests"] else None
    return figures


def _first(times: npt.NDArray[Any]) -> float | None:
    return float(times.min()) if times.size else None


def overload_figures(results: dict[str, Any], arrays: Arrays) -> dict[str, Any]:
    """What the overload answered, refused and dropped, and whether shadows went first.

    The traffic samples give the pair's counters at moments between each GET's `sent` and
    `at`; a counter that grew between samples k-1 and k grew in (sent[k-1], at[k]]. A refusal
    happened in [start, done] of the refused request. So the first drop provably came first
    when it was observed (at[k]) before the first refused request was sent, and provably
    after when the first refusal was answered before sample k-1 was asked."""
    over = results["overload"]
    window = [{"start": over["start"], "end": over["end"]}]
    done, ok, refused = arrays["done"], arrays["ok"], arrays["refused"]
    mask = in_windows(done, window)
    seconds = over["end"] - over["start"]
    samples = [s for s in over["samples"] if "failed" not in s]
    base = [s for s in samples if s["at"] <= over["start"]]
    baseline = base[-1] if base else (samples[0] if samples else None)
    last = samples[-1] if samples else None
    copies = (
        {key: last[key] - baseline[key] for key in OUTCOMES}
        if last and baseline
        else dict.fromkeys(OUTCOMES, 0)
    )
    first_drop = None
    intervals = []
    for previous, sample in itertools.pairwise(samples):
        grown = {key: sample[key] - previous[key] for key in OUTCOMES}
        lo, hi = previous["sent"], sample["at"]
        inside = (done > previous["at"]) & (done <= sample["at"])
        intervals.append(
            {
                "from": previous["at"],
                "to": sample["at"],
                "ok": int((inside & ok).sum()),
                "refused": int((inside & refused).sum()),
                "completed": grown["agree"] + grown["disagree"] + grown["error"],
                **grown,
            }
        )
        if first_drop is None and grown["dropped"] > 0:
            first_drop = {"after": lo, "by": hi, "count": grown["dropped"]}
    refused_starts, refused_dones = arrays["start"][refused], done[refused]
    first_refusal = None
    if refused_dones.size:
        first = int(np.argmin(refused_dones))
        first_refusal = {
            "sent": float(refused_starts[first]),
            "answered": float(refused_dones[first]),
        }
    if first_refusal is None:
        order = "no primary request was refused"
        met: bool | None = True
    elif first_drop is None:
        order = "primary requests were refused and no shadow copy was dropped"
        met = False
    elif first_drop["by"] < first_refusal["sent"]:
        order = "shadow copies were dropped before the first primary request was refused"
        met = True
    elif first_refusal["answered"] < first_drop["after"]:
        order = "a primary request was refused before any shadow copy was dropped"
        met = False
    else:
        order = "the first drop and the first refusal fall in the same sampling interval"
        met = None
    with_refusals = [i for i in intervals if i["refused"]]
    running = [i for i in with_refusals if i["completed"]]
    offered = copies["agree"] + copies["disagree"] + copies["error"] + copies["dropped"]
    good = mask & ok
    return {
        "seconds": seconds,
        "concurrency": results["settings"]["overload_concurrency"],
        "requests": int(mask.sum()),
        "answered": int(good.sum()),
        "answered_per_s": int(good.sum()) / seconds if seconds else None,
        "refused": int((mask & refused).sum()),
        "refused_per_s": int((mask & refused).sum()) / seconds if seconds else None,
        "refused_share": float((mask & refused).sum() / mask.sum()) if mask.any() else None,
        "other_errors": int((mask & ~ok & ~refused).sum()),
        "latency_ms": latency_ms(arrays["latency"][good].tolist()),
        "refused_latency_ms": latency_ms(arrays["latency"][mask & refused].tolist()),
        "server_cpu_pct": over["server_cpu_pct"],
        "client_cpu_pct": over["client_cpu_pct"],
        "other_and_steal_pct": over["other_cpu_pct"] + over["steal_pct"],
        "copies": copies,
        "dropped_share": copies["dropped"] / offered if offered else None,
        "first_refusal": first_refusal,
        "first_drop": first_drop,
        "first_refusal_after_start_s": (
            first_refusal["answered"] - over["start"] if first_refusal else None
        ),
        "first_drop_after_start_s": first_drop["by"] - over["start"] if first_drop else None,
        "order": order,
        "order_met": met,
        "intervals": intervals,
        "intervals_with_refusals": len(with_refusals),
        "intervals_with_refusals_and_completions": len(running),
        "refused_while_copies_completed": sum(i["refused"] for i in running),
        "copies_completed_while_refusing": sum(i["completed"] for i in running),
        "intervals_with_refusals_and_drops": sum(1 for i in with_refusals if i["dropped"]),
        "sample_errors": len(over["samples"]) - len(samples),
        "sample_latency_ms": latency_ms([s["at"] - s["sent"] for s in samples]),
    }


def analyse(results: dict[str, Any], arrays: Arrays, over_arrays: Arrays) -> None:
    """Per kind of phase, per window, the ratios, the comparisons, the overload and the
    targets (also on render)."""
    phases = results["phases"]
    by_kind = {
        kind: window_figures([p for p in phases if p["kind"] == kind], arrays)
        for kind in (PLAIN, SHADOW)
    }
    results["summary"] = by_kind
    for phase in phases:
        phase["figures"] = window_figures([phase], arrays)
    plain, shadow = by_kind[PLAIN], by_kind[SHADOW]
    ratios = {
        key: ratio(shadow["latency_ms"][key], plain["latency_ms"][key])
        for key in ("p50", "p90", "p99", "max")
    }
    ratios["service_p99"] = ratio(
        shadow["service_latency_ms"]["p99"], plain["service_latency_ms"]["p99"]
    )
    ratios["server_cpu_us_per_request"] = ratio(
        shadow["server_cpu_us_per_request"], plain["server_cpu_us_per_request"]
    )
    results["ratios"] = ratios
    total = results["comparisons_after_phases"]
    results["agreement"] = agreement(total)
    results["overload_figures"] = overload = overload_figures(results, over_arrays)
    measured = in_windows(arrays["done"], phases)
    outside = int((~measured & ~arrays["ok"]).sum())
    errors = plain["errors"] + shadow["errors"]
    compared = total["agree"] + total["disagree"]
    results["targets"] = {
        "p99_ratio": {
            "value": ratios["p99"],
            "target": P99_RATIO_TARGET,
            "met": None if ratios["p99"] is None else ratios["p99"] <= P99_RATIO_TARGET,
        },
        "errors": {"value": errors, "outside_windows": outside, "met": errors == 0},
        "agreement": {
            "value": results["agreement"],
            "compared": compared,
            "met": compared > 0 and not total["disagree"] and not total["error"],
        },
        "overload_dropped": {
            "value": overload["copies"]["dropped"],
            "met": overload["copies"]["dropped"] > 0,
        },
        "overload_order": {"value": overload["order"], "met": overload["order_met"]},
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
    """1 when a request failed in the moderate load, a shadow copy disagreed or failed, or the
    overload dropped no shadow copy (it did not overload); a missed ratio is a finding."""
    targets = results["targets"]
    failed = targets["errors"]["value"] or targets["errors"]["outside_windows"]
    if failed or not targets["agreement"]["met"] or not targets["overload_dropped"]["met"]:
        return 1
    return 0

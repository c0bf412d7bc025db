"""PNG plots of a hot-swap run: latency over time with the swaps shaded, and both phases' CDF."""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .swap import STEADY, SWAP
from .swap_analysis import Arrays, in_windows

BIN_S = 0.25
"""Width of the time bins of the p50/p99 lines in the timeline."""
MIN_BIN_REQUESTS = 20
"""Fewer requests in a bin give no percentile worth drawing (the edges of the windows)."""
COLORS = {STEADY: "tab:blue", SWAP: "tab:orange"}


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plain_log(axis: Any) -> None:
    """A log scale on `axis` (an x or y axis) with ticks at 1, 2 and 5 per decade, as numbers."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.{0 if v >= 1 else 2}f}"))
    axis.set_minor_formatter(NullFormatter())


def _binned(done: Any, latency_ms: Any, start: float, end: float) -> tuple[list[float], ...]:
    edges = np.arange(start, end + BIN_S, BIN_S)
    centres, p50, p99 = [], [], []
    for left, right in itertools.pairwise(edges):
        chosen = latency_ms[(done >= left) & (done < right)]
        if chosen.size >= MIN_BIN_REQUESTS:
            centres.append(float(left + right) / 2)
            p50.append(float(np.percentile(chosen, 50)))
            p99.append(float(np.percentile(chosen, 99)))
    return centres, p50, p99


def timeline_plot(
    results: dict[str, Any],
    arrays: Arrays,
    path: Path,
    shaded: str = SWAP,
    title: str | None = None,
) -> None:
    """Every request's latency against when it was answered; the `shaded` phases (and swap
    calls, if any) shaded."""
    plt = _pyplot()
    phases = results["phases"]
    done, ok = arrays["done"], arrays["ok"]
    latency_ms = arrays["latency"] * 1e3
    figure, axis = plt.subplots(figsize=(13, 5.5))
    for phase in phases:
        if phase["kind"] == shaded:
            axis.axvspan(phase["start"], phase["end"], color="tab:orange", alpha=0.12, lw=0)
    for i, swap in enumerate(results.get("swaps", [])):
        axis.axvspan(
            swap["start"],
            swap["end"],
            color="tab:orange" if swap["ok"] else "tab:red",
            alpha=0.18,
            lw=0,
            label="a swap call (reload of the other model)" if i == 0 else None,
        )
    for i, swap in enumerate(s for s in results.get("swaps", []) if s["ok"]):
        axis.axvline(
            swap["end"],
            color="tab:brown",
            lw=0.8,
            ls=":",
            label="a swap answered (new copy serving)" if i == 0 else None,
        )
    measured = in_windows(done, phases)
    good = ok & measured
    axis.scatter(
        done[good], latency_ms[good], s=1.5, color="tab:gray", alpha=0.35, lw=0, label="a request"
    )
    warmup = ok & ~measured
    axis.scatter(done[warmup], latency_ms[warmup], s=1.5, color="silver", alpha=0.3, lw=0)
    start, end = (phases[0]["start"], phases[-1]["end"]) if phases else (0.0, 1.0)
    centres, p50, p99 = _binned(done[good], latency_ms[good], start, end)
    axis.plot(centres, p50, color="tab:blue", lw=1.4, label=f"p50 per {BIN_S:g} s")
    axis.plot(centres, p99, color="tab:red", lw=1.4, label=f"p99 per {BIN_S:g} s")
    if (~ok).any():
        top = float(latency_ms.max()) if latency_ms.size else 1.0
        axis.scatter(
            done[~ok], np.full(int((~ok).sum()), top), marker="x", color="red", label="error"
        )
    for phase in phases:
        axis.axvline(phase["start"], color="black", lw=0.6, alpha=0.4)
        axis.text(
            phase["start"] + 0.1,
            1.0,
            phase["kind"],
            transform=axis.get_xaxis_transform(),
            va="bottom",
            fontsize=8,
        )
    axis.set_yscale("log")
    _plain_log(axis.yaxis)
    axis.set_xlabel("seconds since the warm-up started (answer time)")
    axis.set_ylabel("latency, ms (log)")
    if title is None:
        settings = results["settings"]
        title = (
            f"{settings['model']} ({settings['protocol']}, {settings['concurrency']} in flight) "
            f"while {settings['swap_model']} is reloaded in the shaded phases"
        )
    axis.set_title(title, pad=16)
    axis.grid(True, which="major", alpha=0.3)
    axis.legend(fontsize=8, loc="upper left", markerscale=4)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def cdf_plot(
    results: dict[str, Any],
    arrays: Arrays,
    path: Path,
    kinds: Sequence[str] = (STEADY, SWAP),
    colors: Mapping[str, str] = COLORS,
) -> None:
    """Latency CDF of each kind of phase, and the tail (share slower than x) on a log scale."""
    plt = _pyplot()
    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))
    latency_ms = arrays["latency"] * 1e3
    for kind in kinds:
        windows = [p for p in results["phases"] if p["kind"] == kind]
        chosen = np.sort(latency_ms[in_windows(arrays["done"], windows) & arrays["ok"]])
        if not chosen.size:
            continue
        share = np.arange(1, chosen.size + 1) / chosen.size
        p99 = results["summary"][kind]["latency_ms"]["p99"]
        label = f"{kind} ({chosen.size:,} requests, p99 {p99:.2f} ms)"
        left.plot(chosen, share, color=colors[kind], lw=1.6, label=label)
        right.plot(chosen, 1 - share + 1 / chosen.size, color=colors[kind], lw=1.6, label=label)
    for axis in (left, right):
        axis.set_xscale("log")
        _plain_log(axis.xaxis)
        axis.set_xlabel("latency, ms (log)")
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize=8)
    left.set_ylabel("share of requests at most this slow")
    left.set_title("CDF")
    right.set_yscale("log")
    right.axhline(0.01, color="black", lw=0.8, ls=":")
    right.set_ylabel("share of requests slower (log)")
    right.set_title("tail (dotted: p99)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def draw(results: dict[str, Any], arrays: Arrays, out_dir: Path) -> list[str]:
    """Both plots into `out_dir`; their file names (none when matplotlib is missing)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return []
    timeline_plot(results, arrays, out_dir / "timeline.png")
    cdf_plot(results, arrays, out_dir / "cdf.png")
    return ["timeline.png", "cdf.png"]

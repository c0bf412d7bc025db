"""PNG plots of a shadow run: the latency CDF and timeline of the plain and shadow phases (the
hot-swap run's plots), and the overload: answers, refusals, shadow copies run and dropped."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .shadow import PLAIN, SHADOW
from .swap_analysis import Arrays
from .swap_plots import _pyplot, cdf_plot, timeline_plot

COLORS = {PLAIN: "tab:blue", SHADOW: "tab:orange"}
BIN_S = 0.2
"""Width of the overload plot's bins of requests answered and refused."""


def overload_plot(results: dict[str, Any], arrays: Arrays, path: Path) -> None:
    """Per BIN_S: primary requests answered and refused (top); shadow copies completed and
    dropped between traffic samples, as rates (bottom); workers in the loop as a line."""
    plt = _pyplot()
    over, figures = results["overload"], results["overload_figures"]
    start = over["start"]
    done, ok, refused = arrays["done"] - start, arrays["ok"], arrays["refused"]
    last = max(float(done.max()) if done.size else 0.0, over["stopped"] - start)
    edges = np.arange(-1.0, last + BIN_S, BIN_S)
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(12, 7), sharex=True)
    answered, _ = np.histogram(done[ok], edges)
    refusals, _ = np.histogram(done[refused], edges)
    centres = (edges[:-1] + edges[1:]) / 2
    top.step(centres, answered / BIN_S, where="mid", color="tab:blue", label="primary answered")
    top.step(centres, refusals / BIN_S, where="mid", color="tab:red", label="primary refused (429)")
    top.set_ylabel("requests/s")
    intervals = figures["intervals"]
    if intervals:
        middle = [(i["from"] + i["to"]) / 2 - start for i in intervals]
        width = [max(i["to"] - i["from"], 1e-3) for i in intervals]
        completed = [i["completed"] / w for i, w in zip(intervals, width, strict=True)]
        dropped = [i["dropped"] / w for i, w in zip(intervals, width, strict=True)]
        bottom.step(middle, completed, where="mid", color="tab:green", label="shadow copies run")
        bottom.step(middle, dropped, where="mid", color="tab:purple", label="shadow copies dropped")
    bottom.set_ylabel("copies/s (between traffic samples)")
    ramp = np.asarray(over["ramp"]) - start
    workers = np.arange(1, ramp.size + 1)
    for axis in (top, bottom):
        twin = axis.twinx()
        twin.plot(
            np.concatenate([[edges[0]], ramp, [over["stopped"] - start]]),
            np.concatenate([[0], workers, [workers[-1] if workers.size else 0]]),
            color="gray",
            lw=0.8,
            ls=":",
            drawstyle="steps-post",
        )
        twin.set_ylabel("closed-loop workers (dotted)", color="gray", fontsize=8)
        axis.axvline(0, color="black", lw=0.6, alpha=0.4)
        axis.axvline(over["end"] - start, color="black", lw=0.6, alpha=0.4)
        for moment, color in (
            ((figures["first_refusal"] or {}).get("answered"), "tab:red"),
            ((figures["first_drop"] or {}).get("by"), "tab:purple"),
        ):
            if moment is not None:
                axis.axvline(moment - start, color=color, lw=0.8, ls="--")
        axis.grid(True, alpha=0.3)
        axis.legend(fontsize=8, loc="upper left")
    bottom.set_xlabel(
        "seconds since the overload started (dashed: first refusal answered, first drop seen)"
    )
    top.set_title(
        f"overload: {figures['concurrency']} closed-loop workers, 100 % shadow, primary line "
        f"of {results['settings']['queue_size']}"
    )
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def draw(results: dict[str, Any], arrays: Arrays, over_arrays: Arrays, out_dir: Path) -> list[str]:
    """The plots into `out_dir`; their file names (none when matplotlib is missing)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return []
    settings = results["settings"]
    cdf_plot(results, arrays, out_dir / "cdf.png", kinds=(PLAIN, SHADOW), colors=COLORS)
    title = (
        f"{settings['model']} version {settings['primary']} ({settings['protocol']}, open loop at "
        f"{results['rate']['used_per_s']:,.0f} req/s); version {settings['shadow']} shadows "
        "every request in the shaded phases; latency from when each request was due"
    )
    timeline_plot(results, arrays, out_dir / "timeline.png", shaded=SHADOW, title=title)
    overload_plot(results, over_arrays, out_dir / "overload.png")
    return ["cdf.png", "timeline.png", "overload.png"]

"""PNG plots of a run (matplotlib, Agg): throughput with the limits, and latency percentiles."""

from __future__ import annotations

from pathlib import Path
from typing import Any

LOG_Y_SPREAD = 15.0
"""Throughput plots use a log y axis when the largest value is this many times the smallest."""
PERCENTILES = (("p50", "o", "tab:blue"), ("p90", "s", "tab:orange"), ("p99", "^", "tab:red"))


def _series(runs: list[dict[str, Any]], protocol: str, key: str) -> tuple[list[int], list[float]]:
    rows = sorted(
        (r for r in runs if r["protocol"] == protocol and r["requests"]),
        key=lambda r: r["concurrency"],
    )
    values = [r[key] if key in r else r["latency_ms"][key] for r in rows]
    return [r["concurrency"] for r in rows], values


def _concurrency_axis(axis: Any, concurrencies: list[int]) -> None:
    axis.set_xscale("log", base=2)
    axis.set_xticks(concurrencies, [str(c) for c in concurrencies])
    axis.minorticks_off()
    axis.set_xlabel("concurrency (closed loop, batch-1 requests)")
    axis.grid(True, which="major", alpha=0.3)


def _plain_log_ticks(axis: Any) -> None:
    """Log y with ticks at 1, 2 and 5 per decade, written as plain numbers."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    axis.set_yscale("log")
    axis.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.{0 if v >= 1 else 2}f}"))
    axis.yaxis.set_minor_formatter(NullFormatter())


def _legend_below(axis: Any) -> None:
    axis.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2)


def _figure(count: int, height: float) -> tuple[Any, list[Any]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, count, figsize=(5.2 * count, height), sharey=True, squeeze=False)
    return figure, list(axes[0])


def throughput_plot(results: dict[str, Any], path: Path) -> None:
    """Per protocol: gateway samples/s, echo req/s and minimal-server samples/s (if measured)
    versus concurrency, limits as lines."""
    protocols = list(results["limits"])
    concurrencies = sorted({r["concurrency"] for r in results["runs"] + results["echo_runs"]})
    figure, axes = _figure(len(protocols), 6.2)
    values: list[float] = []
    for axis, protocol in zip(axes, protocols, strict=True):
        limit = results["limits"][protocol]
        x, y = _series(results["runs"], protocol, "samples_per_s")
        axis.plot(x, y, "o-", color="tab:blue", linewidth=2.2, label="gateway samples/s")
        ex, ey = _series(results["echo_runs"], protocol, "requests_per_s")
        axis.plot(ex, ey, "s--", color="tab:gray", linewidth=1.2, label="echo req/s")
        mx, my = _series(results.get("minimal_runs") or [], protocol, "samples_per_s")
        if mx:
            axis.plot(
                mx,
                my,
                "d-",
                color="tab:purple",
                linewidth=1.2,
                label="minimal server (no batching)",
            )
        lines = [
            ("model_samples_per_s", "black", "-", f"model limit (b{limit['model_batch_size']})"),
            (
                "echo_requests_per_s",
                "tab:green",
                ":",
                "front-end limit (best echo)"
                + (", lower bound" if limit["echo_saturated"] is False else ""),
            ),
            ("combined_samples_per_s", "tab:red", "-.", "combined limit"),
        ]
        for key, color, style, label in lines:
            if limit[key] is not None:
                axis.axhline(
                    limit[key],
                    color=color,
                    linestyle=style,
                    linewidth=1.4,
                    label=f"{label}: {limit[key]:,.0f}",
                )
                values.append(limit[key])
        values += y + ey + my
        axis.set_title(protocol)
        _concurrency_axis(axis, concurrencies)
        _legend_below(axis)
    positive = [v for v in values if v > 0]
    if positive and max(positive) / min(positive) > LOG_Y_SPREAD:
        _plain_log_ticks(axes[0])
    else:
        axes[0].set_ylim(0, 1.1 * max(positive, default=1))
    axes[0].set_ylabel("samples/s (= req/s for batch-1)")
    figure.suptitle(f"{results['settings']['model']}: throughput versus concurrency, one core")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    _close(figure)


def latency_plot(results: dict[str, Any], path: Path) -> None:
    """Per protocol: gateway p50/p90/p99 (solid) and echo p50/p99 (dashed), log y."""
    protocols = list(results["limits"])
    concurrencies = sorted({r["concurrency"] for r in results["runs"] + results["echo_runs"]})
    figure, axes = _figure(len(protocols), 5.8)
    for axis, protocol in zip(axes, protocols, strict=True):
        for key, marker, color in PERCENTILES:
            x, y = _series(results["runs"], protocol, key)
            axis.plot(x, y, marker + "-", color=color, linewidth=2, label=f"gateway {key}")
        for key, marker, color in (PERCENTILES[0], PERCENTILES[2]):
            x, y = _series(results["echo_runs"], protocol, key)
            axis.plot(
                x,
                y,
                marker + "--",
                color=color,
                alpha=0.45,
                linewidth=1.2,
                markerfacecolor="none",
                label=f"echo {key}",
            )
        _plain_log_ticks(axis)
        axis.set_title(protocol)
        _concurrency_axis(axis, concurrencies)
        _legend_below(axis)
    axes[0].set_ylabel("latency, ms (log)")
    figure.suptitle(f"{results['settings']['model']}: latency versus concurrency, client side")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    _close(figure)


def _close(figure: Any) -> None:
    import matplotlib.pyplot as plt

    plt.close(figure)


def draw(results: dict[str, Any], out_dir: Path) -> list[str]:
    """Both plots into `out_dir`; their file names (none when matplotlib is missing)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return []
    throughput_plot(results, out_dir / "throughput.png")
    latency_plot(results, out_dir / "latency.png")
    return ["throughput.png", "latency.png"]

"""The telemetry run's figures: medians per configuration, ratios, targets, report and plot."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from .measure import CLIENT_BOUND_PCT, NOISY_PCT
from .report import fmt, table

TARGET_RATIO = 0.95
"""Throughput a telemetry step may keep at least: metrics vs none, 1 % tracing vs metrics."""
COMPARISONS = (
    ("b", "a", "metrics vs none", True),
    ("c", "b", "sampled tracing vs metrics", True),
    ("d", "b", "100 % tracing vs metrics", False),
    ("d", "a", "100 % tracing vs none", False),
)
"""(config, reference, what, has a target)."""
FIGURES = ("requests_per_s", "p50", "p99", "us_per_request", "server_cpu_pct", "client_cpu_pct")


def figure(run: dict[str, Any], key: str) -> float | None:
    if key in ("p50", "p90", "p99"):
        value = run["latency_ms"][key]
    elif key == "us_per_request":
        value = run["server_cpu_us_per_request"]
    else:
        value = run[key]
    return None if value is None else float(value)


def median(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def ratio(value: float | None, reference: float | None) -> float | None:
    return None if value is None or not reference else value / reference


def analyse(results: dict[str, Any]) -> None:
    """`summary[protocol][config]`: medians over the passes; `ratios[protocol]`: each
    comparison on the medians and pass by pass; `targets`: met or missed."""
    runs = results["runs"]
    summary: dict[str, dict[str, dict[str, Any]]] = {}
    ratios: dict[str, list[dict[str, Any]]] = {}
    targets = []
    for protocol in results["settings"]["protocols"]:
        per_config: dict[str, dict[str, Any]] = {}
        for config in results["configs"]:
            key = config["key"]
            mine = [r for r in runs if r["protocol"] == protocol and r["config"] == key]
            entry: dict[str, Any] = {k: median([figure(r, k) for r in mine]) for k in FIGURES}
            entry["passes"] = len(mine)
            entry["errors"] = sum(r["errors"] + r["warmup_errors"] for r in mine)
            entry["other_pct"] = max(
                (r["other_excl_sink_pct"] + r["steal_pct"] for r in mine), default=None
            )
            entry["sink_cpu_pct"] = median([r["sink_cpu_pct"] for r in mine])
            entry["mean_batch"] = median([r["server_stats"]["mean_batch_size"] for r in mine])
            per_config[key] = entry
        summary[protocol] = per_config
        rows = []
        for key, reference, what, has_target in COMPARISONS:
            if key not in per_config or reference not in per_config:
                continue
            this, that = per_config[key], per_config[reference]
            cell = {(r["config"], r["pass"]): r for r in runs if r["protocol"] == protocol}
            by_pass = [
                ratio(cell[key, n]["requests_per_s"], cell[reference, n]["requests_per_s"])
                for n in sorted({r["pass"] for r in runs})
                if (key, n) in cell and (reference, n) in cell
            ]
            row: dict[str, Any] = {
                "config": key,
                "reference": reference,
                "what": what,
                "throughput": ratio(this["requests_per_s"], that["requests_per_s"]),
                "throughput_by_pass": by_pass,
                "p50": ratio(this["p50"], that["p50"]),
                "p99": ratio(this["p99"], that["p99"]),
                "us_per_request_delta": (
                    None
                    if this["us_per_request"] is None or that["us_per_request"] is None
                    else this["us_per_request"] - that["us_per_request"]
                ),
            }
            rows.append(row)
            if has_target:
                targets.append(
                    {
                        "protocol": protocol,
                        "what": f"{what}: throughput ({key})/({reference}) >= {TARGET_RATIO}",
                        "ratio": row["throughput"],
                        "met": None
                        if row["throughput"] is None
                        else row["throughput"] >= TARGET_RATIO,
                    }
                )
        ratios[protocol] = rows
    results["summary"] = summary
    results["ratios"] = ratios
    results["targets"] = targets


def _names(results: dict[str, Any]) -> dict[str, str]:
    return {c["key"]: f"({c['key']}) {c['name']}" for c in results["configs"]}


def _by_name(counts: dict[str, int]) -> str:
    named = ", ".join(f"{name} {count:,}" for name, count in counts.items() if count)
    return f" ({named})" if named else ""


def markdown_report(results: dict[str, Any]) -> str:
    settings, meta = results["settings"], results["meta"]
    names = _names(results)
    lines = [
        f"# Telemetry cost: {settings['model']}, batch-1, closed loop x {settings['concurrency']}",
        "",
        f"{meta['timestamp']}, git {meta['git']}, gateway code: "
        f"{meta.get('gateway_code', 'working tree')}, {meta['cpus']} CPUs, gateway on core "
        f"{settings['server_core']}, load generator and OTLP sink on core "
        f"{settings['client_core']}. Each configuration a fresh gateway; passes in "
        f"{' '.join(results['order_names'])} order; {settings['warmup']:g} s warm-up + "
        f"{settings['duration']:g} s per row; medians over {settings['passes']} passes.",
        "",
        "| config | |",
        "|---|---|",
        *[f"| {names[c['key']]} | {c['description']} |" for c in results["configs"]],
        "",
        "## Targets",
        "",
        *table(
            ["protocol", "target", "ratio", ""],
            [
                [
                    t["protocol"],
                    t["what"],
                    fmt(t["ratio"], 3),
                    {True: "met", False: "**missed**", None: "-"}[t["met"]],
                ]
                for t in results["targets"]
            ],
        ),
        "",
    ]
    for protocol, per_config in results["summary"].items():
        rows = []
        for key, entry in per_config.items():
            client = entry["client_cpu_pct"]
            bound = client is not None and client + (entry["sink_cpu_pct"] or 0) >= CLIENT_BOUND_PCT
            noisy = entry["other_pct"] is not None and entry["other_pct"] >= NOISY_PCT
            rows.append(
                [
                    names[key],
                    fmt(entry["requests_per_s"]),
                    fmt(entry["p50"], 3),
                    fmt(entry["p99"], 3),
                    fmt(entry["us_per_request"]),
                    fmt(entry["server_cpu_pct"]),
                    fmt(client) + (" *" if bound else ""),
                    fmt(entry["sink_cpu_pct"], 1),
                    fmt(entry["other_pct"]) + (" ~" if noisy else ""),
                    fmt(entry["mean_batch"], 2),
                    str(entry["errors"]) + (" !" if entry["errors"] else ""),
                ]
            )
        comparisons = [
            [
                f"{names[r['config']]} / {names[r['reference']]}",
                fmt(r["throughput"], 3),
                ", ".join(fmt(v, 3) for v in r["throughput_by_pass"]),
                fmt(r["p50"], 3),
                fmt(r["p99"], 3),
                ("+" if (r["us_per_request_delta"] or 0) >= 0 else "")
                + fmt(r["us_per_request_delta"]),
            ]
            for r in results["ratios"][protocol]
        ]
        lines += [
            f"## {protocol}",
            "",
            *table(
                [
                    "config",
                    "req/s",
                    "p50 ms",
                    "p99 ms",
                    "server CPU us/req",
                    "server CPU %",
                    "client CPU %",
                    "sink CPU %",
                    "other CPU % (max)",
                    "mean batch",
                    "errors",
                ],
                rows,
            ),
            "",
            *table(
                [
                    "comparison",
                    "req/s ratio",
                    "per pass",
                    "p50 ratio",
                    "p99 ratio",
                    "server CPU us/req delta",
                ],
                comparisons,
            ),
            "",
        ]
    lines += ["## Exported", ""]
    lines += table(
        ["pass", "config", "GET /metrics", "inferences", "export calls", "KiB", "spans", "per req"],
        [
            [
                str(i["pass"]),
                names[i["config"]],
                str(i["metrics_status"]),
                fmt(i["inference_count"]),
                fmt(i["exported"]["requests"]),
                fmt(i["exported"]["bytes"] / 1024),
                fmt(i["exported"]["spans"]) + _by_name(i["exported"]["spans_by_name"]),
                fmt(i["spans_per_request"], 3),
            ]
            for i in results["instances"]
        ],
    )
    lines += ["", "## Every row", ""]
    lines += table(
        [
            "pass",
            "config",
            "protocol",
            "req/s",
            "p50",
            "p99",
            "us/req",
            "client %",
            "sink %",
            "other % (excl. sink)",
            "attempts",
            "errors",
        ],
        [
            [
                str(r["pass"]),
                names[r["config"]],
                r["protocol"],
                fmt(r["requests_per_s"]),
                fmt(r["latency_ms"]["p50"], 3),
                fmt(r["latency_ms"]["p99"], 3),
                fmt(r["server_cpu_us_per_request"]),
                fmt(r["client_cpu_pct"]),
                fmt(r["sink_cpu_pct"], 1),
                fmt(r["other_excl_sink_pct"] + r["steal_pct"]),
                str(r["attempts"]),
                str(r["errors"] + r["warmup_errors"]),
            ]
            for r in results["runs"]
        ],
    )
    warnings = [(i["log"], results["gateway_logs"].get(i["log"], {})) for i in results["instances"]]
    noisy_logs = [(name, w) for name, w in warnings if w.get("warnings")]
    lines += ["", "## Gateway logs", ""]
    if not noisy_logs:
        lines.append("No WARNING or worse line in any gateway log.")
    for name, w in noisy_logs:
        lines.append(f"- `{name}`: {w['warnings']} warning lines, first: `{w['samples'][0]}`")
    lines += [
        "",
        "`*` client CPU + sink CPU >= 90 % of the client core: the row may be client-bound. "
        "`~` other processes (the sink excluded) used >= 10 % of a core. `!` errors.",
        "",
        *[f"![{p}]({p})" for p in results.get("plots", [])],
        "",
    ]
    return "\n".join(lines)


def draw(results: dict[str, Any], out_dir: Path) -> list[str]:
    """telemetry.png: req/s, p50, p99 and server CPU us/req per configuration and protocol;
    bars are the medians, dots each pass."""
    try:
        import matplotlib
    except ImportError:
        return []
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = _names(results)
    keys = [c["key"] for c in results["configs"]]
    protocols = list(results["summary"])
    panels = (
        ("requests_per_s", "requests/s"),
        ("p50", "p50 latency ms"),
        ("p99", "p99 latency ms"),
        ("us_per_request", "server CPU us per request"),
    )
    canvas, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 4.8))
    width = 0.8 / max(1, len(protocols))
    colours = ("tab:blue", "tab:orange", "tab:green")
    for axis, (key, label) in zip(axes, panels, strict=True):
        for index, protocol in enumerate(protocols):
            xs = [i + (index - (len(protocols) - 1) / 2) * width for i in range(len(keys))]
            values = [results["summary"][protocol][k][key] or 0 for k in keys]
            axis.bar(xs, values, width, label=protocol, color=colours[index % len(colours)])
            for x, k in zip(xs, keys, strict=True):
                points = [
                    figure_value
                    for r in results["runs"]
                    if r["protocol"] == protocol and r["config"] == k
                    if (figure_value := figure(r, key)) is not None
                ]
                axis.scatter([x] * len(points), points, color="black", s=10, zorder=3)
        axis.set_xticks(range(len(keys)), [names[k] for k in keys], rotation=25, ha="right")
        axis.set_title(label, fontsize=10)
        axis.grid(True, axis="y", alpha=0.3)
    axes[0].legend(fontsize=8)
    settings = results["settings"]
    canvas.suptitle(
        f"Telemetry cost: {settings['model']}, batch-1, concurrency {settings['concurrency']} "
        f"(bars: median of {settings['passes']} passes, dots: each pass)",
        fontsize=11,
    )
    canvas.tight_layout()
    canvas.savefig(out_dir / "telemetry.png", dpi=110)
    plt.close(canvas)
    return ["telemetry.png"]

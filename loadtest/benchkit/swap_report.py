"""The hot-swap run's markdown report: the two kinds of phase side by side, swaps, each window."""

from __future__ import annotations

import json
from typing import Any

from .measure import CLIENT_BOUND_PCT, NOISY_PCT
from .report import fmt, table
from .swap import STEADY, SWAP

MET = {True: "met", False: "**missed**", None: "-"}


def _ms(value: float | None) -> str:
    return fmt(value, 2)


def summary_section(results: dict[str, Any]) -> list[str]:
    steady, swap = results["summary"][STEADY], results["summary"][SWAP]
    ratios = results["ratios"]

    def row(name: str, key: str, digits: int = 0, ratio_key: str = "") -> list[str]:
        def get(figures: dict[str, Any]) -> Any:
            return figures["latency_ms"][key] if key in figures["latency_ms"] else figures[key]

        return [
            name,
            fmt(get(steady), digits),
            fmt(get(swap), digits),
            fmt(ratios.get(ratio_key), 2) if ratio_key else "",
        ]

    rows = [
        row("windows", "windows"),
        row("seconds", "seconds", 1),
        row("swaps of the other model", "swaps"),
        row("requests answered", "requests"),
        row("req/s", "requests_per_s"),
        row("p50 ms", "p50", 2, "p50"),
        row("p90 ms", "p90", 2, "p90"),
        row("p99 ms", "p99", 2, "p99"),
        row("max ms", "max", 2, "max"),
        row("errors", "errors"),
        row("server CPU s", "server_cpu_s", 2),
        row("server CPU % of a core", "server_cpu_pct"),
        row("server CPU us/req", "server_cpu_us_per_request", 0, "server_cpu_us_per_request"),
        row("client CPU % (load + swapper)", "client_cpu_pct"),
        row("other CPU % (with steal)", "other_and_steal_pct"),
    ]
    return table(["", "steady", "swap", "swap / steady"], rows)


def targets_section(results: dict[str, Any]) -> list[str]:
    targets = results["targets"]
    p99, errors, swaps = targets["p99_ratio"], targets["errors"], targets["swaps"]
    figures = results["swap_figures"]
    outside = errors["outside_windows"]
    return [
        f"- p99 swap / steady: **{fmt(p99['value'], 2)}** (target <= {p99['target']}): "
        f"{MET[p99['met']]}; p50 ratio {fmt(results['ratios']['p50'], 2)}",
        f"- errors in the windows: **{errors['value']}** (target 0): {MET[errors['met']]}"
        + (f"; {outside} more in the warm-up or after the last window" if outside else ""),
        f"- swaps done: **{swaps['value']}**, failed: {figures['failed']}: {MET[swaps['met']]}",
    ]


def swaps_section(results: dict[str, Any]) -> list[str]:
    figures = results["swap_figures"]
    durations = figures["duration_ms"]
    lines = [
        f"`POST {results['swap_url_path']}` with `{json.dumps(results['swap_body'])}`, one "
        "after another in the swap phases.",
        "",
        f"- calls {figures['calls']}, swapped {figures['done']}, failed {figures['failed']}; "
        "answers " + ", ".join(f"HTTP {k} x {v}" for k, v in figures["statuses"].items()),
        f"- duration ms: min {_ms(durations['min'])}, p50 {_ms(durations['p50'])}, "
        f"mean {_ms(durations['mean'])}, max {_ms(durations['max'])}; a swap call was under "
        f"way {fmt(figures['busy_pct'])} % of the swap phases' time",
        f"- first answer: `{json.dumps(figures['first_answer'])}`",
    ]
    during = figures["model_during_swaps"]
    if during["requests"]:
        worst = during["worst"]
        lines.append(
            f"- {results['settings']['model']} while a swap call was under way: "
            f"{during['requests']:,} requests, p50 {_ms(during['latency_ms']['p50'])} ms, "
            f"p99 {_ms(during['latency_ms']['p99'])} ms, max {_ms(during['latency_ms']['max'])} "
            f"ms (in swap {worst['swap']}, started at {worst['at_s']:.2f} s)"
        )
    if results["swap_api"] != "ok":
        lines.append(f"- **the admin API did not swap**: {results['swap_api']}")
    for failure in figures["failures"]:
        lines.append(
            f"- failed at {failure['start']:.2f} s: HTTP {failure['status']}: "
            f"`{json.dumps(failure['answer'])[:200]}`"
        )
    swaps = results["swaps"]
    if swaps:
        first, last = swaps[0]["server_after"], swaps[-1]["server_after"]
        lines.append(
            f"- server after the first swap: {first['rss_mib']} MiB resident, "
            f"{first['threads']} threads; after the last: {last['rss_mib']} MiB, "
            f"{last['threads']} threads"
        )
    return lines


def phases_section(results: dict[str, Any]) -> list[str]:
    rows = []
    for i, phase in enumerate(results["phases"]):
        figures = phase["figures"]
        latency = figures["latency_ms"]
        noisy = " ~" if i in results["flags"]["noisy"] else ""
        bound = " *" if i in results["flags"]["client_bound"] else ""
        rows.append(
            [
                f"{i + 1} {phase['kind']}{noisy}{bound}",
                fmt(phase["start"], 1),
                fmt(phase["end"] - phase["start"], 2),
                str(phase["swaps"]),
                fmt(figures["requests_per_s"]),
                _ms(latency["p50"]),
                _ms(latency["p99"]),
                _ms(latency["max"]),
                str(figures["errors"]),
                fmt(phase["server_cpu_pct"]),
                fmt(phase["client_cpu_pct"]),
                fmt(phase["other_cpu_pct"] + phase["steal_pct"]),
                f"{phase['server_before']['rss_mib']} -> {phase['server_after']['rss_mib']}",
                f"{phase['server_before']['threads']} -> {phase['server_after']['threads']}",
            ]
        )
    header = [
        "phase",
        "at s",
        "s",
        "swaps",
        "req/s",
        "p50 ms",
        "p99 ms",
        "max ms",
        "errors",
        "server CPU %",
        "client CPU %",
        "other CPU % (with steal)",
        "server RSS MiB",
        "threads",
    ]
    return [
        *table(header, rows),
        "",
        f"`~` other processes used >= {NOISY_PCT} % of a core in the window; `*` the load "
        f"generator used >= {CLIENT_BOUND_PCT} % of its core (the client may cap the load).",
    ]


def errors_section(results: dict[str, Any]) -> list[str]:
    samples = results["error_samples"]
    if not samples:
        return ["None."]
    return [f"- {e['done']:.3f} s: `{e['error']}`" for e in samples[:10]]


def gateway_log_section(results: dict[str, Any]) -> list[str]:
    log = results["gateway_log"]
    return [
        f"{log['warnings']} lines at WARNING or above" + (":" if log["samples"] else "."),
        *[f"    {line}" for line in log["samples"]],
    ]


def markdown_report(results: dict[str, Any]) -> str:
    settings, meta = results["settings"], results["meta"]
    lines = [
        f"# Hot swap: `{settings['model']}` under load while `{settings['swap_model']}` "
        "is reloaded",
        "",
        f"{meta['timestamp']}, git {meta['git']}, {meta['cpus']} CPUs, server on cores "
        f"{meta['server_affinity']}, load generator on {meta['client_affinity']}. "
        f"{settings['protocol']}, closed loop of {settings['concurrency']} batch-1 requests; "
        f"{settings['warmup']:g} s warm-up, then {2 * settings['rounds']} phases of "
        f"{settings['duration']:g} s ({', '.join(p['kind'] for p in results['phases'])}).",
        "",
        "## Result",
        "",
        *targets_section(results),
        "",
        *summary_section(results),
        "",
        "## Swaps",
        "",
        *swaps_section(results),
        "",
        "## Phase by phase",
        "",
        *phases_section(results),
        "",
        "## Request errors (first ten)",
        "",
        *errors_section(results),
        "",
        "## Gateway log",
        "",
        *gateway_log_section(results),
    ]
    if results.get("plots"):
        lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in results["plots"]]
    return "\n".join(lines) + "\n"

"""The shadow run's markdown report: plain and shadow phases side by side, the comparisons, the
overload, each window."""

from __future__ import annotations

import json
from typing import Any

from .measure import CLIENT_BOUND_PCT, NOISY_PCT
from .report import fmt, table
from .shadow import OUTCOMES, PLAIN, SHADOW
from .shadow_analysis import agreement
from .swap_report import MET, errors_section, gateway_log_section


def _ms(value: float | None) -> str:
    return fmt(value, 2)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f} %"


def targets_section(results: dict[str, Any]) -> list[str]:
    targets = results["targets"]
    p99, errors, agree = targets["p99_ratio"], targets["errors"], targets["agreement"]
    dropped, order = targets["overload_dropped"], targets["overload_order"]
    overload = results["overload_figures"]
    outside = errors["outside_windows"]
    total = results["comparisons_after_phases"]
    return [
        f"- primary p99 shadow / plain: **{fmt(p99['value'], 2)}** (target <= "
        f"{p99['target']}): {MET[p99['met']]}; p50 ratio {fmt(results['ratios']['p50'], 2)}, "
        f"p99 ratio from the real send time {fmt(results['ratios']['service_p99'], 2)}",
        f"- errors in the windows: **{errors['value']}** (target 0): {MET[errors['met']]}"
        + (f"; {outside} more in the warm-up or between windows" if outside else ""),
        f"- shadow agreement: **{_pct(agree['value'])}** of {agree['compared']:,} compared "
        f"(disagree {total['disagree']}, error {total['error']}, dropped {total['dropped']}; "
        f"target 100 %, the two versions are the same model): {MET[agree['met']]}",
        f"- overload: shadow copies dropped **{dropped['value']:,}** (target > 0): "
        f"{MET[dropped['met']]}; primary requests refused {overload['refused']:,}",
        f"- drop order: **{order['value']}**: {MET[order['met']]}",
    ]


def summary_section(results: dict[str, Any]) -> list[str]:
    plain, shadow = results["summary"][PLAIN], results["summary"][SHADOW]
    ratios = results["ratios"]

    def get(figures: dict[str, Any], path: str) -> Any:
        value: Any = figures
        for key in path.split("."):
            value = value[key]
        return value

    def row(name: str, path: str, digits: int = 0, ratio_key: str = "") -> list[str]:
        return [
            name,
            fmt(get(plain, path), digits),
            fmt(get(shadow, path), digits),
            fmt(ratios.get(ratio_key), 2) if ratio_key else "",
        ]

    rows = [
        row("windows", "windows"),
        row("seconds", "seconds", 1),
        row("req/s offered (due in the windows)", "offered_per_s"),
        row("req/s answered", "requests_per_s"),
        row("p50 ms", "latency_ms.p50", 2, "p50"),
        row("p90 ms", "latency_ms.p90", 2, "p90"),
        row("p99 ms", "latency_ms.p99", 2, "p99"),
        row("max ms", "latency_ms.max", 2, "max"),
        row("p50 ms from the real send", "service_latency_ms.p50", 2),
        row("p99 ms from the real send", "service_latency_ms.p99", 2, "service_p99"),
        row("send lag p50 ms (sent - due)", "send_lag_ms.p50", 2),
        row("send lag p99 ms", "send_lag_ms.p99", 2),
        row("errors", "errors"),
        row("of which refused (429)", "refused"),
        row("shadow copies agree", "comparisons.agree"),
        row("shadow copies disagree", "comparisons.disagree"),
        row("shadow copies error", "comparisons.error"),
        row("shadow copies dropped", "comparisons.dropped"),
        row("shadow copies per answered request", "copies_per_request", 3),
        row("server CPU s", "server_cpu_s", 2),
        row("server CPU % of a core", "server_cpu_pct"),
        row("server CPU us/req", "server_cpu_us_per_request", 0, "server_cpu_us_per_request"),
        row("client CPU % (load generator)", "client_cpu_pct"),
        row("other CPU % (with steal)", "other_and_steal_pct"),
    ]
    return table(["", PLAIN, SHADOW, "shadow / plain"], rows)


def load_section(results: dict[str, Any]) -> list[str]:
    probe, rate, settings = results["probe"], results["rate"], results["settings"]
    how = (
        f"given with --rate {fmt(rate['given'])}"
        if rate["given"]
        else f"{settings['load_fraction']:g} x the capacity the probe measured"
    )
    generated = results["open_loop"]
    return [
        f"- probe: one closed-loop worker for {probe['seconds']:.1f} s: "
        f"{fmt(probe['requests_per_s'])} req/s, p50 {_ms(probe['p50_ms'])} ms, server CPU "
        f"{fmt(probe['server_cpu_pct'])} % of a core, **{fmt(probe['server_cpu_us_per_request'])} "
        f"us/req**: one core sustains about **{fmt(probe['capacity_per_s'])} req/s at batch 1** "
        f"(other CPU {fmt(probe['other_cpu_pct'])} %)",
        f"- open loop: **{fmt(rate['used_per_s'])} req/s** ({how}), {settings['arrivals']} "
        f"arrivals, {generated['sent']:,} requests sent, {generated['not_sent']:,} not sent "
        f"(more than {settings['max_in_flight']} in flight)",
    ]


def comparisons_section(results: dict[str, Any]) -> list[str]:
    rows = []
    for name, counts in (
        ("shadow phases", results["summary"][SHADOW]["comparisons"]),
        ("plain phases", results["summary"][PLAIN]["comparisons"]),
        ("whole open-loop run (warm-up included)", results["comparisons_after_phases"]),
        ("after the overload", results["comparisons_final"]),
    ):
        rows.append([name, *(fmt(counts[key]) for key in OUTCOMES), _pct(agreement(counts))])
    pair = next(
        (
            p
            for p in results["traffic_final"].get("comparisons", [])
            if p["primary"] == results["settings"]["primary"]
        ),
        None,
    )
    lines = [
        f"`GET /v2/models/{results['settings']['model']}/traffic`, pair (primary "
        f"{results['settings']['primary']}, shadow {results['settings']['shadow']}):",
        "",
        *table(["", *OUTCOMES, "agreement"], rows),
    ]
    if pair is not None:
        lines += ["", f"Final pair as the gateway reports it: `{json.dumps(pair)}`"]
    if results.get("metrics"):
        lines += ["", "The gateway's own counters (`GET /metrics`) at the end:", ""]
        lines += [f"    {line}" for line in results["metrics"][:20]]
    return lines


def overload_section(results: dict[str, Any]) -> list[str]:
    over, settings = results["overload_figures"], results["settings"]
    copies = over["copies"]
    latency = over["latency_ms"]
    first_refusal, first_drop = over["first_refusal"], over["first_drop"]
    start = results["overload"]["start"]
    lines = [
        f"Shadow policy on, primary line of {settings['queue_size']} (a copy is not made once "
        f"it is half full), {over['concurrency']} closed-loop workers started over "
        f"{settings['overload_ramp']:g} s, {over['seconds']:.1f} s in all; "
        f"`GET .../traffic` every {settings['sample_interval']:g} s.",
        "",
        f"- primary: {over['requests']:,} requests, {over['answered']:,} answered "
        f"({fmt(over['answered_per_s'])}/s, p50 {_ms(latency['p50'])} ms, p99 "
        f"{_ms(latency['p99'])} ms), **{over['refused']:,} refused** "
        f"({fmt(over['refused_per_s'])}/s, {_pct(over['refused_share'])} of requests), "
        f"{over['other_errors']} other errors",
        f"- shadow copies in the overload: agree {copies['agree']:,}, disagree "
        f"{copies['disagree']:,}, error {copies['error']:,}, **dropped {copies['dropped']:,}** "
        f"({_pct(over['dropped_share'])} of the copies)",
        "- first primary refusal: "
        + (
            "none"
            if first_refusal is None
            else f"sent {first_refusal['sent'] - start:.3f} s after the start, answered "
            f"{first_refusal['answered'] - start:.3f} s"
        ),
        "- first shadow drop: "
        + (
            "none"
            if first_drop is None
            else f"{first_drop['count']} between {first_drop['after'] - start:.3f} s and "
            f"{first_drop['by'] - start:.3f} s after the start"
        ),
        f"- order: **{over['order']}**",
        f"- sampling intervals with refusals: {over['intervals_with_refusals']}, of which "
        f"{over['intervals_with_refusals_and_drops']} also dropped shadow copies and "
        f"**{over['intervals_with_refusals_and_completions']} also completed some** "
        f"({over['copies_completed_while_refusing']:,} copies completed in them, beside "
        f"{over['refused_while_copies_completed']:,} refusals; a copy completing then was "
        "admitted earlier: none is made while the primary line is at least half full)",
        f"- server CPU {fmt(over['server_cpu_pct'])} % of a core, client CPU "
        f"{fmt(over['client_cpu_pct'])} %, other {fmt(over['other_and_steal_pct'])} %; traffic "
        f"GET p50 {_ms(over['sample_latency_ms']['p50'])} ms, max "
        f"{_ms(over['sample_latency_ms']['max'])} ms, {over['sample_errors']} failed",
    ]
    rows = [
        [
            f"{i['from'] - start:.2f} - {i['to'] - start:.2f}",
            fmt(i["ok"]),
            fmt(i["refused"]),
            fmt(i["completed"]),
            fmt(i["dropped"]),
        ]
        for i in over["intervals"]
        if start <= i["to"] <= max(results["overload"]["ramp"], default=start) + 1.0
    ]
    if rows:
        lines += [
            "",
            "During the ramp (seconds after the start; counts per sampling interval):",
            "",
            *table(["interval s", "answered", "refused", "copies run", "copies dropped"], rows),
        ]
    return lines


def phases_section(results: dict[str, Any]) -> list[str]:
    rows = []
    for i, phase in enumerate(results["phases"]):
        figures = phase["figures"]
        latency = figures["latency_ms"]
        noisy = " ~" if i in results["flags"]["noisy"] else ""
        bound = " *" if i in results["flags"]["client_bound"] else ""
        copies = figures["comparisons"]
        rows.append(
            [
                f"{i + 1} {phase['kind']}{noisy}{bound}",
                fmt(phase["start"], 1),
                fmt(phase["end"] - phase["start"], 2),
                fmt(figures["requests_per_s"]),
                _ms(latency["p50"]),
                _ms(latency["p99"]),
                _ms(latency["max"]),
                _ms(figures["service_latency_ms"]["p99"]),
                str(figures["errors"]),
                f"{copies['agree']}/{copies['disagree']}/{copies['error']}/{copies['dropped']}",
                fmt(phase["server_cpu_pct"]),
                fmt(phase["client_cpu_pct"]),
                fmt(phase["other_cpu_pct"] + phase["steal_pct"]),
                f"{phase['server_before']['rss_mib']} -> {phase['server_after']['rss_mib']}",
            ]
        )
    header = [
        "phase",
        "at s",
        "s",
        "req/s",
        "p50 ms",
        "p99 ms",
        "max ms",
        "p99 ms (sent)",
        "errors",
        "copies a/d/e/dropped",
        "server CPU %",
        "client CPU %",
        "other CPU % (with steal)",
        "server RSS MiB",
    ]
    return [
        *table(header, rows),
        "",
        f"`~` other processes used >= {NOISY_PCT} % of a core in the window; `*` the load "
        f"generator used >= {CLIENT_BOUND_PCT} % of its core (it may send late).",
    ]


def overload_errors_section(results: dict[str, Any]) -> list[str]:
    samples = results["overload_error_samples"]
    if not samples:
        return ["None."]
    return [f"- {e['done']:.3f} s: `{e['error'][:200]}`" for e in samples[:3]]


def markdown_report(results: dict[str, Any]) -> str:
    settings, meta = results["settings"], results["meta"]
    lines = [
        f"# Shadow traffic: `{settings['model']}` version {settings['primary']} with and "
        f"without a 100 % shadow to version {settings['shadow']}",
        "",
        f"{meta['timestamp']}, git {meta['git']}, {meta['cpus']} CPUs, server on cores "
        f"{meta['server_affinity']}, load generator on {meta['client_affinity']}. "
        f"{settings['protocol']}, open loop of batch-1 requests at "
        f"{fmt(results['rate']['used_per_s'])} req/s, latency from when each request was due; "
        f"{settings['warmup']:g} s warm-up, then {2 * settings['rounds']} phases of "
        f"{settings['duration']:g} s ({', '.join(p['kind'] for p in results['phases'])}), each "
        "started by `PUT .../traffic`; then the overload.",
        "",
        "## Result",
        "",
        *targets_section(results),
        "",
        *summary_section(results),
        "",
        "## Load",
        "",
        *load_section(results),
        "",
        "## Shadow comparisons",
        "",
        *comparisons_section(results),
        "",
        "## Overload",
        "",
        *overload_section(results),
        "",
        "## Phase by phase",
        "",
        *phases_section(results),
        "",
        "## Request errors under the moderate load (first ten)",
        "",
        *errors_section(results),
        "",
        "## Overload errors (first three)",
        "",
        *overload_errors_section(results),
        "",
        "## Gateway log",
        "",
        *gateway_log_section(results),
    ]
    if results.get("plots"):
        lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in results["plots"]]
    return "\n".join(lines) + "\n"

"""The markdown report: limits, gateway rows, the latency target, echo rows, minimal servers,
bare onnxruntime."""

from __future__ import annotations

from typing import Any

from .analysis import LATENCY_SLACK_MS, SATURATED_PCT
from .measure import CLIENT_BOUND_PCT, NOISY_PCT, THREAD_ROLE_ORDER
from .sweep import is_noisy

VERDICT = {True: "yes", False: "**no**", None: "-"}


def fmt(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    """A markdown table; the first column left-aligned, the others right-aligned."""
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def limits_section(results: dict[str, Any]) -> list[str]:
    checks = {c["protocol"]: c for c in results["latency_targets"]}
    rows = []
    for protocol, limit in results["limits"].items():
        gateway = [r for r in results["runs"] if r["protocol"] == protocol and r["requests"]]
        best = max(gateway, key=lambda r: r["samples_per_s"]) if gateway else None
        check = checks.get(protocol, {}).get("met")
        rows.append(
            [
                protocol,
                f"{fmt(limit['model_samples_per_s'])} (b{limit['model_batch_size']})",
                f"{fmt(limit['echo_requests_per_s'])} (c{limit['echo_concurrency'] or '-'})"
                + (" *" if limit["echo_saturated"] is False else ""),
                fmt(limit["combined_samples_per_s"]),
                "-" if best is None else f"{fmt(best['samples_per_s'])} (c{best['concurrency']})",
                "-" if best is None else fmt(best["vs_limits"]["combined_ratio"], 2),
                {True: "met", False: "**missed**", None: "-"}[check],
            ]
        )
    header = [
        "protocol",
        "model limit samples/s",
        "front-end limit req/s",
        "combined limit",
        "gateway best samples/s",
        "best / combined",
        "c=1 latency",
    ]
    model = results["model_limit"]
    drift = ""
    if model.get("end_samples_per_s") is not None:
        drift = (
            f" (b{model['batch_size']}: the mean of {fmt(model['start_samples_per_s'])} before "
            f"the servers' rows and {fmt(model['end_samples_per_s'])} after them)"
        )
    lines = [
        f"Model limit: bare onnxruntime at its best batch size{drift}. Front-end limit: the "
        "bare echo server's best req/s over the concurrencies. Combined: 1 / (1/model + 1/front "
        "end).",
        "",
        *table(header, rows),
    ]
    unsaturated = [
        f"{protocol} {fmt(limit['echo_cpu_capacity_per_s'])} req/s"
        for protocol, limit in results["limits"].items()
        if limit["echo_saturated"] is False
    ]
    if unsaturated:
        lines += [
            "",
            f"`*` the echo server used < {SATURATED_PCT} % of its core at its best: the load "
            "generator gave out first, so this front-end limit and its combined limit are lower "
            "bounds. At 100 % of its core (1e6 / its CPU us per request) the echo would do: "
            + "; ".join(unsaturated)
            + ".",
        ]
    return lines


def flags(run: dict[str, Any]) -> str:
    return (
        (" !" if run["flagged"] else "")
        + (" *" if run["client_bound"] else "")
        + (" ~" if run["noisy"] else "")
    )


def load_rows(runs: list[dict[str, Any]], gateway: bool) -> list[list[str]]:
    rows = []
    for run in runs:
        lat = run["latency_ms"]
        row = [
            run["protocol"] + flags(run),
            str(run["concurrency"]),
            fmt(run["samples_per_s"]),
            fmt(lat["p50"], 3),
            fmt(lat["p90"], 3),
            fmt(lat["p99"], 3),
        ]
        if gateway:
            row.append(fmt(run["server_stats"]["mean_batch_size"], 2))
        row += [
            fmt(run["server_cpu_pct"]),
            fmt(run["server_cpu_us_per_request"]),
            fmt(run["client_cpu_pct"]),
            fmt(run["other_cpu_pct"] + run["steal_pct"]),
            str(run["errors"]),
        ]
        if gateway:
            row.append(fmt(run["vs_limits"]["combined_ratio"], 2))
        rows.append(row)
    return rows


def load_table(runs: list[dict[str, Any]], gateway: bool) -> list[str]:
    header = ["protocol", "conc", "samples/s", "p50 ms", "p90 ms", "p99 ms"]
    header += ["mean batch"] if gateway else []
    header += ["server CPU %", "server CPU us/req", "client CPU %", "other CPU %", "errors"]
    header += ["/ combined"] if gateway else []
    lines = table(header, load_rows(runs, gateway))
    notes = [
        f"- `{r['protocol']}` x {r['concurrency']}: {r['errors']} errors in the window, "
        f"{r['warmup_errors']} in the warm-up; e.g. {r['error_samples'][:1]}"
        + (
            "; errors by repeat (window and warm-up): "
            + ", ".join(str(repeat["errors"]) for repeat in r["repeats"])
            if r.get("repeats")
            else ""
        )
        for r in runs
        if r["flagged"]
    ]
    if notes:
        lines += ["", "`!` rows with errors (figures not trustworthy):", *notes]
    if any(r["client_bound"] for r in runs):
        lines += [
            "",
            f"`*` client CPU >= {CLIENT_BOUND_PCT} %: the load generator may be the "
            "bottleneck; the row is a lower bound.",
        ]
    if any(r["noisy"] for r in runs):
        lines += [
            "",
            f"`~` other processes (and steal) used >= {NOISY_PCT} % of a core during "
            "the window: the machine was not quiet; rerun (`--wait-quiet S`).",
        ]
    unknown = sorted(
        {r["server_stats"]["status"] for r in runs if r["server_stats"]["mean_batch_size"] is None}
    )
    if gateway and unknown:
        lines += ["", f"Mean batch size unknown where `-`: statistics said {', '.join(unknown)}."]
    return lines


def thread_section(runs: list[dict[str, Any]]) -> list[str]:
    """The gateway's server CPU a request, by thread role (see measure.thread_role); nothing
    for runs recorded before the bench read it."""
    measured = [r for r in runs if r.get("server_cpu_us_per_request_by_thread")]
    if not measured:
        return []
    seen = {  # roles that did something (the load pool's threads idle, say, do not)
        role
        for r in measured
        for role, us in r["server_cpu_us_per_request_by_thread"].items()
        if us >= 0.5
    }
    roles = [role for role in THREAD_ROLE_ORDER if role in seen]
    roles += sorted(seen - set(roles))
    rows = []
    for run in measured:
        by_thread = run["server_cpu_us_per_request_by_thread"]
        switches = run.get("server_switches_per_request") or {}
        rows.append(
            [
                run["protocol"] + flags(run),
                str(run["concurrency"]),
                *(fmt(by_thread.get(role)) for role in roles),
                fmt(run["server_cpu_us_per_request"]),
                fmt(sum(switches.values()) if switches else None, 1),
                fmt(switches.get("involuntary"), 1),
            ]
        )
    header = ["protocol", "conc", *roles, "total", "switches", "preempted"]
    return [
        "## Where the gateway's CPU goes (us a request, by thread)",
        "",
        "`loop`: the event loop (HTTP, routing, validation, batching); `inference`: the "
        "threads that run the model; `grpc`: the threaded gRPC server's workers (decode, "
        "encode, grpcio's per-call Python); `event_engine`: gRPC's C-core; `other`: the rest "
        "(grpcio's poller, which accepts each call, among them); `ended`: what the process used "
        "beyond its threads alive at the window's end (threads that ended, clock ticks). "
        "`switches`: the context switches of the server's threads a request; `preempted`: "
        "those of them where the kernel took the core from a thread that could have run on "
        "(`nonvoluntary_ctxt_switches` in /proc; see --scheduling-policy).",
        "",
        *table(header, rows),
        "",
    ]


def repeated(checks: list[dict[str, Any]]) -> bool:
    return any(c.get("repeats") for c in checks)


def met_in_repeats(check: dict[str, Any], key: str = "repeats_met") -> str:
    if not check.get("repeats") or check.get(key) is None:
        return "-"
    return f"{check[key]} of {check['repeats']}"


def latency_section(checks: list[dict[str, Any]]) -> list[str]:
    counted = repeated(checks)
    strict = any(c.get("target_huge_pages_ms") is not None for c in checks)
    header = ["protocol", "gateway p50", "echo p50", "ORT b1 p50", "target", "met"]
    header += ["met in repeats"] if counted else []
    header += ["ORT b1 p50, huge pages", "target", "met"] if strict else []
    header += ["met in repeats"] if strict and counted else []
    rows = [
        [
            c["protocol"],
            fmt(c["gateway_p50_ms"], 3),
            fmt(c["echo_p50_ms"], 3),
            fmt(c["ort_batch1_p50_ms"], 3),
            fmt(c["target_ms"], 3),
            VERDICT[c["met"]],
            *([met_in_repeats(c)] if counted else []),
            *(
                [
                    fmt(c.get("ort_batch1_huge_pages_p50_ms"), 3),
                    fmt(c.get("target_huge_pages_ms"), 3),
                    VERDICT[c.get("met_huge_pages")],
                ]
                if strict
                else []
            ),
            *([met_in_repeats(c, "repeats_met_huge_pages")] if strict and counted else []),
        ]
        for c in checks
    ]
    return [
        f"Target: gateway p50 <= echo p50 + bare onnxruntime batch-1 p50 + {LATENCY_SLACK_MS} ms "
        "(all in ms). "
        + _ort_batch1_source(checks)
        + (
            " The last columns count bare onnxruntime with its memory in huge pages, as the "
            "gateway loads a model (`--huge-pages`, its default): the stricter target."
            if strict
            else ""
        ),
        "",
        *table(header, rows),
    ]


def _ort_batch1_source(checks: list[dict[str, Any]]) -> str:
    if any(c.get("ort_batch1_measured") == "beside the rows" for c in checks):
        rounds = max(c.get("ort_batch1_rounds") or 0 for c in checks)
        return (
            "Bare onnxruntime's batch 1 was measured beside each round of a protocol's "
            "concurrency-1 rows, in the same minutes"
            + (
                f": its p50 here is the median of the {rounds} rounds', and each repeat is "
                "judged against its own round's."
                if rounds > 1
                else "."
            )
        )
    return "Bare onnxruntime's batch 1 is the baseline's, measured at the run's start."


def minimal_section(results: dict[str, Any]) -> list[str]:
    runs = results.get("minimal_runs") or []
    if not runs:
        return []
    checks = results.get("minimal_checks") or []
    counted = repeated(checks)
    rows = [
        [
            c["protocol"],
            fmt(c["gateway_p50_ms"], 3),
            fmt(c["minimal_p50_ms"], 3),
            fmt(c["target_ms"], 3),
            VERDICT[c["met"]],
            *([met_in_repeats(c)] if counted else []),
            f"{fmt(c['gateway_best_samples_per_s'])} (c{c['gateway_best_concurrency']})",
            f"{fmt(c['minimal_best_samples_per_s'])} (c{c['minimal_best_concurrency']})",
            fmt(c["batching_gain"], 2),
        ]
        for c in checks
    ]
    header = [
        "protocol",
        "gateway c=1 p50",
        "minimal c=1 p50",
        f"minimal + {LATENCY_SLACK_MS}",
        "met",
        *(["met in repeats"] if counted else []),
        "gateway best samples/s",
        "minimal best samples/s",
        "gateway / minimal",
    ]
    return [
        "## Minimal servers (the gateway's own front ends, the model inline; no batching)",
        "",
        "Each request is decoded, run through the model in its handler, one run at a time "
        "(httptools: on the event loop; threaded grpcio: on the call's worker thread), and "
        "answered. At concurrency 1 that is the least any server on these stacks can do: its "
        "model runs share the core with the front end's work, which the back-to-back batch-1 "
        "figure does not.",
        "",
        *load_table(runs, gateway=False),
        "",
        *(table(header, rows) if rows else ["No protocol has successful rows on both."]),
        "",
    ]


def baseline_section(baseline: dict[str, Any]) -> list[str]:
    b1 = baseline["batch1"]
    huge = baseline.get("huge_pages")
    huge_steps = {step["batch_size"]: step for step in (huge or {}).get("sweep", [])}
    rows = []
    for step in baseline["sweep"]:
        row = [
            str(step["batch_size"]),
            fmt(step["runs_per_s"]),
            fmt(step["samples_per_s"]),
            fmt(step["latency_ms"]["p50"], 3),
            fmt(step["latency_ms"]["p99"], 3),
        ]
        if huge:
            other = huge_steps.get(step["batch_size"])
            row += [
                fmt(other and other["samples_per_s"]),
                fmt(other and other["latency_ms"]["p50"], 3),
            ]
        rows.append(row)
    header = ["batch", "runs/s", "samples/s", "p50 ms", "p99 ms"]
    header += ["samples/s, huge pages", "p50 ms, huge pages"] if huge else []
    lines = [
        f"Batch 1: {fmt(b1['runs_per_s'])} runs/s, p50 {fmt(b1['latency_ms']['p50'], 3)} ms "
        f"({b1['runs']:,} runs in {b1['seconds']:.1f} s; other processes used "
        f"{fmt(b1['other_cpu_pct'])} % of a core meanwhile)."
    ]
    if huge:
        hb1 = huge["batch1"]
        lines += [
            "",
            f"Then the same session with its memory in huge pages, as the gateway loads a model "
            f"({huge['collapsed_bytes'] / 2**20:,.0f} MiB): batch 1 p50 "
            f"{fmt(hb1['latency_ms']['p50'], 3)} ms, "
            f"x{hb1['latency_ms']['p50'] / b1['latency_ms']['p50']:.2f} "
            f"(other processes used {fmt(hb1['other_cpu_pct'])} % of a core meanwhile).",
        ]
    elif baseline.get("huge_pages_unsupported"):
        lines += ["", f"No huge pages here: {baseline['huge_pages_unsupported']}."]
    return [*lines, "", *table(header, rows)]


def beside_rows_section(beside: dict[str, list[dict[str, Any]]]) -> list[str]:
    """Bare onnxruntime's batch-1 runs beside each round of concurrency-1 rows."""
    if not beside:
        return []
    strict = any(r["huge_pages_p50_ms"] is not None for rounds in beside.values() for r in rounds)
    rows = [
        [
            protocol,
            ", ".join(fmt(r["p50_ms"], 3) + (" ~" if is_noisy(r) else "") for r in rounds),
            *([", ".join(fmt(r["huge_pages_p50_ms"], 3) for r in rounds)] if strict else []),
        ]
        for protocol, rounds in beside.items()
    ]
    header = ["beside the rows of", "batch 1 p50 ms, by round"]
    header += ["in huge pages"] if strict else []
    return [
        "",
        "Batch 1 alone, beside each round of a protocol's concurrency-1 rows (the latency "
        f"target's figures; ~: other processes used {NOISY_PCT} % of a core or more meanwhile):",
        "",
        *table(header, rows),
    ]


LEAN_STACKS = {
    "http-binary": ("httptools", "aiohttp's"),
    "http-json": ("httptools", "aiohttp's"),
    "grpc": ("threaded grpcio", "grpc.aio's"),
}


def lean_section(results: dict[str, Any]) -> list[str]:
    runs = results.get("lean_echo_runs") or []
    if not runs:
        return []
    stacks = sorted({LEAN_STACKS[r["protocol"]][0] for r in runs})
    lines = [
        f"## Echoes on the gateway's own stacks ({', '.join(stacks)}; no framework, no gateway)",
        "",
        *load_table(runs, gateway=False),
        "",
    ]
    for protocol, limit in (results.get("lean_limits") or {}).items():
        gateway = [r for r in results["runs"] if r["protocol"] == protocol and r["requests"]]
        if not (limit["combined_samples_per_s"] and gateway):
            continue
        best = max(gateway, key=lambda r: r["samples_per_s"])
        bound = "" if limit["echo_saturated"] else " (the echo was client-bound: a lower bound)"
        stack, instead_of = LEAN_STACKS[protocol]
        lines += [
            f"{protocol}, against the {stack} echo instead of {instead_of}: front-end limit "
            f"{fmt(limit['echo_requests_per_s'])} req/s{bound}, combined "
            f"{fmt(limit['combined_samples_per_s'])}, gateway best {fmt(best['samples_per_s'])} "
            f"(c{best['concurrency']}) = "
            f"{fmt(best['samples_per_s'] / limit['combined_samples_per_s'], 2)} of it.",
            "",
        ]
    for check in results.get("lean_latency_targets") or []:
        if check["target_ms"] is None:
            continue
        lines += [
            f"{check['protocol']} latency at concurrency 1 against this echo: gateway p50 "
            f"{fmt(check['gateway_p50_ms'], 3)} ms, target {fmt(check['echo_p50_ms'], 3)} + "
            f"{fmt(check['ort_batch1_p50_ms'], 3)} + {check['slack_ms']} = "
            f"{fmt(check['target_ms'], 3)} ms: {'met' if check['met'] else 'missed'}"
            + (f" (met in {met_in_repeats(check)} repeats)." if check.get("repeats") else "."),
            "",
        ]
    return lines


def grpc_front_ends_section(results: dict[str, Any]) -> list[str]:
    """The gRPC echoes side by side (--multi-loop-grpc-echo): one grpc.aio loop, several, and
    grpcio's threaded server, each against the one loop at the same concurrency."""
    loops_runs = results.get("loops_echo_runs") or []
    if not loops_runs:
        return []
    loops = results["settings"]["multi_loop_grpc_echo"]
    stacks = [
        ("grpc.aio, one loop", results["echo_runs"]),
        (f"grpc.aio, {loops} loops", loops_runs),
        ("threaded grpcio", results.get("lean_echo_runs") or []),
    ]
    by_stack = {
        name: {r["concurrency"]: r for r in runs if r["protocol"] == "grpc" and r["requests"]}
        for name, runs in stacks
    }
    single = by_stack["grpc.aio, one loop"]
    rows = []
    for name, runs in by_stack.items():
        for concurrency, run in sorted(runs.items()):
            reference = single.get(concurrency)
            rows.append(
                [
                    name,
                    str(concurrency),
                    fmt(run["requests_per_s"]),
                    fmt(run["latency_ms"]["p50"], 3),
                    fmt(run["server_cpu_us_per_request"]),
                    "-"
                    if reference is None
                    else fmt(run["requests_per_s"] / reference["requests_per_s"], 2),
                ]
            )
    header = ["gRPC echo on", "conc", "req/s", "p50 ms", "server CPU us/req", "req/s / one loop"]
    return [
        "## gRPC front ends (echoes; same payloads, no model)",
        "",
        f"The {loops} loops share one port (SO_REUSEPORT), so each gets the connections the "
        f"kernel hands it: {results['settings']['grpc_channels']} channel(s) in this run.",
        "",
        *table(header, rows),
        "",
    ]


def repeats_section(results: dict[str, Any]) -> list[str]:
    """Every repeat of every row (--repeat N): its samples/s and p50, in measurement order."""
    groups = ("runs", "echo_runs", "lean_echo_runs", "minimal_runs", "loops_echo_runs")
    runs = [run for group in groups for run in results.get(group) or [] if run.get("repeats")]
    if not runs:
        return []
    rows = []
    for run in runs:
        repeats = run["repeats"]
        rates = [repeat["samples_per_s"] for repeat in repeats]
        rows.append(
            [
                run["target"],
                run["protocol"],
                str(run["concurrency"]),
                ", ".join(fmt(rate) for rate in rates),
                ", ".join(
                    fmt(repeat["p50_ms"], 3) + (" ~" if repeat.get("noisy") else "")
                    for repeat in repeats
                ),
                fmt(max(rates) / min(rates), 2) if min(rates) > 0 else "-",
            ]
        )
    header = ["target", "protocol", "conc", "samples/s", "p50 ms", "max / min samples/s"]
    return [
        "## Repeats",
        "",
        "Each round of a protocol and concurrency was measured "
        f"{len(runs[0]['repeats'])} times in a row; every row above is the repeat with the "
        "median samples/s, and each target's repeats are listed here in the order measured "
        f"(`~`: other processes used >= {NOISY_PCT} % of a core during that repeat). `met in "
        "repeats` compares each repeat with its reference's repeat of the same round.",
        "",
        *table(header, rows),
        "",
    ]


def markdown_report(results: dict[str, Any]) -> str:
    meta, settings = results["meta"], results["settings"]
    core = settings["server_core"]
    window = f"{fmt(settings['warmup'], 1)} s warm-up + {fmt(settings['duration'], 1)} s per row"
    if settings.get("repeat", 1) > 1:
        window += (
            f", each row the repeat with the median samples/s of {settings['repeat']} (see Repeats)"
        )
    lines = [
        f"# Gateway load test: `{settings['model']}`, {meta['timestamp']}",
        "",
        f"git {meta['git']}; onnxruntime {results['baseline']['onnxruntime_version']}; "
        f"Python {meta['python']}; {meta['cpus']} CPUs ({meta['processor']}). Servers on core "
        f"{core}, load generator on core {settings['client_core']}; batch-1 requests, closed "
        f"loop, {window}. "
        + (
            "Rows interleaved: each protocol and concurrency measured on the echo server, the "
            "gateway (and the echoes and minimal servers on its own stacks) one after the other."
            if meta.get("order") == "interleaved"
            else "Rows in blocks: all gateway rows, then each echo server's."
        ),
        "",
        "## How close to the limit",
        "",
        *limits_section(results),
        "",
        "## Gateway",
        "",
        *load_table(results["runs"], gateway=True),
        "",
        *thread_section(results["runs"]),
        "## Latency at concurrency 1",
        "",
        *latency_section(results["latency_targets"]),
        "",
        "## Echo servers (the front end's limit; same payloads, no model)",
        "",
        *load_table(results["echo_runs"], gateway=False),
        "",
        *lean_section(results),
        *grpc_front_ends_section(results),
        *minimal_section(results),
        *repeats_section(results),
        f"## Bare onnxruntime (same file, core {core}, intra_op_num_threads=1)",
        "",
        *baseline_section(results["baseline"]),
        *(
            ["", "After the servers' rows:", "", *baseline_section(results["baseline_end"])]
            if results.get("baseline_end")
            else []
        ),
        *beside_rows_section(results.get("batch1_beside_rows") or {}),
        "",
    ]
    if results.get("plots"):
        lines += ["## Plots", "", *(f"![{p}]({p})" for p in results["plots"]), ""]
    return "\n".join(lines)

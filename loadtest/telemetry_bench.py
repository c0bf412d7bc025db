"""Telemetry benchmark: what do metrics and tracing cost the gateway?

One run, the same model and the same load for every configuration, each a fresh gateway
(`python -m gateway serve` from the dev environment, pinned to the server core):

- (a) `--no-metrics`: no telemetry at all (the baseline);
- (b) the default: Prometheus metrics on, tracing off;
- (c) `--tracing` with OTEL_TRACES_SAMPLER=parentbased_traceidratio, OTEL_TRACES_SAMPLER_ARG=0.01;
- (d) `--tracing` with the ratio 1.0 (every request traced).

Traced gateways really export: OTLP/HTTP (http/protobuf) to a sink on 127.0.0.1
(`benchkit/otlp_sink.py`, pinned to the client core) that answers 200 and counts calls, bytes
and spans. The load is bench.py's closed loop (batch-1 requests, --concurrency 16 workers,
pinned to the client core), one row per protocol (gRPC, HTTP binary) per gateway: --warmup s
not counted, then --duration s. Configurations run in ABCD DCBA order (--passes 2) so that a
drift of the machine weighs on all alike; each figure is the median over the passes.

Ratios: (b)/(a) throughput (target >= 0.95: metrics cost < 5 %), (c)/(b) (target >= 0.95),
(d)/(b), (d)/(a), and the p50 and p99 ratios. Results: `report.md`, `results.json`,
`telemetry.png` and each gateway's log under `--out/telemetry-<timestamp>/`.

    .venv-load/bin/python loadtest/telemetry_bench.py --wait-quiet 60
    .venv-load/bin/python loadtest/telemetry_bench.py render loadtest/results/telemetry-<ts>
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
from collections.abc import Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchkit.measure import QUIET_SAMPLE_S, log, wait_for_quiet
from benchkit.options import add_run_options
from benchkit.processes import git_revision
from benchkit.telemetry import (
    configs,
    extract_source,
    gateway_command,
    run_config,
    schedule,
    sink,
)
from benchkit.telemetry_report import analyse, draw, markdown_report

PROTOCOLS = ("grpc", "http-binary", "http-json")
WARNING_LINE = re.compile(r"\b(WARNING|ERROR|CRITICAL|Traceback)\b")


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="loadtest/telemetry_bench.py",
        description="Throughput and latency of the gateway without telemetry, with metrics, "
        "with sampled tracing and with every request traced.",
        epilog="`loadtest/telemetry_bench.py render DIR` redraws report.md and the plot.",
    )
    add = parser.add_argument
    add("--model", default="mlp", help="model to load (default: %(default)s)")
    add("--model-version", default="", help="version to request (default: any)")
    add(
        "--model-repository",
        type=Path,
        default=Path("models/repository"),
        help="the repository the gateway serves (default: %(default)s)",
    )
    add(
        "--protocols",
        nargs="+",
        choices=PROTOCOLS,
        default=["grpc", "http-binary"],
        help="protocols, one row each per gateway (default: grpc http-binary)",
    )
    add("--concurrency", type=int, default=16, help="closed-loop workers (default: %(default)s)")
    add("--duration", type=float, default=10.0, help="measured seconds per row (default: 10)")
    add("--warmup", type=float, default=3.0, help="warm-up seconds per row (default: 3)")
    add(
        "--passes",
        type=int,
        default=2,
        help="passes over the configurations, alternately ABCD and DCBA (default: 2)",
    )
    add(
        "--trace-ratio",
        type=float,
        default=0.01,
        help="OTEL_TRACES_SAMPLER_ARG of configuration (c) (default: %(default)s)",
    )
    add(
        "--configs",
        nargs="+",
        choices=["a", "b", "c", "d"],
        default=["a", "b", "c", "d"],
        help="configurations to run (default: all four)",
    )
    add_run_options(
        add,
        client_core="the load generator and the sink",
        server_python="interpreter of `-m gateway serve` and of the sink (default: .venv's, else "
        "this)",
        wait_quiet="wait up to S s for the machine to be quiet before each gateway and each retry",
    )
    add(
        "--gateway-rev",
        default="",
        metavar="REV",
        help="serve the gateway package as committed at REV (git archive into the results "
        "folder; the server runs there) instead of the working tree, e.g. HEAD",
    )
    add(
        "--retry-noisy",
        type=int,
        default=1,
        metavar="N",
        help="measure a row again up to N times while other processes disturb it (default: 1)",
    )
    add(
        "--gateway-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra `gateway serve` argument for every configuration",
    )
    add(
        "--out",
        type=Path,
        default=Path("loadtest/results"),
        help="results go to OUT/telemetry-<timestamp>/ (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    if args.server_python is None:
        args.server_python = Path(sys.executable)
    if min(args.duration, args.passes, args.concurrency) <= 0:
        parser.error("--duration, --passes and --concurrency must be positive")
    if not 0 < args.trace_ratio <= 1:
        parser.error("--trace-ratio must be in (0, 1]")
    return args


def gateway_logs(out_dir: Path) -> dict[str, Any]:
    """Per gateway log: how many lines are warnings or worse, and the first of them."""
    found = {}
    for path in sorted(out_dir.glob("gateway-*.log")):
        lines = [
            line
            for line in path.read_text(errors="replace").splitlines()
            if WARNING_LINE.search(line)
        ]
        found[path.name] = {"warnings": len(lines), "samples": [line[:300] for line in lines[:5]]}
    return found


def lifetime_s(args: argparse.Namespace, count: int) -> float:
    row_s = args.warmup + args.duration + args.request_timeout + 60
    per_gateway = len(args.protocols) * (1 + args.retry_noisy) * (row_s + args.wait_quiet)
    return args.passes * count * (per_gateway + args.startup_timeout + args.wait_quiet + 60)


def write(results: dict[str, Any], out_dir: Path) -> None:
    analyse(results)
    results.setdefault("plots", [])
    # The figures first, so that a failing plot loses nothing.
    (out_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    results["plots"] = draw(results, out_dir)
    if not results["plots"]:
        log("matplotlib is missing: no plot (run from .venv-load, or `telemetry_bench.py render`)")
    (out_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out_dir / "report.md").write_text(markdown_report(results))


def bench_main(args: argparse.Namespace) -> int:
    os.sched_setaffinity(0, {args.client_core})  # keep this (mostly idle) process off core 0
    timestamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    out_dir = args.out / ("telemetry-" + timestamp.replace(":", "").replace("-", ""))
    out_dir.mkdir(parents=True, exist_ok=True)
    args.gateway_source = None
    gateway_commit = "working tree"
    if args.gateway_rev:
        args.gateway_source = out_dir / "gateway-src"
        gateway_commit = extract_source(args.gateway_rev, args.gateway_source)
        log(f"serving the gateway as committed at {gateway_commit} from {args.gateway_source}")
    chosen = [c for c in configs(args.trace_ratio) if c.key in args.configs]
    by_key = {c.key: c for c in chosen}
    order = schedule([c.key for c in chosen], args.passes)
    log(
        f"{len(order)} gateways ({' '.join(f'{n}{k}' for n, k in order)}), "
        f"{' + '.join(args.protocols)} x {args.concurrency} on {args.model}, "
        f"{args.warmup:g} s + {args.duration:g} s per row"
    )
    if args.wait_quiet > 0:
        wait_for_quiet(args.wait_quiet + QUIET_SAMPLE_S)
    instances: list[dict[str, Any]] = []
    runs: list[dict[str, Any]] = []
    signature: dict[str, Any] | None = None
    with sink(args, lifetime_s(args, len(chosen))) as the_sink:
        for number, key in order:
            instance, rows, signature = run_config(
                args, number, by_key[key], the_sink, out_dir, signature
            )
            instances.append(instance)
            runs += rows
        sink_total = the_sink.stats()
    results: dict[str, Any] = {
        "meta": {
            "timestamp": timestamp,
            "git": git_revision(),
            "gateway_code": gateway_commit,
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "client_affinity": sorted(os.sched_getaffinity(0)),
            "gateway_commands": {c.key: gateway_command(args, c) for c in chosen},
            "gateway_env": {c.key: c.environment(0) for c in chosen},
        },
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "configs": [asdict(c) for c in chosen],
        "order": order,
        "order_names": [
            "".join(k.upper() for n, k in order if n == number)
            for number in range(1, args.passes + 1)
        ],
        "signature": signature,
        "sink": sink_total,
        "instances": instances,
        "runs": runs,
        "gateway_logs": gateway_logs(out_dir),
    }
    write(results, out_dir)
    print(markdown_report(results))
    log(f"results in {out_dir}")
    failed = any(r["errors"] or r["warmup_errors"] for r in runs)
    return 1 if failed else 0


def render_main(out_dir: Path) -> int:
    """Recompute the figures and redraw report.md and the plot from results.json."""
    results = json.loads((out_dir / "results.json").read_text())
    write(results, out_dir)
    log(f"rendered {out_dir}: report.md, {', '.join(results['plots']) or 'no plot'}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["render"] and len(argv) == 2:
        return render_main(Path(argv[1]))
    return bench_main(parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())

"""Load benchmark: how close does the gateway get to the limit on one core?

One run measures, on the same machine, the same model file and the same payloads:

1. **Bare onnxruntime** in a subprocess pinned to the server core (intra_op_num_threads=1):
   batch-1 latency and runs/s, then samples/s per batch size. The best samples/s among the batch
   sizes the gateway accepts is **the model's limit**.
2. **The gateway** (`gateway serve`, pinned to the server core) under a closed-loop load
   generator pinned to the client core, per protocol (gRPC, HTTP binary, HTTP JSON) and
   concurrency; Triton's statistics read before and after each window give the mean executed
   batch size.
3. **Bare echo servers** (grpc.aio, aiohttp) on the server core under the same load generator:
   the same requests decoded and the same outputs encoded, no model. The best req/s of each is
   **the front end's limit** for its protocol.
4. Optionally, **minimal servers** (--minimal-servers): the gateway's own front ends (httptools,
   threaded grpcio) running the model inline on each request, no batching: what a lone request
   costs any server on those stacks, and what batching buys over none.

Each protocol's gateway figures are compared with the **combined limit** 1 / (1/model + 1/front
end), and at concurrency 1 with the latency target echo p50 + onnxruntime batch-1 p50 + 0.2 ms,
the batch-1 p50 measured again (alone, in its pinned subprocess) beside each round of the
protocol's concurrency-1 rows.
Results: `report.md`, `results.json`, `throughput.png`, `latency.png` under `--out/<timestamp>/`.
See loadtest/README.md for how to read them.

    .venv-load/bin/python loadtest/bench.py --model mlp --duration 5 --wait-quiet 120
    .venv-load/bin/python loadtest/bench.py render loadtest/results/<timestamp>
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import sys
from collections.abc import Sequence
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchkit.analysis import annotate, latency_targets, limits, minimal_checks, model_limit
from benchkit.baseline import baseline_main, model_file, run_baseline, run_batch1
from benchkit.clients import PROTOCOLS
from benchkit.echo import echo_main, echo_server
from benchkit.gateway import gateway, gateway_command, model_signature, stats_path
from benchkit.load import load_main
from benchkit.measure import QUIET_SAMPLE_S, log, wait_for_quiet
from benchkit.plots import draw
from benchkit.processes import git_revision
from benchkit.report import markdown_report
from benchkit.sweep import Target, interleaved

ECHO_KINDS = {"grpc": ["grpc"], "http": ["http-binary", "http-json"]}
"""Which echo server stands in for the gateway for each protocol."""
LEAN_ECHO_KINDS = {"http-lean": ["http-binary", "http-json"], "grpc-threaded": ["grpc"]}
"""Echoes on the gateway's own stacks: the same HTTP answers from a bare httptools protocol
(--lean-http-echo), the same gRPC answers from grpcio's threaded server (--threaded-grpc-echo).
Compared with in a section of their own, never the issue's limit."""
ECHO_TARGETS = {f"echo-{kind}" for kind in ECHO_KINDS}
LEAN_ECHO_TARGETS = [f"echo-{kind}" for kind in LEAN_ECHO_KINDS]
LEAN_PROTOCOLS = ["http-binary", "grpc"]
"""The protocols whose limit and latency target are also given against the lean echoes."""
MINIMAL_TARGETS = [f"minimal-{kind}" for kind in LEAN_ECHO_KINDS]
"""The same stacks as the lean echoes with the model inline (--minimal-servers)."""
LOOPS_ECHO_TARGET = "echo-grpc-loops"
"""The gRPC echo on several grpc.aio event loops (--multi-loop-grpc-echo N): a front end the
gateway could serve with, measured against the two it has; a reference, never a limit."""


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="loadtest/bench.py",
        description="Benchmark the gateway against bare onnxruntime and bare echo servers.",
        epilog="`loadtest/bench.py render DIR` redraws report.md and the plots from "
        "DIR/results.json.",
    )
    add = parser.add_argument
    add("--model", default="mlp", help="model to load-test (default: %(default)s)")
    add(
        "--model-repository",
        type=Path,
        default=Path("models/repository"),
        help="the repository the gateway serves (default: %(default)s)",
    )
    add(
        "--model-version",
        default="",
        help="version to request and to time bare (default: the highest one)",
    )
    add(
        "--concurrency",
        type=int,
        nargs="+",
        default=[1, 16, 64, 256],
        help="closed-loop concurrencies (default: 1 16 64 256)",
    )
    add(
        "--protocols",
        nargs="+",
        choices=PROTOCOLS,
        default=list(PROTOCOLS),
        help="protocols to measure (default: all)",
    )
    add(
        "--duration",
        type=float,
        default=10.0,
        help="measurement seconds per row (default: %(default)s)",
    )
    add("--warmup", type=float, default=2.0, help="warm-up seconds before each measurement")
    add(
        "--baseline-duration",
        type=float,
        default=None,
        help="seconds of bare onnxruntime batch-1 runs (default: --duration)",
    )
    add(
        "--batch-sizes",
        type=int,
        nargs="+",
        default=[1, 8, 32, 128],
        help="bare onnxruntime batch sizes (default: 1 8 32 128)",
    )
    add(
        "--sweep-duration",
        type=float,
        default=3.0,
        help="seconds per batch size above 1 (default: %(default)s)",
    )
    add(
        "--no-echo",
        action="store_true",
        help="skip the echo servers (no front-end or combined limit)",
    )
    parser.add_argument(
        "--lean-http-echo",
        action="store_true",
        help="also measure the HTTP echo on a bare httptools protocol (a reference: what a "
        "Python HTTP front end costs without a web framework; it sets no limit)",
    )
    parser.add_argument(
        "--threaded-grpc-echo",
        action="store_true",
        help="also measure the gRPC echo on grpcio's threaded server, the gateway's own gRPC "
        "stack (a reference; it sets no limit)",
    )
    add(
        "--multi-loop-grpc-echo",
        type=int,
        default=0,
        metavar="N",
        help="also measure the gRPC echo on N grpc.aio servers, each on its own event loop and "
        "thread, sharing one port (a reference; give --grpc-channels N or more so that every "
        "loop gets connections; default 0: not measured)",
    )
    add(
        "--minimal-servers",
        action="store_true",
        help="also measure minimal servers: the gateway's own front ends (httptools, threaded "
        "grpcio) running the model inline on each request, no batching (a reference)",
    )
    add("--server-core", type=int, default=0, help="core for the servers and bare onnxruntime")
    add("--client-core", type=int, default=1, help="core for the load generator")
    add("--request-timeout", type=float, default=10.0, help="seconds before a request fails")
    add("--startup-timeout", type=float, default=120.0, help="seconds for a server to start")
    add("--seed", type=int, default=0, help="seed of the random input rows")
    add(
        "--grpc-channels",
        type=int,
        default=1,
        help="gRPC channels (TCP connections) the workers share (default: %(default)s)",
    )
    add(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="S",
        help="wait up to S seconds for the machine to be quiet: before starting, and before "
        "measuring a disturbed row again",
    )
    add(
        "--retry-noisy",
        type=int,
        default=1,
        metavar="N",
        help="measure a row again up to N times while other processes disturb it "
        "(default: %(default)s)",
    )
    add(
        "--repeat",
        type=int,
        default=1,
        metavar="N",
        help="measure each round of a protocol and concurrency N times in a row; each row is "
        "the repeat with the median samples/s, the others kept beside it (default: "
        "%(default)s)",
    )
    add(
        "--gateway-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra `gateway serve` argument, e.g. --gateway-arg=--inference-threads=1",
    )
    add(
        "--out",
        type=Path,
        default=Path("loadtest/results"),
        help="results go to OUT/<timestamp>/ (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    if args.multi_loop_grpc_echo < 0:
        parser.error("--multi-loop-grpc-echo takes a number of loops (0: not measured)")
    if args.baseline_duration is None:
        args.baseline_duration = args.duration
    return args


def echo_lifetime_s(args: argparse.Namespace, targets: int) -> float:
    """Longest an echo server may be needed: every row of `targets` servers and the bare
    batch-1 runs beside the concurrency-1 rows (a model load, then two windows), every retry,
    every wait for quiet."""
    row_s = args.warmup + args.duration + args.request_timeout + 30
    bare_s = 2 * (args.warmup + args.duration) + 60
    quiet_s = args.wait_quiet + QUIET_SAMPLE_S
    rows = targets * len(args.protocols) * len(args.concurrency) * args.repeat
    bare_runs = len(args.protocols) * args.repeat
    retries = 1 + args.retry_noisy
    return float(
        rows * retries * (row_s + quiet_s)
        + bare_runs * retries * (bare_s + quiet_s)
        + args.startup_timeout
    )


def _serving(kinds: dict[str, list[str]], protocols: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """Each kind that serves any of `protocols`, with those it serves."""
    chosen = {kind: tuple(p for p in protocols if p in served) for kind, served in kinds.items()}
    return {kind: serves for kind, serves in chosen.items() if serves}


def start_echoes(
    args: argparse.Namespace, signature: dict[str, Any], out_dir: Path, stack: ExitStack
) -> list[Target]:
    """The echo (and minimal) servers the run compares with, started and left running for its
    rows."""
    kinds = {} if args.no_echo else dict(ECHO_KINDS)
    wanted = {"http-lean": args.lean_http_echo, "grpc-threaded": args.threaded_grpc_echo}
    kinds.update((kind, served) for kind, served in LEAN_ECHO_KINDS.items() if wanted[kind])
    if args.multi_loop_grpc_echo > 0:
        kinds["grpc-loops"] = ["grpc"]
    servers: list[tuple[str, str, tuple[str, ...], Path | None]] = [
        ("echo", kind, protocols, None)
        for kind, protocols in _serving(kinds, args.protocols).items()
    ]
    if args.minimal_servers:
        model = model_file(args).resolve()
        servers += [
            ("minimal", kind, protocols, model)
            for kind, protocols in _serving(LEAN_ECHO_KINDS, args.protocols).items()
        ]
    lifetime_s = echo_lifetime_s(args, 1 + len(servers))
    targets = []
    for role, kind, protocols, model_path in servers:
        name = f"{role}-{kind}"
        server = stack.enter_context(
            echo_server(
                kind, args, signature, out_dir / f"{name}.log", lifetime_s, model_file=model_path
            )
        )
        log(f"{server.name} ready: pid {server.pid}")
        targets.append(Target(name, server, protocols))
    return targets


def analyse(results: dict[str, Any]) -> None:
    """Limits, ratios and the latency target, from the measured figures (also on render)."""
    limit = model_limit(
        results["baseline"], results["signature"]["max_batch_size"], results.get("baseline_end")
    )
    results["model_limit"] = limit
    results["limits"] = limits(limit, results["echo_runs"], results["settings"]["protocols"])
    annotate(results["runs"], results["limits"])
    annotate(results["echo_runs"], results["limits"])
    beside = results.get("batch1_beside_rows") or {}  # none in runs before 2026-12-07
    results["latency_targets"] = latency_targets(
        results["runs"], results["echo_runs"], results["baseline"], beside
    )
    lean = results.setdefault("lean_echo_runs", [])
    if lean:  # the gateway's own stacks (httptools, threaded grpcio) as the front ends
        protocols = [p for p in LEAN_PROTOCOLS if any(r["protocol"] == p for r in lean)]
        results["lean_limits"] = limits(limit, lean, protocols)
        annotate(lean, results["lean_limits"])
        runs = [r for r in results["runs"] if r["protocol"] in protocols]
        results["lean_latency_targets"] = latency_targets(runs, lean, results["baseline"], beside)
    minimal = results.setdefault("minimal_runs", [])
    annotate(minimal, results["limits"])
    annotate(results.setdefault("loops_echo_runs", []), results["limits"])
    results["minimal_checks"] = minimal_checks(results["runs"], minimal)


def write(results: dict[str, Any], out_dir: Path) -> None:
    results["plots"] = draw(results, out_dir)
    if not results["plots"]:
        log("matplotlib is missing: no plots (pip install -e '.[load]', then `bench.py render`)")
    (out_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out_dir / "report.md").write_text(markdown_report(results))


def bench_main(args: argparse.Namespace) -> int:
    os.sched_setaffinity(0, {args.client_core})  # keep this (mostly idle) process off core 0
    timestamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    out_dir = args.out / timestamp.replace(":", "").replace("-", "")
    out_dir.mkdir(parents=True, exist_ok=True)
    if args.wait_quiet > 0:
        wait_for_quiet(args.wait_quiet)
    baseline = run_baseline(args)
    with ExitStack() as stack:
        server = stack.enter_context(gateway(args, out_dir / "gateway.log"))
        signature = model_signature(server, args.model, args.model_version)
        server_affinity = sorted(os.sched_getaffinity(server.pid))
        echoes = start_echoes(args, signature, out_dir, stack)
        path = stats_path(args.model, args.model_version)
        gateway_target = Target("gateway", server, tuple(args.protocols), path)
        # Each row's echo first, then the gateway, then the references (if asked for).
        order = [t for t in echoes if t.name in ECHO_TARGETS] + [gateway_target]
        order += [t for t in echoes if t.name not in ECHO_TARGETS]
        rows, batch1 = interleaved(
            args, signature, order, bare_batch1=functools.partial(run_batch1, args)
        )
    runs = rows.pop("gateway")
    lean_runs = [run for target in LEAN_ECHO_TARGETS for run in rows.pop(target, [])]
    minimal_runs = [run for target in MINIMAL_TARGETS for run in rows.pop(target, [])]
    loops_runs = rows.pop(LOOPS_ECHO_TARGET, [])
    echo_runs = [run for target_rows in rows.values() for run in target_rows]
    baseline_end = run_baseline(args)  # the model's limit again, after the servers' rows
    results: dict[str, Any] = {
        "meta": {
            "timestamp": timestamp,
            "git": git_revision(),
            "python": platform.python_version(),
            "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            "server_affinity": server_affinity,
            "order": "interleaved",
            "gateway_command": gateway_command(args.model_repository, args.gateway_arg),
        },
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "signature": signature,
        "baseline": baseline,
        "baseline_end": baseline_end,
        "batch1_beside_rows": batch1,
        "runs": runs,
        "echo_runs": echo_runs,
        "lean_echo_runs": lean_runs,
        "minimal_runs": minimal_runs,
        "loops_echo_runs": loops_runs,
    }
    analyse(results)
    write(results, out_dir)
    print(markdown_report(results))
    log(f"results in {out_dir}")
    checked = runs + echo_runs + lean_runs + minimal_runs + loops_runs
    return 1 if any(r["flagged"] for r in checked) else 0


def render_main(out_dir: Path) -> int:
    """Recompute the analysis and redraw report.md and the plots from results.json."""
    results = json.loads((out_dir / "results.json").read_text())
    analyse(results)
    write(results, out_dir)
    log(f"rendered {out_dir}: report.md, {', '.join(results['plots']) or 'no plots'}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    jobs = {"_baseline": baseline_main, "_load": load_main}
    if argv and argv[0] in jobs:  # internal: a pinned subprocess, job on stdin, result on stdout
        print(json.dumps(jobs[argv[0]](json.load(sys.stdin))))
        return 0
    if argv[:1] == ["_echo"]:  # internal: an echo server, job as the argument
        return echo_main(json.loads(argv[1]))
    if argv[:1] == ["render"] and len(argv) == 2:
        return render_main(Path(argv[1]))
    return bench_main(parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())

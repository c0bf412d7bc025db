"""The telemetry run: the same load against fresh gateways that differ only in their telemetry.

Each configuration is a fresh `gateway serve` pinned to the server core; the load generator is
bench.py's `_load` subprocess pinned to the client core (one row per protocol, warm-up then a
fixed window); traced configurations export over OTLP/HTTP to a sink (`otlp_sink.py`) pinned to
the client core too, so exporting really happens and its cost lands on the server.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .gateway import load_document, model_signature, running_gateway, stats_path
from .measure import NOISY_PCT, cpu_seconds, log, wait_for_quiet
from .processes import ROOT, RunningServer, get_json, run_pinned
from .stats import _totals

SINK_SCRIPT = Path(__file__).with_name("otlp_sink.py")
INHERITED_PREFIXES = ("OTEL_", "GATEWAY_")
"""Variables of ours that would change the gateway's telemetry: never passed on."""


@dataclass(frozen=True, slots=True)
class Config:
    """One telemetry configuration: its gateway options and environment."""

    key: str
    name: str
    description: str
    args: tuple[str, ...] = ()
    sampler_ratio: float | None = None
    """None: no tracing; else `--tracing` with parentbased_traceidratio at this ratio."""
    env: dict[str, str] = field(default_factory=dict)

    def environment(self, sink_port: int) -> dict[str, str]:
        if self.sampler_ratio is None:
            return dict(self.env)
        return {
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{sink_port}",
            "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
            "OTEL_TRACES_SAMPLER_ARG": f"{self.sampler_ratio:g}",
            "OTEL_SERVICE_NAME": "telemetry-bench",
            **self.env,
        }


def configs(trace_ratio: float) -> list[Config]:
    """(a) no telemetry, (b) metrics (the default), (c) tracing at `trace_ratio`, (d) all."""
    return [
        Config("a", "no-metrics", "`--no-metrics`: no telemetry at all", ("--no-metrics",)),
        Config("b", "metrics", "default: metrics on, tracing off"),
        Config(
            "c",
            f"trace-{100 * trace_ratio:g}%",
            f"`--tracing`, parentbased_traceidratio {trace_ratio:g}",
            ("--tracing",),
            trace_ratio,
        ),
        Config("d", "trace-100%", "`--tracing`, parentbased_traceidratio 1.0", ("--tracing",), 1.0),
    ]


def schedule(keys: list[str], passes: int) -> list[tuple[int, str]]:
    """(pass, key) in ABCD DCBA ABCD ... order: a drift linear in time hits all alike."""
    order = []
    for number in range(passes):
        order += [(number + 1, key) for key in (keys if number % 2 == 0 else keys[::-1])]
    return order


class Sink:
    """The OTLP/HTTP sink process, pinned to the client core."""

    def __init__(self, process: subprocess.Popen[bytes], port: int) -> None:
        self.process = process
        self.port = port

    @property
    def pid(self) -> int:
        return self.process.pid

    def stats(self) -> dict[str, Any]:
        url = f"http://127.0.0.1:{self.port}/stats"
        with urllib.request.urlopen(url, timeout=10) as answer:
            document: dict[str, Any] = json.loads(answer.read())
        return document

    def cpu_s(self) -> float:
        return cpu_seconds(self.pid)


@contextlib.contextmanager
def sink(args: argparse.Namespace, lifetime_s: float) -> Iterator[Sink]:
    command = [
        "taskset",
        "-c",
        str(args.client_core),
        str(args.server_python),
        str(SINK_SCRIPT),
        "--lifetime",
        f"{lifetime_s:.0f}",
    ]
    log(f"starting the OTLP sink: {' '.join(command)}")
    process = subprocess.Popen(command, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert process.stdout is not None
        line = process.stdout.readline().decode().split()
        if len(line) != 2 or line[0] != "port":
            raise SystemExit(f"telemetry_bench: the OTLP sink did not start: {line}")
        running = Sink(process, int(line[1]))
        log(f"OTLP sink on 127.0.0.1:{running.port}, pid {running.pid}")
        yield running
    finally:
        if process.stdin is not None:
            process.stdin.close()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def gateway_command(args: argparse.Namespace, config: Config) -> list[str]:
    repository = (ROOT / args.model_repository).resolve()
    serve = [str(args.server_python), "-m", "gateway", "serve", "--model-repository"]
    ports = ["--http-port", "0", "--grpc-port", "0"]
    return [*serve, str(repository), *ports, *config.args, *args.gateway_arg]


def extract_source(revision: str, into: Path) -> str:
    """`git archive <revision> gateway` into `into`: the gateway's code as committed, so that
    edits to the working tree during the run (other people's) change nothing measured.
    Returns the full commit id."""
    commit = subprocess.run(
        ["git", "rev-parse", "--verify", f"{revision}^{{commit}}"],
        cwd=ROOT,
        capture_output=True,
        check=True,
        text=True,
    ).stdout.strip()
    into.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(
        ["git", "archive", commit, "gateway"], cwd=ROOT, capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return commit


def gateway_env(config: Config, sink_port: int) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(INHERITED_PREFIXES)}
    return {**base, **config.environment(sink_port)}


@contextlib.contextmanager
def gateway(
    args: argparse.Namespace, config: Config, sink_port: int, log_file: Path
) -> Iterator[RunningServer]:
    """A fresh gateway with `config`'s telemetry on the server core; SIGTERM at the end."""
    command = ["taskset", "-c", str(args.server_core), *gateway_command(args, config)]
    env = gateway_env(config, sink_port)
    log(f"starting ({config.key}: {config.name}): {' '.join(command)}")
    cwd = args.gateway_source or ROOT  # `-m gateway` imports the package found in cwd first
    with running_gateway(
        command,
        log_file,
        args.startup_timeout,
        name=f"the gateway ({config.name})",
        env=env,
        cwd=cwd,
    ) as server:
        log(f"  ready: pid {server.pid}, HTTP {server.http_port}, gRPC {server.grpc_port}")
        yield server


def load_job(
    args: argparse.Namespace, server: RunningServer, signature: dict[str, Any], protocol: str
) -> dict[str, Any]:
    return load_document(
        args,
        server,
        signature,
        protocol=protocol,
        concurrency=args.concurrency,
        model_version=args.model_version,
        stats_path=stats_path(args.model, args.model_version),
    )


def disturbance(run: dict[str, Any]) -> float:
    """Other processes' CPU (% of a core) in the row, the sink's own share taken out."""
    return float(max(0.0, run["other_cpu_pct"] - run["sink_cpu_pct"]) + run["steal_pct"])


def measure_row(
    args: argparse.Namespace, server: RunningServer, job: dict[str, Any], the_sink: Sink
) -> dict[str, Any]:
    """One row (warm-up + window); measured again (up to --retry-noisy times) while other
    processes disturbed it, keeping the quietest attempt. The sink's CPU over the whole
    attempt is subtracted from `other` before judging."""
    budget = args.warmup + args.duration + args.request_timeout + 60
    attempts: list[dict[str, Any]] = []
    for attempt in range(1 + args.retry_noisy):
        if attempt:
            log(f"  other processes used {disturbance(attempts[-1]):.0f} % of a core; again")
            if args.wait_quiet > 0:
                wait_for_quiet(args.wait_quiet)
        sink_before, wall_before = the_sink.cpu_s(), time.perf_counter()
        run = run_pinned(args.client_core, "_load", job, budget)
        run["sink_cpu_pct"] = (
            100 * (the_sink.cpu_s() - sink_before) / (time.perf_counter() - wall_before)
        )
        attempts.append(run)
        server.check_alive()
        if disturbance(run) < NOISY_PCT:
            break
    run = min(attempts, key=disturbance)
    run["attempts"] = len(attempts)
    run["other_excl_sink_pct"] = max(0.0, run["other_cpu_pct"] - run["sink_cpu_pct"])
    return run


def metrics_status(server: RunningServer) -> int | str:
    """HTTP status of GET /metrics (200 with metrics on, 404 off), or why it failed."""
    try:
        with urllib.request.urlopen(server.url("/metrics"), timeout=10) as answer:
            answer.read()
            return int(answer.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (urllib.error.URLError, OSError) as exc:
        return f"{type(exc).__name__}: {exc}"[:200]


def inference_count(server: RunningServer, args: argparse.Namespace) -> int | None:
    try:
        document = get_json(server, stats_path(args.model, args.model_version))
    except (urllib.error.URLError, OSError, ValueError):
        return None
    return _totals(document, args.model)["inference_count"]


def exported(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """What the sink received between two of its snapshots."""
    names = set(before["spans_by_name"]) | set(after["spans_by_name"])
    return {
        "requests": after["requests"] - before["requests"],
        "bytes": after["bytes"] - before["bytes"],
        "spans": None if after["spans"] is None else after["spans"] - before["spans"],
        "spans_by_name": {
            n: count
            for n in sorted(names)
            if (count := after["spans_by_name"].get(n, 0) - before["spans_by_name"].get(n, 0))
        },
        "decode_errors": after["decode_errors"] - before["decode_errors"],
    }


def run_config(
    args: argparse.Namespace,
    number: int,
    config: Config,
    the_sink: Sink,
    out_dir: Path,
    signature: dict[str, Any] | None,
) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, Any]]:
    """One configuration in one pass: a fresh gateway, one row per protocol, then what it
    exported (counted after it stopped, so its final flush is in)."""
    if args.wait_quiet > 0:
        wait_for_quiet(args.wait_quiet)
    log_name = f"gateway-{number}{config.key}-{config.name.replace('%', 'pct')}.log"
    sink_before = the_sink.stats()
    rows = []
    with gateway(args, config, the_sink.port, out_dir / log_name) as server:
        if signature is None:
            signature = model_signature(server, args.model, args.model_version)
        for protocol in args.protocols:
            job = load_job(args, server, signature, protocol)
            log(
                f"pass {number} {config.key} ({config.name}) {protocol} x {args.concurrency}: "
                f"{args.warmup:g} s + {args.duration:g} s"
            )
            run = measure_row(args, server, job, the_sink)
            run.update({"pass": number, "config": config.key, "config_name": config.name})
            log(
                f"  {run['requests_per_s']:.0f} req/s, p50 {run['latency_ms']['p50'] or 0:.3f} "
                f"ms, p99 {run['latency_ms']['p99'] or 0:.3f} ms, "
                f"{run['server_cpu_us_per_request'] or 0:.0f} us/req, {run['errors']} errors, "
                f"sink {run['sink_cpu_pct']:.1f} %"
            )
            rows.append(run)
        instance = {
            "pass": number,
            "config": config.key,
            "config_name": config.name,
            "pid": server.pid,
            "metrics_status": metrics_status(server),
            "inference_count": inference_count(server, args),
            "log": log_name,
            "server_affinity": sorted(os.sched_getaffinity(server.pid)),
        }
    time.sleep(0.5)  # the last export call answered before the gateway exited; be safe
    instance["exported"] = exported(sink_before, the_sink.stats())
    spans = instance["exported"]["spans"]
    count = instance["inference_count"]
    instance["spans_per_request"] = spans / count if spans is not None and count else None
    return instance, rows, signature

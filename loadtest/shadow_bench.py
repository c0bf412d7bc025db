"""Shadow benchmark: what does a 100 % shadow cost the callers, and who gives way under overload?

One run, one gateway (`gateway serve` from the dev environment, pinned to the server core)
serving a temporary repository with model `mlp` in two versions (copies of the demo's version
1, so they must agree on every answer). The load generator (pinned to the client core) sends
batch-1 requests with no version, routed by the traffic policy, in an OPEN loop at a fixed rate
(by default --load-fraction of what one core sustains at batch 1, measured first by a short
closed-loop probe); each request's latency counts from when it was due. Phases of equal length
in ABBA order (plain, shadow, shadow, plain, ...), each started by
`PUT /v2/models/mlp/traffic`:

- **plain**: `{"weights": {"1": 100}}`;
- **shadow**: the same plus `"shadows": [{"version": "2", "percent": 100}]`.

Per kind of phase: p50/p90/p99/max, errors, server CPU; the ratio p99(shadow) / p99(plain)
(target <= 1.1); the shadow comparisons from `GET .../traffic` (agreement must be 100 %).
Then the overload: the shadow policy, a primary line of --queue-size (64), a closed loop ramped
up to --overload-concurrency (256) workers, the traffic sampled every --sample-interval s:
primary refusals (429 / RESOURCE_EXHAUSTED), shadow drops, and which came first.
Results: `report.md`, `results.json`, `requests.npz`, `cdf.png`, `timeline.png`,
`overload.png`, `gateway.log` under `--out/shadow-<timestamp>/`. See loadtest/README.md.

    .venv-load/bin/python loadtest/shadow_bench.py
    .venv-load/bin/python loadtest/shadow_bench.py render loadtest/results/shadow-<timestamp>
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import urllib.error
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from benchkit.clients import LoadJob
from benchkit.gateway import load_document, model_path, model_signature
from benchkit.measure import log, wait_for_quiet
from benchkit.options import add_run_options
from benchkit.processes import ROOT, RunningServer, get_json, git_revision
from benchkit.shadow import ARRIVALS, ShadowJob, run
from benchkit.shadow_analysis import analyse, exit_status, shadow_arrays
from benchkit.shadow_plots import draw
from benchkit.shadow_report import markdown_report
from swap_bench import PROTOCOL_NAMES, gateway, gateway_command, gateway_log, pin_self

PRIMARY, SHADOW_VERSION = "1", "2"
VERSION_POLICY = "version_policy { all { } }"
COLUMNS = ("start", "sent", "done", "ok", "refused")
"""The per-request columns kept in requests.npz (the overload's with an `overload_` prefix)."""


WAIT_QUIET_HELP = "wait up to S seconds for the machine to be quiet before starting"


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="loadtest/shadow_bench.py",
        description="Primary latency at a fixed moderate load with and without a 100 % "
        "shadow, and shadow drops versus primary refusals under overload.",
        epilog="`loadtest/shadow_bench.py render DIR` redraws report.md and the plots.",
    )
    add = parser.add_argument
    add("--model", default="mlp", help="demo model copied as versions 1 and 2 (default: mlp)")
    add(
        "--source-repository",
        type=Path,
        default=Path("models/repository"),
        help="where the model is copied from; built with models/build_repository.py "
        "--skip-wide if missing (default: %(default)s)",
    )
    add(
        "--protocol",
        choices=list(PROTOCOL_NAMES),
        default="grpc",
        help="protocol of the load (default: %(default)s; http = binary tensors)",
    )
    add(
        "--rate",
        type=float,
        default=0.0,
        help="open-loop requests per second (default: --load-fraction x the probed capacity)",
    )
    add(
        "--load-fraction",
        type=float,
        default=0.45,
        help="share of the batch-1 capacity of one core to offer (default: %(default)s)",
    )
    add("--arrivals", choices=ARRIVALS, default="uniform", help="gaps between requests")
    add("--probe-duration", type=float, default=3.0, help="seconds of the capacity probe")
    add("--duration", type=float, default=15.0, help="seconds per phase (default: %(default)s)")
    add(
        "--rounds",
        type=int,
        default=2,
        help="pairs of phases, one plain and one shadow each (default: %(default)s)",
    )
    add("--warmup", type=float, default=4.0, help="seconds of load before the first phase")
    add(
        "--max-in-flight",
        type=int,
        default=1024,
        help="open-loop requests in flight at most; a due request beyond it fails unsent",
    )
    add("--queue-size", type=int, default=64, help="the gateway's --default-max-queue-size")
    add("--overload-concurrency", type=int, default=256, help="closed-loop workers at the top")
    add("--overload-duration", type=float, default=10.0, help="seconds of overload, ramp included")
    add("--overload-ramp", type=float, default=2.0, help="seconds to start every worker")
    add("--sample-interval", type=float, default=0.2, help="seconds between traffic GETs")
    add_run_options(
        add,
        client_core="the load generator",
        server_python="interpreter that runs `-m gateway serve` (default: .venv's, else this one)",
        wait_quiet=WAIT_QUIET_HELP,
        seed="seed of the random input rows and arrivals",
    )
    add(
        "--admin-token",
        default="",
        help="admin token: given to the gateway (GATEWAY_ADMIN_TOKEN) and sent with each PUT",
    )
    add(
        "--gateway-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra `gateway serve` argument, e.g. --gateway-arg=--shadow-threads=2",
    )
    add(
        "--out",
        type=Path,
        default=Path("loadtest/results"),
        help="results go to OUT/shadow-<timestamp>/ (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    if args.server_python is None:
        args.server_python = Path(sys.executable)
    positive = (args.duration, args.rounds, args.overload_concurrency, args.max_in_flight)
    if min(*positive, args.queue_size, args.sample_interval, args.probe_duration) <= 0:
        parser.error("durations, rounds, sizes and intervals must be positive")
    if args.rate < 0 or not 0 < args.load_fraction <= 1:
        parser.error("--rate must be >= 0 and --load-fraction in (0, 1]")
    return args


def ensure_source(args: argparse.Namespace) -> Path:
    """The demo model's directory, building the demo repository first if it is missing."""
    source: Path = (ROOT / args.source_repository).resolve()
    model_dir: Path = source / args.model
    if not (model_dir / "1").is_dir():
        log(f"building the demo repository into {source}")
        build = ROOT / "models" / "build_repository.py"
        command = [str(args.server_python), str(build), "--output", str(source), "--skip-wide"]
        subprocess.run(command, cwd=ROOT, check=True)
    return model_dir


def two_versions(model_dir: Path, repository: Path) -> str:
    """`<repository>/<model>/{1,2}`: copies of the demo's version 1, served together; the
    demo's config (same batching) with every version loaded. Returns the config."""
    target = repository / model_dir.name
    for version in (PRIMARY, SHADOW_VERSION):
        shutil.copytree(model_dir / "1", target / version)
    config = (model_dir / "config.pbtxt").read_text().rstrip() + f"\n{VERSION_POLICY}\n"
    (target / "config.pbtxt").write_text(config)
    return config


@contextmanager
def repository(args: argparse.Namespace) -> Iterator[tuple[Path, str]]:
    """A temporary repository with the two versions; removed when the block ends."""
    model_dir = ensure_source(args)
    directory = Path(tempfile.mkdtemp(prefix="shadow-bench-"))
    try:
        yield directory, two_versions(model_dir, directory)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def serve_args(args: argparse.Namespace, directory: Path) -> argparse.Namespace:
    """swap_bench's gateway settings: the temporary repository and the small primary line."""
    extra = ["--default-max-queue-size", str(args.queue_size), *args.gateway_arg]
    return argparse.Namespace(**{**vars(args), "model_repository": directory, "gateway_arg": extra})


def check_versions(server: RunningServer, model: str) -> None:
    for version in (PRIMARY, SHADOW_VERSION):
        try:
            get_json(server, model_path(model, version))
        except urllib.error.HTTPError as exc:
            raise SystemExit(
                f"shadow_bench: {model} version {version} is not served: {exc}"
            ) from exc


def shadow_job(args: argparse.Namespace, server: RunningServer) -> ShadowJob:
    check_versions(server, args.model)
    signature = model_signature(server, args.model, PRIMARY)
    load = load_document(
        args,
        server,
        signature,
        protocol=PROTOCOL_NAMES[args.protocol],
        concurrency=args.max_in_flight,
        model_version="",  # routed by the traffic policy
    )
    return ShadowJob(
        load=LoadJob.from_json(load),
        traffic_url=server.url(traffic_path(args)),
        admin_token=args.admin_token,
        primary=PRIMARY,
        shadow=SHADOW_VERSION,
        rate=args.rate,
        load_fraction=args.load_fraction,
        arrivals=args.arrivals,
        probe_s=args.probe_duration,
        phase_s=args.duration,
        rounds=args.rounds,
        overload_concurrency=args.overload_concurrency,
        overload_s=args.overload_duration,
        overload_ramp_s=args.overload_ramp,
        sample_s=args.sample_interval,
    )


def traffic_path(args: argparse.Namespace) -> str:
    return f"/v2/models/{args.model}/traffic"


def load_arrays(requests: dict[str, Any], overload: dict[str, Any]) -> tuple[Any, Any]:
    return shadow_arrays(requests), shadow_arrays(overload)


def write(results: dict[str, Any], arrays: Any, over_arrays: Any, out_dir: Path) -> None:
    analyse(results, arrays, over_arrays)
    results["plots"] = draw(results, arrays, over_arrays, out_dir)
    if not results["plots"]:
        log("matplotlib is missing: no plots (run from .venv-load, or `shadow_bench.py render`)")
    (out_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out_dir / "report.md").write_text(markdown_report(results))


def bench_main(args: argparse.Namespace) -> int:
    timestamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    out_dir = args.out / ("shadow-" + timestamp.replace(":", "").replace("-", ""))
    out_dir.mkdir(parents=True, exist_ok=True)
    if args.wait_quiet > 0:
        wait_for_quiet(args.wait_quiet)
    pin_self(args.client_core)
    with repository(args) as (directory, config):
        served = serve_args(args, directory)
        with gateway(served, out_dir / "gateway.log") as server:
            job = shadow_job(args, server)
            server_affinity = sorted(os.sched_getaffinity(server.pid))
            phases = 2 * args.rounds
            log(
                f"probe {args.probe_duration:g} s, {args.warmup:g} s warm-up + {phases} phases "
                f"of {args.duration:g} s, {args.protocol} open loop on {args.model}, then "
                f"{args.overload_duration:g} s of overload x {args.overload_concurrency}"
            )
            measured = run(job)
            server.check_alive()
        command = gateway_command(served)
    requests = measured.pop("requests")
    overload = measured.pop("overload_requests")
    np.savez_compressed(
        out_dir / "requests.npz",
        **{k: requests[k] for k in COLUMNS},
        **{f"overload_{k}": overload[k] for k in COLUMNS},
    )
    results: dict[str, Any] = {
        "meta": {
            "timestamp": timestamp,
            "git": git_revision(),
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "server_affinity": server_affinity,
            "client_affinity": sorted(os.sched_getaffinity(0)),
            "gateway_command": command,
            "config_pbtxt": config,
        },
        "settings": {
            **{k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "primary": PRIMARY,
            "shadow": SHADOW_VERSION,
        },
        "traffic_url_path": traffic_path(args),
        "gateway_log": gateway_log(out_dir / "gateway.log"),
        **measured,
    }
    results["settings"].pop("admin_token")
    arrays, over_arrays = load_arrays(requests, overload)
    write(results, arrays, over_arrays, out_dir)
    print(markdown_report(results))
    log(f"results in {out_dir}")
    return exit_status(results)


def render_main(out_dir: Path) -> int:
    """Recompute the figures and redraw report.md and the plots from results.json."""
    results = json.loads((out_dir / "results.json").read_text())
    with np.load(out_dir / "requests.npz") as stored:
        requests = {k: stored[k] for k in COLUMNS}
        overload = {k: stored[f"overload_{k}"] for k in COLUMNS}
    arrays, over_arrays = load_arrays(requests, overload)
    write(results, arrays, over_arrays, out_dir)
    log(f"rendered {out_dir}: report.md, {', '.join(results['plots']) or 'no plots'}")
    return exit_status(results)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["render"] and len(argv) == 2:
        return render_main(Path(argv[1]))
    return bench_main(parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())

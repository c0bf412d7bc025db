"""Hot-swap benchmark: does reloading one model disturb the requests to another?

One run, one gateway (`gateway serve` from the dev environment, pinned to the server core), one
closed-loop load generator on model A (pinned to the client core) running without a break
through phases of equal length, in ABBA order (steady, swap, swap, steady, ...):

- **steady**: nothing else happens;
- **swap**: model B is reloaded over and over through the admin API, one call after another
  (`POST /v2/repository/models/B/load` with `{"parameters": {"reload": true}}`).

Per kind of phase: model A's p50/p90/p99/max latency, errors and the server's CPU time; the
ratio p99(swap) / p99(steady) (target <= 1.2), the swaps done and how long they took.
Results: `report.md`, `results.json`, `requests.npz`, `timeline.png`, `cdf.png`, `gateway.log`
under `--out/swap-<timestamp>/`. See loadtest/README.md.

    .venv-load/bin/python loadtest/swap_bench.py
    .venv-load/bin/python loadtest/swap_bench.py render loadtest/results/swap-<timestamp>
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import sys
import urllib.error
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from benchkit.clients import LoadJob
from benchkit.gateway import load_document, model_path, model_signature, running_gateway
from benchkit.measure import log, wait_for_quiet
from benchkit.options import add_run_options
from benchkit.processes import (
    ROOT,
    RunningServer,
    get_json,
    git_revision,
)
from benchkit.swap import SwapJob, run
from benchkit.swap_analysis import analyse, exit_status, request_arrays
from benchkit.swap_plots import draw
from benchkit.swap_report import markdown_report

PROTOCOL_NAMES = {
    "grpc": "grpc",
    "http": "http-binary",
    "http-binary": "http-binary",
    "http-json": "http-json",
}
"""`--protocol` choices and the load generator's client for each (`http`: binary tensors)."""
SWAP_BODY: dict[str, Any] = {"parameters": {"reload": True}}
"""Re-read and swap every version of the model even when unchanged on disk."""
WARNING_LINE = re.compile(r"\b(WARNING|ERROR|CRITICAL|Traceback)\b")


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="loadtest/swap_bench.py",
        description="Latency of one model under load while another is reloaded over and over.",
        epilog="`loadtest/swap_bench.py render DIR` redraws report.md and the plots.",
    )
    add = parser.add_argument
    add("--model", default="mlp", help="model A, under load (default: %(default)s)")
    add("--swap-model", default="mlp_wide", help="model B, reloaded (default: %(default)s)")
    add("--model-version", default="", help="version of model A to request (default: any)")
    add(
        "--model-repository",
        type=Path,
        default=Path("models/repository"),
        help="the repository the gateway serves (default: %(default)s)",
    )
    add(
        "--protocol",
        choices=list(PROTOCOL_NAMES),
        default="grpc",
        help="protocol of the load on model A (default: %(default)s; http = binary tensors)",
    )
    add("--concurrency", type=int, default=8, help="closed-loop workers (default: %(default)s)")
    add("--duration", type=float, default=10.0, help="seconds per phase (default: %(default)s)")
    add(
        "--rounds",
        type=int,
        default=2,
        help="pairs of phases, one steady and one swap each (default: %(default)s)",
    )
    add("--warmup", type=float, default=3.0, help="seconds of load before the first phase")
    add(
        "--settle",
        type=float,
        default=0.5,
        help="seconds at the end of a swap phase with no swap running, counted in the phase "
        "(what follows a reload belongs to it) (default: %(default)s)",
    )
    add("--swap-timeout", type=float, default=120.0, help="seconds before a swap call fails")
    add_run_options(
        add,
        client_core="the load generator and swapper",
        server_python="interpreter that runs `-m gateway serve` (default: .venv's, else this one)",
        wait_quiet="wait up to S seconds for the machine to be quiet before starting",
    )
    add(
        "--admin-token",
        default="",
        help="admin token: given to the gateway (GATEWAY_ADMIN_TOKEN) and sent with each swap",
    )
    add(
        "--gateway-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra `gateway serve` argument, e.g. --gateway-arg=--load-threads=1",
    )
    add(
        "--out",
        type=Path,
        default=Path("loadtest/results"),
        help="results go to OUT/swap-<timestamp>/ (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    if args.server_python is None:
        args.server_python = Path(sys.executable)
    if min(args.duration, args.rounds, args.concurrency) <= 0:
        parser.error("--duration, --rounds and --concurrency must be positive")
    return args


def pinned(core: int, command: list[str]) -> list[str]:
    """`command` on `core`: with taskset, else through a Python shim; unpinned if no such core."""
    if core not in range(os.cpu_count() or 1):
        log(f"there is no core {core}: the gateway runs unpinned")
        return command
    if shutil.which("taskset"):
        return ["taskset", "-c", str(core), *command]
    log("taskset is missing: pinning the gateway with os.sched_setaffinity")
    shim = (
        f"import os, sys; os.sched_setaffinity(0, {{{core}}}); os.execv(sys.argv[1], sys.argv[1:])"
    )
    return [sys.executable, "-c", shim, *command]


def pin_self(core: int) -> None:
    try:
        os.sched_setaffinity(0, {core})
    except (OSError, AttributeError) as exc:
        log(f"the load generator runs unpinned: {exc}")


def gateway_command(args: argparse.Namespace) -> list[str]:
    repository = (ROOT / args.model_repository).resolve()
    ports = ["--http-port", "0", "--grpc-port", "0"]
    serve = [str(args.server_python), "-m", "gateway", "serve", "--model-repository"]
    return [*serve, str(repository), *ports, *args.gateway_arg]


@contextmanager
def gateway(args: argparse.Namespace, log_file: Path) -> Iterator[RunningServer]:
    """The gateway on the server core, ready; stopped with SIGTERM when the block ends."""
    if args.admin_token:
        os.environ["GATEWAY_ADMIN_TOKEN"] = args.admin_token  # inherited by the gateway only
    command = pinned(args.server_core, gateway_command(args))
    log(f"starting: {' '.join(command)}")
    with running_gateway(command, log_file, args.startup_timeout) as server:
        log(f"gateway ready: pid {server.pid}, HTTP {server.http_port}, gRPC {server.grpc_port}")
        yield server


def swap_job(args: argparse.Namespace, server: RunningServer) -> SwapJob:
    signature = model_signature(server, args.model, args.model_version)
    try:
        get_json(server, model_path(args.swap_model, ""))
    except urllib.error.HTTPError as exc:
        raise SystemExit(f"swap_bench: the gateway has no model {args.swap_model}: {exc}") from exc
    load = load_document(
        args,
        server,
        signature,
        protocol=PROTOCOL_NAMES[args.protocol],
        concurrency=args.concurrency,
        model_version=args.model_version,
    )
    return SwapJob(
        load=LoadJob.from_json(load),
        swap_url=server.url(swap_path(args)),
        swap_body=SWAP_BODY,
        admin_token=args.admin_token,
        phase_s=args.duration,
        rounds=args.rounds,
        settle_s=args.settle,
        swap_timeout_s=args.swap_timeout,
    )


def swap_path(args: argparse.Namespace) -> str:
    return f"/v2/repository/models/{args.swap_model}/load"


def gateway_log(log_file: Path) -> dict[str, Any]:
    """How many lines of the gateway's log are warnings or worse, and the first of them."""
    lines = [
        line
        for line in log_file.read_text(errors="replace").splitlines()
        if WARNING_LINE.search(line)
    ]
    return {"warnings": len(lines), "samples": [line[:300] for line in lines[:10]]}


def write(results: dict[str, Any], arrays: dict[str, Any], out_dir: Path) -> None:
    analyse(results, arrays)
    results["plots"] = draw(results, arrays, out_dir)
    if not results["plots"]:
        log("matplotlib is missing: no plots (run from .venv-load, or `swap_bench.py render`)")
    (out_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out_dir / "report.md").write_text(markdown_report(results))


def bench_main(args: argparse.Namespace) -> int:
    timestamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    out_dir = args.out / ("swap-" + timestamp.replace(":", "").replace("-", ""))
    out_dir.mkdir(parents=True, exist_ok=True)
    if args.wait_quiet > 0:
        wait_for_quiet(args.wait_quiet)
    pin_self(args.client_core)
    with gateway(args, out_dir / "gateway.log") as server:
        job = swap_job(args, server)
        server_affinity = sorted(os.sched_getaffinity(server.pid))
        phases = 2 * args.rounds
        log(
            f"{args.warmup:g} s warm-up + {phases} phases of {args.duration:g} s, "
            f"{args.protocol} x {args.concurrency} on {args.model}, swapping {args.swap_model}"
        )
        measured = run(job)
        server.check_alive()
    requests = measured.pop("requests")
    arrays = request_arrays(requests)
    np.savez_compressed(out_dir / "requests.npz", **requests)
    results: dict[str, Any] = {
        "meta": {
            "timestamp": timestamp,
            "git": git_revision(),
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "server_affinity": server_affinity,
            "client_affinity": sorted(os.sched_getaffinity(0)),
            "gateway_command": gateway_command(args),
        },
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "swap_url_path": swap_path(args),
        "swap_body": SWAP_BODY,
        "gateway_log": gateway_log(out_dir / "gateway.log"),
        **measured,
    }
    results["settings"].pop("admin_token")
    write(results, arrays, out_dir)
    print(markdown_report(results))
    log(f"results in {out_dir}")
    return exit_status(results)


def render_main(out_dir: Path) -> int:
    """Recompute the figures and redraw report.md and the plots from results.json."""
    results = json.loads((out_dir / "results.json").read_text())
    with np.load(out_dir / "requests.npz") as stored:
        arrays = request_arrays({k: stored[k] for k in ("start", "done", "ok")})
    write(results, arrays, out_dir)
    log(f"rendered {out_dir}: report.md, {', '.join(results['plots']) or 'no plots'}")
    return exit_status(results)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["render"] and len(argv) == 2:
        return render_main(Path(argv[1]))
    return bench_main(parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())

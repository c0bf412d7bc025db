"""The gateway under test: `gateway serve` on the server core, and how it describes the model."""

from __future__ import annotations

import argparse
import contextlib
import re
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from .measure import log
from .processes import ROOT, RunningServer, get_json, started, wait_until_ready

READY_LINE = re.compile(r"HTTP on (?P<http_host>\S+):(?P<http>\d+), gRPC on \S+:(?P<grpc>\d+)")


def gateway_command(repository: Path, extra: Sequence[str]) -> list[str]:
    """`gateway serve` from this interpreter's environment, on free ports."""
    script = Path(sys.executable).parent / "gateway"
    program = [str(script)] if script.exists() else [sys.executable, "-m", "gateway"]
    ports = ["--http-port", "0", "--grpc-port", "0"]
    return [*program, "serve", "--model-repository", str(repository), *ports, *extra]


@contextlib.contextmanager
def running_gateway(
    command: Sequence[str],
    log_file: Path,
    startup_timeout_s: float,
    *,
    name: str = "the gateway",
    env: Mapping[str, str] | None = None,
    cwd: Path = ROOT,
) -> Iterator[RunningServer]:
    """Start `gateway serve` (`command`, pinned by the caller), read its ports from its log,
    wait until it is ready; stopped with SIGTERM when the block ends."""
    with started(command, log_file, READY_LINE, startup_timeout_s, env, cwd) as (process, match):
        server = RunningServer(
            name=name,
            process=process,
            host=match["http_host"],
            http_port=int(match["http"]),
            grpc_port=int(match["grpc"]),
            log_file=log_file,
        )
        wait_until_ready(server, startup_timeout_s)
        yield server


@contextlib.contextmanager
def gateway(args: argparse.Namespace, log_file: Path) -> Iterator[RunningServer]:
    """`gateway serve` pinned to the server core, ready; stopped with SIGTERM."""
    command = [
        "taskset",
        "-c",
        str(args.server_core),
        *gateway_command(args.model_repository, args.gateway_arg),
    ]
    log(f"starting: {' '.join(command)}")
    with running_gateway(command, log_file, args.startup_timeout) as server:
        log(f"gateway ready: pid {server.pid}, HTTP {server.http_port}, gRPC {server.grpc_port}")
        yield server


def load_document(
    args: argparse.Namespace,
    server: RunningServer,
    signature: dict[str, Any],
    *,
    protocol: str,
    concurrency: int,
    model_version: str,
    target: str = "gateway",
    **extra: Any,
) -> dict[str, Any]:
    """The load generator's job (LoadJob's JSON form) against `server`, from the options every
    benchmark shares (model, warm-up, duration, timeouts, seed, gRPC channels)."""
    return {
        "target": target,
        "protocol": protocol,
        "host": server.host,
        "http_port": server.http_port,
        "grpc_port": server.grpc_port,
        "model": args.model,
        "model_version": model_version,
        "batched": signature["max_batch_size"] > 0,
        "inputs": signature["inputs"],
        "outputs": signature["outputs"],
        "concurrency": concurrency,
        "warmup_s": args.warmup,
        "duration_s": args.duration,
        "timeout_s": args.request_timeout,
        "seed": args.seed,
        "server_pid": server.pid,
        "grpc_channels": args.grpc_channels,
        **extra,
    }


def model_path(model: str, version: str) -> str:
    return f"/v2/models/{model}" + (f"/versions/{version}" if version else "")


def model_signature(server: RunningServer, model: str, version: str) -> dict[str, Any]:
    """Inputs, outputs and max_batch_size as the gateway describes them to a client."""
    metadata = get_json(server, model_path(model, version))
    config = get_json(server, model_path(model, version) + "/config")

    def tensors(key: str) -> list[dict[str, Any]]:
        return [{k: t[k] for k in ("name", "datatype", "shape")} for t in metadata[key]]

    return {
        "inputs": tensors("inputs"),
        "outputs": tensors("outputs"),
        "max_batch_size": int(config.get("max_batch_size", 0)),
    }


def stats_path(model: str, version: str) -> str:
    """Triton's statistics route for the model (all versions unless one is pinned)."""
    return model_path(model, version) + "/stats"

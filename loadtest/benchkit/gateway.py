"""The gateway under test: `gateway serve` on the server core, and how it describes the model."""

from __future__ import annotations

import argparse
import contextlib
import re
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from .measure import log
from .processes import RunningServer, get_json, started, wait_until_ready

READY_LINE = re.compile(r"HTTP on (?P<http_host>\S+):(?P<http>\d+), gRPC on \S+:(?P<grpc>\d+)")


def gateway_command(repository: Path, extra: Sequence[str]) -> list[str]:
    """`gateway serve` from this interpreter's environment, on free ports."""
    script = Path(sys.executable).parent / "gateway"
    program = [str(script)] if script.exists() else [sys.executable, "-m", "gateway"]
    ports = ["--http-port", "0", "--grpc-port", "0"]
    return [*program, "serve", "--model-repository", str(repository), *ports, *extra]


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
    with started(command, log_file, READY_LINE, args.startup_timeout) as (process, match):
        server = RunningServer(
            name="the gateway",
            process=process,
            host=match["http_host"],
            http_port=int(match["http"]),
            grpc_port=int(match["grpc"]),
            log_file=log_file,
        )
        wait_until_ready(server, args.startup_timeout)
        log(f"gateway ready: pid {server.pid}, HTTP {server.http_port}, gRPC {server.grpc_port}")
        yield server


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

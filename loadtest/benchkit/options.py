"""Command-line options the gateway benchmarks (swap, telemetry, shadow) share."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from .processes import ROOT

DEV_PYTHON = ROOT / ".venv" / "bin" / "python"
"""The dev environment's interpreter: it has the gateway installed (the load one may not)."""


def add_run_options(
    add: Callable[..., Any],
    *,
    client_core: str,
    server_python: str,
    wait_quiet: str,
    seed: str = "seed of the random input rows",
) -> None:
    """Timeouts, seed, gRPC channels, pinning, the server's interpreter and wait-for-quiet."""
    add("--request-timeout", type=float, default=10.0, help="seconds before a request fails")
    add("--startup-timeout", type=float, default=120.0, help="seconds for a gateway to start")
    add("--seed", type=int, default=0, help=seed)
    add("--grpc-channels", type=int, default=1, help="gRPC channels the workers share")
    add("--server-core", type=int, default=0, help="core for the gateway")
    add("--client-core", type=int, default=1, help=f"core for {client_core}")
    add(
        "--server-python",
        type=Path,
        default=DEV_PYTHON if DEV_PYTHON.exists() else None,
        help=server_python,
    )
    add("--wait-quiet", type=float, default=0.0, metavar="S", help=wait_quiet)

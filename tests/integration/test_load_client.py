"""The benchmark's load generator against a real gateway: its HTTP client (benchkit.rawhttp)
reads real answers, checks them, and counts a refused request as an error."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from loadtest.benchkit.clients import LoadJob
from loadtest.benchkit.echo import Echo, serve_http_lean
from loadtest.benchkit.load import run_load
from tests.support.server import RunningGateway


@pytest.fixture(scope="module")
def gateway(demo_repository: Path) -> Iterator[RunningGateway]:
    running = RunningGateway(demo_repository, load_model=["mlp"], model_control_mode="explicit")
    yield running
    running.stop()


def job(gateway: RunningGateway, protocol: str, **overrides: Any) -> LoadJob:
    tensor = {"datatype": "FP32", "shape": [-1, 784]}
    document: dict[str, Any] = {
        "target": "gateway",
        "protocol": protocol,
        "host": "127.0.0.1",
        "http_port": gateway.gateway.http_port,
        "grpc_port": gateway.gateway.grpc_port,
        "model": "mlp",
        "model_version": "",
        "batched": True,
        "inputs": [{"name": "input", **tensor}],
        "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, 10]}],
        "concurrency": 4,
        "warmup_s": 0.2,
        "duration_s": 0.5,
        "timeout_s": 10.0,
        "seed": 0,
        "server_pid": os.getpid(),
        "stats_path": "/v2/models/mlp/stats",
    }
    document.update(overrides)
    return LoadJob.from_json(document)


@pytest.mark.parametrize("protocol", ["http-binary", "http-json", "grpc"])
def test_every_answer_is_read_and_checked(gateway: RunningGateway, protocol: str) -> None:
    result = asyncio.run(run_load(job(gateway, protocol)))
    assert result["errors"] == 0 and result["warmup_errors"] == 0, result["error_samples"]
    assert result["requests"] > 0
    stats = result["server_stats"]
    assert stats["status"] == "ok" and stats["mean_batch_size"] >= 1


def test_a_refused_request_is_an_error_not_a_success(gateway: RunningGateway) -> None:
    result = asyncio.run(run_load(job(gateway, "http-binary", model="nope", stats_path="")))
    assert result["requests"] == 0 and result["errors"] > 0
    assert "HTTP 404" in result["error_samples"][0]


@pytest.mark.parametrize("protocol", ["http-binary", "http-json"])
def test_the_lean_echo_answers_what_the_load_generator_checks(
    gateway: RunningGateway, protocol: str
) -> None:
    """bench.py --lean-http-echo: the httptools echo's answers pass the same checks."""

    async def measure() -> dict[str, Any]:
        outputs = [{"name": "logits", "datatype": "FP32", "shape": [-1, 10]}]
        stop, port = await serve_http_lean(Echo({"batched": True, "outputs": outputs}), "127.0.0.1")
        try:
            return await run_load(job(gateway, protocol, http_port=port, stats_path=""))
        finally:
            await stop()

    result = asyncio.run(measure())
    assert result["errors"] == 0 and result["requests"] > 0, result["error_samples"]

"""Triton's statistics extension on both protocols, as tritonclient and perf_analyzer read it."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.support.server import RunningGateway


def _client(server: RunningGateway, protocol: str) -> Any:
    if protocol == "grpc":
        return grpcclient.InferenceServerClient(server.grpc_url)
    return httpclient.InferenceServerClient(server.http_url)


def _stats(client: Any, protocol: str, model: str = "", version: str = "") -> list[dict]:
    if protocol == "grpc":
        answer = client.get_inference_statistics(model, version, as_json=True)
    else:
        answer = client.get_inference_statistics(model, version)
    return answer.get("model_stats", [])


def _infer(client: Any, protocol: str, rows: int) -> None:
    module: Any = grpcclient if protocol == "grpc" else httpclient
    x = np.ones((rows, 16), np.float32)
    inputs = [module.InferInput(n, [rows, 16], "FP32") for n in ("INPUT0", "INPUT1")]
    for infer_input in inputs:
        infer_input.set_data_from_numpy(x)
    client.infer("tuned", inputs)


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_counts_and_durations_follow_requests(server: RunningGateway, protocol: str) -> None:
    client = _client(server, protocol)
    before = _stats(client, protocol, "tuned", "1")[0]
    for rows in (1, 3):
        _infer(client, protocol, rows)
    with pytest.raises(InferenceServerException):
        client.infer("tuned", [])  # refused by the adapter before the model is involved
    after = _stats(client, protocol, "tuned", "1")[0]
    client.close()

    def count(stats: dict, *path: str) -> int:
        value: Any = stats
        for key in path:
            value = value.get(key, 0) if isinstance(value, dict) else 0
        return int(value)

    assert after["name"] == "tuned" and after["version"] == "1"
    assert count(after, "inference_count") - count(before, "inference_count") == 4
    assert count(after, "execution_count") - count(before, "execution_count") == 2
    for stage in ("success", "queue", "compute_input", "compute_infer", "compute_output"):
        grown = count(after, "inference_stats", stage, "count") - count(
            before, "inference_stats", stage, "count"
        )
        assert grown == 2, stage
        assert count(after, "inference_stats", stage, "ns") > 0, stage
    sizes = {int(b["batch_size"]) for b in after["batch_stats"]}
    assert {1, 3} <= sizes
    assert count(after, "last_inference") > 0


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_failures_are_counted(server: RunningGateway, protocol: str) -> None:
    client = _client(server, protocol)
    module: Any = grpcclient if protocol == "grpc" else httpclient
    before = _stats(client, protocol, "tuned", "1")[0]
    wrong = module.InferInput("INPUT0", [1, 8], "FP32")
    wrong.set_data_from_numpy(np.ones((1, 8), np.float32))
    with pytest.raises(InferenceServerException):
        client.infer("tuned", [wrong])
    after = _stats(client, protocol, "tuned", "1")[0]
    client.close()
    fail_before = int(before["inference_stats"].get("fail", {}).get("count", 0))
    assert int(after["inference_stats"]["fail"]["count"]) == fail_before + 1


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_scope_every_model_or_every_version(server: RunningGateway, protocol: str) -> None:
    client = _client(server, protocol)
    everything = {(s["name"], s["version"]) for s in _stats(client, protocol)}
    assert {("simple", "1"), ("versioned", "3"), ("versioned_all", "2")} <= everything
    versions = {s["version"] for s in _stats(client, protocol, "versioned_all")}
    assert versions == {"1", "2", "3"}
    with pytest.raises(InferenceServerException, match="unknown model"):
        _stats(client, protocol, "no_such_model")
    client.close()

"""Triton's priority levels and timeout_action DELAY through a real gateway and real clients:
a higher level's requests overtake a lower level's in line, a delayed request is served
rather than refused, and the `priority` parameter and the config extension speak Triton."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from gateway.core.batcher import DynamicBatcher
from gateway.generated import grpc_service_pb2 as pb
from gateway.generated import grpc_service_pb2_grpc as pb_grpc
from tests.support import models
from tests.support.admin import http_call
from tests.support.server import RunningGateway

WIDTH, ROWS = 512, 128
"""Each request fills a batch (max_batch_size ROWS) and runs for some tens of ms."""
WAIT_S = 20.0

RANKED = f"""
max_batch_size: {ROWS}
instance_group [ {{ count: 1, kind: KIND_CPU }} ]
dynamic_batching {{
  priority_levels: 2
  default_priority_level: 2
  priority_queue_policy {{ key: 1 value {{ max_queue_size: 16 }} }}
}}
"""
PATIENT = f"""
max_batch_size: {ROWS}
instance_group [ {{ count: 1, kind: KIND_CPU }} ]
dynamic_batching {{
  default_queue_policy {{ timeout_action: DELAY, default_timeout_microseconds: 1000 }}
}}
"""
CAPPED = f"""
max_batch_size: {ROWS}
instance_group [ {{ count: 1, kind: KIND_CPU }} ]
dynamic_batching {{
  default_queue_policy {{ default_timeout_microseconds: 1000, allow_timeout_override: true }}
}}
"""
HURRIED = f"""
max_batch_size: {ROWS}
instance_group [ {{ count: 1, kind: KIND_CPU }} ]
dynamic_batching {{ default_queue_policy {{ default_timeout_microseconds: 1000 }} }}
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    root = tmp_path_factory.mktemp("priority")
    for name, config, depth in (
        ("ranked", RANKED, 256),  # a run long enough (about 0.1 s) to queue eight behind it
        ("patient", PATIENT, 16),
        ("hurried", HURRIED, 16),
        ("capped", CAPPED, 16),
    ):
        models.slow(root / name / "1" / "model.onnx", width=WIDTH, depth=depth)
        models.write_config(root / name, config)
    running = RunningGateway(root, inference_threads=1, intra_op_threads=1)
    yield running
    running.stop()


def batcher_of(server: RunningGateway, model: str) -> DynamicBatcher:
    batcher = server.gateway.registry.resolve(model, "").batcher
    assert batcher is not None
    return batcher


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened: {what}")
        time.sleep(0.001)


class Caller:
    """A client of one protocol with request `i`'s input ready (its rows are all i)."""

    def __init__(
        self, server: RunningGateway, protocol: str, i: int, priority: int = 0, timeout_us: int = 0
    ):
        self.module: Any = grpcclient if protocol == "grpc" else httpclient
        url = server.grpc_url if protocol == "grpc" else server.http_url
        self.client = self.module.InferenceServerClient(url)
        self.i, self.priority, self.timeout_us = i, priority, timeout_us
        self.x = self.module.InferInput("X", [ROWS, WIDTH], "FP32")
        self.x.set_data_from_numpy(np.full((ROWS, WIDTH), i, np.float32))

    def infer(self, model: str) -> np.ndarray:
        """Y, or InferenceServerException."""
        try:
            result = self.client.infer(
                model,
                [self.x],
                request_id=str(self.i),
                priority=self.priority,
                timeout=self.timeout_us or None,
            )
            y: np.ndarray = result.as_numpy("Y")
            return y
        finally:
            self.client.close()


def test_a_higher_level_overtakes_the_line_of_a_lower_one(server: RunningGateway) -> None:
    """While one batch runs, four level-2 requests queue, then four level-1 ones: the level-1
    requests all finish before any of the level-2 ones still in line (one batch at a time)."""
    batcher = batcher_of(server, "ranked")
    blocker = Caller(server, "grpc", 0)  # the default level: 2
    low = [Caller(server, ("grpc", "http")[i % 2], i, 2) for i in range(1, 5)]
    high = [Caller(server, ("http", "grpc")[i % 2], i, 1) for i in range(11, 15)]
    finished: list[int] = []
    lock = threading.Lock()

    def call(caller: Caller) -> None:
        caller.infer("ranked")
        with lock:
            finished.append(caller.i)

    with ThreadPoolExecutor(9) as pool:
        futures = [pool.submit(call, blocker)]
        wait_until(lambda: batcher.running == 1, "the first batch running")
        futures += [pool.submit(call, caller) for caller in low]
        wait_until(lambda: batcher.waiting == 4, "four level-2 requests in line")
        futures += [pool.submit(call, caller) for caller in high]
        wait_until(lambda: batcher.waiting == 8, "eight requests in line")
        for future in futures:
            future.result(WAIT_S)
    assert finished[0] == 0
    assert set(finished[1:5]) == {11, 12, 13, 14}, finished
    assert set(finished[5:]) == {1, 2, 3, 4}, finished


def test_delay_serves_requests_whose_timeout_passed_where_reject_refuses_them(
    server: RunningGateway,
) -> None:
    """Six requests at once, each a batch of tens of ms, with a 1 ms queue timeout: with
    timeout_action DELAY every one is answered; with REJECT those that waited get 504s, also
    where a longer `timeout` parameter may override (an override only shortens)."""
    outcomes: dict[str, list[str]] = {}
    for model in ("patient", "hurried", "capped"):

        def call(i: int, model: str = model) -> str:
            # A minute's `timeout`: Triton lets an override shorten the policy's, not lengthen it.
            caller = Caller(server, ("grpc", "http")[i % 2], i, timeout_us=60_000_000)
            try:
                y = caller.infer(model)
            except InferenceServerException as refused:
                return f"{refused.status()}: {refused.message()}"
            assert y.shape == (ROWS, WIDTH)
            return "ok"

        with ThreadPoolExecutor(6) as pool:
            outcomes[model] = list(pool.map(call, range(6), timeout=WAIT_S))
    assert outcomes["patient"] == ["ok"] * 6, outcomes
    assert batcher_of(server, "patient").stats.expired == 0
    for model in ("hurried", "capped"):
        refused = [o for o in outcomes[model] if o != "ok"]
        assert len(refused) >= 3, outcomes  # at most two batches start within 1 ms
        assert all(("504" in o or "DEADLINE_EXCEEDED" in o) for o in refused), refused


@pytest.mark.parametrize("value", ["high", -1, 1.5, True, [1]])
def test_a_malformed_priority_is_refused_naming_the_parameter(
    server: RunningGateway, value: object
) -> None:
    x = {"name": "X", "datatype": "FP32", "shape": [1, WIDTH], "data": [0.0] * WIDTH}
    answer = http_call(
        server.http_url,
        "POST",
        "/v2/models/ranked/infer",
        {"inputs": [x], "parameters": {"priority": value}},
    )
    assert answer.status == 400, answer
    assert "parameter 'priority' must be a non-negative integer" in answer.error


def test_grpc_priority_of_the_wrong_type_is_invalid_argument(server: RunningGateway) -> None:
    """tritonclient refuses to send a `priority` parameter itself: a raw request does."""
    request = pb.ModelInferRequest(model_name="ranked")
    request.parameters["priority"].string_param = "high"
    tensor = request.inputs.add(name="X", datatype="FP32", shape=[1, WIDTH])
    tensor.contents.fp32_contents.extend([0.0] * WIDTH)
    with grpc.insecure_channel(server.grpc_url) as channel, pytest.raises(grpc.RpcError) as raised:
        pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=WAIT_S)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "'priority'" in (raised.value.details() or "")


def test_a_level_out_of_range_or_on_a_model_without_levels_is_the_default(
    server: RunningGateway,
) -> None:
    """Triton's rule, so clients written for it work unchanged."""
    for model, priority in (("ranked", 7), ("patient", 1)):
        caller = Caller(server, "grpc", 5, priority)
        assert caller.infer(model).shape == (ROWS, WIDTH)


def test_the_config_extension_shows_levels_and_queue_policies(server: RunningGateway) -> None:
    grpc_client = grpcclient.InferenceServerClient(server.grpc_url)
    http_client = httpclient.InferenceServerClient(server.http_url)
    try:
        for config in (
            grpc_client.get_model_config("ranked", as_json=True)["config"],
            http_client.get_model_config("ranked"),
        ):
            batching = config["dynamic_batching"]
            assert int(batching["priority_levels"]) == 2
            assert int(batching["default_priority_level"]) == 2
            first = batching["priority_queue_policy"]["1"]
            assert int(first["max_queue_size"]) == 16
        patient = http_client.get_model_config("patient")["dynamic_batching"]
        assert patient["default_queue_policy"]["timeout_action"] == "DELAY"
    finally:
        grpc_client.close()
        http_client.close()

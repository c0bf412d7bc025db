"""Backpressure and deadlines at the model: 429 / RESOURCE_EXHAUSTED when the line is full,
504 / DEADLINE_EXCEEDED when a request's wait runs out, and the server keeps serving."""

from __future__ import annotations

import http.client
import queue
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import orjson
import pytest

from gateway.generated import grpc_service_pb2 as pb
from gateway.generated import grpc_service_pb2_grpc as pb_grpc
from tests.support import models
from tests.support.server import RunningGateway

SLOW_CONFIG = """
max_batch_size: 4096
instance_group [ { count: 1, kind: KIND_CPU } ]
dynamic_batching {
  default_queue_policy { max_queue_size: 1, allow_timeout_override: true }
}
"""
WIDTH = 512


@pytest.fixture(scope="module")
def slow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    root = tmp_path_factory.mktemp("slow")
    models.slow(root / "slow" / "1" / "model.onnx", width=WIDTH, depth=64)
    models.write_config(root / "slow", SLOW_CONFIG)
    running = RunningGateway(root, intra_op_threads=1)
    yield running
    running.stop()


def http_infer(server: RunningGateway, rows: int, **parameters: int) -> tuple[int, dict, dict]:
    x = np.ones((rows, WIDTH), np.float32)
    body = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "X",
                    "shape": [rows, WIDTH],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": x.nbytes},
                }
            ],
            "outputs": [{"name": "Y", "parameters": {"binary_data": True}}],
            "parameters": parameters,
        }
    )
    host, port = server.http_url.split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=60)
    connection.request(
        "POST",
        "/v2/models/slow/infer",
        body=body + x.tobytes(),
        headers={"Inference-Header-Content-Length": str(len(body))},
    )
    response = connection.getresponse()
    payload = response.read()
    connection.close()
    header = dict(response.getheaders())
    if response.status == 200:
        return response.status, header, {}
    return response.status, header, orjson.loads(payload)


def grpc_infer(server: RunningGateway, rows: int, timeout_us: int = 0) -> None:
    x = np.ones((rows, WIDTH), np.float32)
    request = pb.ModelInferRequest(model_name="slow", raw_input_contents=[x.tobytes()])
    request.inputs.add(name="X", datatype="FP32", shape=[rows, WIDTH])
    if timeout_us:
        request.parameters["timeout"].int64_param = timeout_us
    with grpc.insecure_channel(server.grpc_url) as channel:
        pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=60)


class Occupied:
    """Holds the model's only execution slot with a long request on another thread."""

    def __init__(self, server: RunningGateway, rows: int = 2048) -> None:
        self.thread = threading.Thread(target=http_infer, args=(server, rows))

    def __enter__(self) -> None:
        self.thread.start()
        time.sleep(0.3)  # let it reach the model; it runs for over a second

    def __exit__(self, *exc: object) -> None:
        self.thread.join(60)


def test_http_full_line_is_refused_at_once_with_retry_after(slow_server: RunningGateway) -> None:
    with Occupied(slow_server):
        waiting = threading.Thread(target=http_infer, args=(slow_server, 1))
        waiting.start()
        time.sleep(0.1)
        started = time.monotonic()
        status, headers, body = http_infer(slow_server, 1)
        assert time.monotonic() - started < 0.5
        waiting.join(60)
    assert status == 429
    assert int(headers["Retry-After"]) >= 1
    assert "at capacity" in body["error"]


def test_grpc_full_line_is_resource_exhausted(slow_server: RunningGateway) -> None:
    with Occupied(slow_server):
        waiting = threading.Thread(target=http_infer, args=(slow_server, 1))
        waiting.start()
        time.sleep(0.1)
        with pytest.raises(grpc.RpcError) as raised:
            grpc_infer(slow_server, 1)
        waiting.join(60)
    assert raised.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "at capacity" in raised.value.details()


def test_timeout_parameter_bounds_the_wait(slow_server: RunningGateway) -> None:
    with Occupied(slow_server):
        status, _, body = http_infer(slow_server, 1, timeout=50_000)
        with pytest.raises(grpc.RpcError) as raised:
            grpc_infer(slow_server, 1, timeout_us=50_000)
    assert status == 504 and "deadline passed" in body["error"]
    assert raised.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    assert "waited 0.050 s" in raised.value.details()


def test_the_model_serves_again_afterwards(slow_server: RunningGateway) -> None:
    assert http_infer(slow_server, 2)[0] == 200
    grpc_infer(slow_server, 2)
    batcher = slow_server.gateway.registry.resolve("slow", "").batcher
    assert batcher is not None and batcher.running == 0 and batcher.waiting == 0


def test_stop_lets_in_flight_requests_finish(tmp_path: Path) -> None:
    models.slow(tmp_path / "slow" / "1" / "model.onnx", width=WIDTH, depth=64)
    models.write_config(tmp_path / "slow", SLOW_CONFIG)
    running = RunningGateway(tmp_path, intra_op_threads=1, shutdown_grace_s=30)
    answers: list[int] = []
    in_flight = threading.Thread(target=lambda: answers.append(http_infer(running, 2048)[0]))
    in_flight.start()
    time.sleep(0.3)
    started = time.monotonic()
    running.stop()
    in_flight.join(60)
    assert answers == [200]
    assert time.monotonic() - started < 30


def test_threaded_grpc_calls_wait_for_a_worker_then_are_refused(tmp_path: Path) -> None:
    """--grpc-threads workers serve calls; as many more wait for one; beyond that, refused."""
    models.plus_constant(tmp_path / "waits" / "1" / "model.onnx", 1.0)
    models.write_config(  # a lone request waits a minute for company, holding its worker
        tmp_path / "waits",
        "max_batch_size: 8\ndynamic_batching { max_queue_delay_microseconds: 60000000 }\n",
    )
    gateway = RunningGateway(tmp_path, grpc_threads=2, grpc_server="threaded")
    channel = grpc.insecure_channel(gateway.grpc_url)
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    request = pb.ModelInferRequest(
        model_name="waits", raw_input_contents=[np.zeros((1, 4), np.float32).tobytes()]
    )
    request.inputs.add(name="X", datatype="FP32", shape=[1, 4])
    holding = [stub.ModelInfer.future(request, timeout=60) for _ in range(2)]
    try:
        batcher = gateway.gateway.registry.resolve("waits", "").batcher
        assert batcher is not None
        for _ in range(200):  # both in the model's line: both workers are held
            if batcher.waiting == 2:
                break
            time.sleep(0.05)
        else:
            raise AssertionError("the two held calls never reached the model's line")
        calls = [stub.ServerLive.future(pb.ServerLiveRequest(), timeout=60) for _ in range(3)]
        finished: queue.SimpleQueue[grpc.Future] = queue.SimpleQueue()
        for call in calls:
            call.add_done_callback(finished.put)
        refused = finished.get(timeout=30)  # the first to end: refused, the others wait
        assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert not any(c.done() for c in calls if c is not refused)
        for held in holding:  # their callers leave: the workers are free again
            held.cancel()
        waited = [c for c in calls if c is not refused]
        assert [c.result(timeout=30).live for c in waited] == [True, True]
    finally:
        for held in holding:
            held.cancel()
        channel.close()
        gateway.stop()

"""Triton's bidirectional ModelStreamInfer through tritonclient's stream API, on both gRPC
front ends: every request answered once, errors in-stream without ending it, batching across
the stream's requests."""

from __future__ import annotations

import queue
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from tests.support import models
from tests.support.server import RunningGateway

CONFIG = "max_batch_size: 64\ndynamic_batching { max_queue_delay_microseconds: 2000 }\n"


@pytest.fixture(scope="module", params=["asyncio", "threaded"])
def stream_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningGateway]:
    root: Path = tmp_path_factory.mktemp("stream")
    models.plus_constant(root / "plus" / "1" / "model.onnx", 1.0)
    models.write_config(root / "plus", CONFIG)
    running = RunningGateway(root, grpc_server=request.param)
    yield running
    running.stop()


def _input(values: np.ndarray) -> grpcclient.InferInput:
    infer_input = grpcclient.InferInput("X", list(values.shape), "FP32")
    infer_input.set_data_from_numpy(values)
    return infer_input


def test_every_request_is_answered_with_its_own_rows(stream_server: RunningGateway) -> None:
    answers: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client = grpcclient.InferenceServerClient(stream_server.grpc_url)
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    count = 60
    for i in range(count):
        x = np.full((1 + i % 3, 4), i, np.float32)
        client.async_stream_infer("plus", [_input(x)], request_id=str(i))
    got: dict[str, np.ndarray] = {}
    for _ in range(count):
        result, error = answers.get(timeout=30)
        assert error is None
        got[result.get_response().id] = result.as_numpy("Y")
    client.stop_stream()
    client.close()
    for i in range(count):
        np.testing.assert_array_equal(got[str(i)], np.full((1 + i % 3, 4), i + 1, np.float32))
    stats = stream_server.gateway.registry.resolve("plus", "").batcher
    assert stats is not None and stats.stats.batches < stats.stats.requests  # merged


def test_an_error_answers_its_request_and_the_stream_goes_on(
    stream_server: RunningGateway,
) -> None:
    answers: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client = grpcclient.InferenceServerClient(stream_server.grpc_url)
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    wrong = grpcclient.InferInput("X", [1, 5], "FP32")
    wrong.set_data_from_numpy(np.zeros((1, 5), np.float32))
    client.async_stream_infer("plus", [wrong], request_id="bad")
    client.async_stream_infer("nope", [_input(np.zeros((1, 4), np.float32))], request_id="lost")
    client.async_stream_infer("plus", [_input(np.zeros((1, 4), np.float32))], request_id="good")
    outcomes: dict[str, Any] = {}
    for _ in range(3):
        result, error = answers.get(timeout=30)
        if error is None:
            outcomes[result.get_response().id] = result.as_numpy("Y")
        else:
            outcomes[str(error)] = error
    client.stop_stream()
    client.close()
    np.testing.assert_array_equal(outcomes["good"], np.ones((1, 4), np.float32))
    messages = " | ".join(k for k in outcomes if k != "good")
    assert "input 'X': shape [1, 5]" in messages
    assert "unknown model 'nope'" in messages


def _raw_requests(count: int, start: int = 0) -> list[Any]:
    from gateway.generated import grpc_service_pb2 as pb

    requests = []
    for i in range(start, start + count):
        x = np.full((1, 4), i, np.float32)
        request = pb.ModelInferRequest(
            model_name="plus", id=str(i), raw_input_contents=[x.tobytes()]
        )
        request.inputs.add(name="X", datatype="FP32", shape=[1, 4])
        requests.append(request)
    return requests


def test_short_streams_always_end_with_every_answer(stream_server: RunningGateway) -> None:
    import grpc

    from gateway.generated import grpc_service_pb2_grpc as pb_grpc

    with grpc.insecure_channel(stream_server.grpc_url) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        for n in range(150):
            answers = list(stub.ModelStreamInfer(iter(_raw_requests(3, 3 * n)), timeout=30))
            assert sorted(a.infer_response.id for a in answers) == sorted(
                str(i) for i in range(3 * n, 3 * n + 3)
            )
            assert not any(a.error_message for a in answers)


def test_a_stream_longer_than_the_in_flight_bound(stream_server: RunningGateway) -> None:
    import grpc

    from gateway.adapters.grpc.server import STREAM_IN_FLIGHT
    from gateway.generated import grpc_service_pb2_grpc as pb_grpc

    count = 3 * STREAM_IN_FLIGHT
    with grpc.insecure_channel(stream_server.grpc_url) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        answers = list(stub.ModelStreamInfer(iter(_raw_requests(count)), timeout=60))
    assert len(answers) == count
    by_id = {a.infer_response.id: a for a in answers}
    assert set(by_id) == {str(i) for i in range(count)}
    values = np.frombuffer(by_id["7"].infer_response.raw_output_contents[0], np.float32)
    np.testing.assert_array_equal(values, np.full(4, 8, np.float32))


def test_idle_streams_cannot_take_every_worker_of_the_threaded_server(tmp_path: Path) -> None:
    """Each open stream holds a worker: at most half of --grpc-threads may be streams, so unary
    calls and health checks are still served while the rest sit idle; one more is refused."""
    import grpc

    from gateway.generated import grpc_service_pb2 as pb
    from gateway.generated import grpc_service_pb2_grpc as pb_grpc

    models.plus_constant(tmp_path / "plus" / "1" / "model.onnx", 1.0)
    models.write_config(tmp_path / "plus", CONFIG)
    running = RunningGateway(tmp_path, grpc_server="threaded", grpc_threads=4)
    idle: list[Any] = []
    try:
        with grpc.insecure_channel(running.grpc_url) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            hold: queue.Queue[Any] = queue.Queue()  # never sends: the streams stay open, idle

            def quiet() -> Iterator[Any]:
                while (request := hold.get()) is not None:
                    yield request

            idle = [stub.ModelStreamInfer(quiet(), timeout=60) for _ in range(2)]
            assert running.gateway.service is not None
            callers = running.gateway.service.callers
            for _ in range(100):  # until the server holds both (each takes a worker)
                if callers.calls == 2:
                    break
                time.sleep(0.05)
            else:
                raise AssertionError("the server never held both idle streams")
            refused = stub.ModelStreamInfer(iter(_raw_requests(1)), timeout=30)
            with pytest.raises(grpc.RpcError) as raised:
                list(refused)
            assert raised.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "at most 2 open ModelStreamInfer streams" in str(raised.value.details())
            assert stub.ServerLive(pb.ServerLiveRequest(), timeout=5).live
            answer = stub.ModelInfer(_raw_requests(1)[0], timeout=5)
            values = np.frombuffer(answer.raw_output_contents[0], np.float32)
            np.testing.assert_array_equal(values, np.ones(4, np.float32))
            idle[0].cancel()  # a stream that ends gives its place back
            for _ in range(100):
                answers = stub.ModelStreamInfer(iter(_raw_requests(1)), timeout=30)
                try:
                    assert len(list(answers)) == 1
                    break
                except grpc.RpcError as error:  # its end is still being processed
                    assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
                    time.sleep(0.05)
            else:
                raise AssertionError("the ended stream never gave its place back")
    finally:
        for call in idle:
            call.cancel()
        running.stop()

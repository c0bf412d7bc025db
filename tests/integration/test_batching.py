"""Dynamic batching through a real gateway with real clients: merged batches give every caller
exactly its own answer, bad requests fail alone, configs without dynamic_batching never merge,
batches grow with load, and callers that leave while queued leave the line without disturbing
the rest."""

from __future__ import annotations

import http.client
import socket
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import astuple, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from gateway.core.batcher import DynamicBatcher
from tests.support import models
from tests.support.server import RunningGateway

PROTOCOLS = ("grpc", "http-binary", "http-json")
OUTPUT_CHOICES: tuple[list[str] | None, ...] = (
    ["OUTPUT0"],
    ["OUTPUT1"],
    ["OUTPUT1", "OUTPUT0"],
    None,
)
MODEL_OUTPUTS = ["OUTPUT0", "OUTPUT1"]
WIDTH = 16
SLOW_WIDTH = 512
CLIENT_THREADS = 32
WAIT_S = 10.0

BATCHED_CONFIG = """
max_batch_size: 8
instance_group [ { count: 1, kind: KIND_CPU } ]
dynamic_batching { max_queue_delay_microseconds: 2000 }
"""
UNMERGED_CONFIG = """
max_batch_size: 8
instance_group [ { count: 1, kind: KIND_CPU } ]
"""
LOOKUP_CONFIG = """
max_batch_size: 32
instance_group [ { count: 1, kind: KIND_CPU } ]
dynamic_batching { max_queue_delay_microseconds: 20000 }
"""
LOOKUP_ROWS = 100
SLOW_ONE_CONFIG = """
max_batch_size: 2048
instance_group [ { count: 1, kind: KIND_CPU } ]
dynamic_batching { }
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    root = tmp_path_factory.mktemp("batching")
    models.add_sub(root / "batched" / "1" / "model.onnx", width=WIDTH)
    models.write_config(root / "batched", BATCHED_CONFIG)
    models.add_sub(root / "unmerged" / "1" / "model.onnx", width=WIDTH)
    models.write_config(root / "unmerged", UNMERGED_CONFIG)
    models.lookup(root / "lookup" / "1" / "model.onnx", table_rows=LOOKUP_ROWS)
    models.write_config(root / "lookup", LOOKUP_CONFIG)
    # No config.pbtxt: batched adaptively (merged, no delay), `inference_threads` at once.
    # About 9 ms a run whatever the rows up to a few, so concurrent callers pile up behind it.
    models.slow(root / "slow" / "1" / "model.onnx", width=SLOW_WIDTH, depth=256)
    models.slow(root / "slow_one" / "1" / "model.onnx", width=SLOW_WIDTH, depth=64)
    models.write_config(root / "slow_one", SLOW_ONE_CONFIG)
    running = RunningGateway(root, inference_threads=2, intra_op_threads=1)
    yield running
    running.stop()


# -- clients and requests ---------------------------------------------------------------------


class Clients:
    """One client per protocol family per thread, all closed together at the end."""

    def __init__(self, server: RunningGateway) -> None:
        self._server = server
        self._local = threading.local()
        self._made: list[Any] = []
        self._lock = threading.Lock()

    def get(self, protocol: str) -> Any:
        family = "grpc" if protocol == "grpc" else "http"
        mine: dict[str, Any] = self._local.__dict__.setdefault("clients", {})
        if family not in mine:
            if family == "grpc":
                mine[family] = grpcclient.InferenceServerClient(self._server.grpc_url)
            else:
                mine[family] = httpclient.InferenceServerClient(self._server.http_url)
            with self._lock:
                self._made.append(mine[family])
        return mine[family]

    def __enter__(self) -> Clients:
        return self

    def __exit__(self, *exc: object) -> None:
        for client in self._made:
            client.close()


def add_sub_inputs(i: int, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Distinct inputs per request: column 0 of INPUT0 is the request number."""
    rng = np.random.default_rng(i)
    x0 = rng.integers(-(10**6), 10**6, (rows, WIDTH), dtype=np.int32)
    x1 = rng.integers(-(10**6), 10**6, (rows, WIDTH), dtype=np.int32)
    x0[:, 0] = i
    return x0, x1


def infer_add_sub(
    clients: Clients,
    protocol: str,
    model: str,
    i: int,
    rows: int,
    outputs: list[str] | None,
) -> None:
    """Send request `i` and check its answer exactly: only the outputs asked for, in order."""
    module: Any = grpcclient if protocol == "grpc" else httpclient
    binary = protocol == "http-binary"
    x0, x1 = add_sub_inputs(i, rows)
    inputs = []
    for name, array in (("INPUT0", x0), ("INPUT1", x1)):
        infer_input = module.InferInput(name, [rows, WIDTH], "INT32")
        if protocol == "grpc":
            infer_input.set_data_from_numpy(array)
        else:
            infer_input.set_data_from_numpy(array, binary_data=binary)
        inputs.append(infer_input)
    requested = None
    if outputs is not None:
        if protocol == "grpc":
            requested = [module.InferRequestedOutput(n) for n in outputs]
        else:
            requested = [module.InferRequestedOutput(n, binary_data=binary) for n in outputs]
    result = clients.get(protocol).infer(model, inputs, outputs=requested, request_id=str(i))

    response = result.get_response()
    if protocol == "grpc":
        names = [o.name for o in response.outputs]
        assert response.id == str(i)
    else:
        names = [o["name"] for o in response["outputs"]]
        assert response["id"] == str(i)
    assert names == (outputs or MODEL_OUTPUTS), (i, protocol)
    expected = {"OUTPUT0": x0 + x1, "OUTPUT1": x0 - x1}
    for name in names:
        got = result.as_numpy(name)
        assert got.dtype == np.int32 and got.shape == (rows, WIDTH), (i, protocol, name)
        np.testing.assert_array_equal(got, expected[name], err_msg=f"{i} {protocol} {name}")


def batcher_of(server: RunningGateway, model: str) -> DynamicBatcher:
    batcher = server.gateway.registry.resolve(model, "").batcher
    assert batcher is not None
    return batcher


@dataclass(frozen=True)
class Delta:
    batches: int
    rows: int
    requests: int
    expired: int
    refused: int
    on_loop: int
    split: int

    @property
    def mean_rows(self) -> float:
        return self.rows / self.batches


class Counting:
    """The batcher's counters over a block of the test."""

    def __init__(self, batcher: DynamicBatcher) -> None:
        self._batcher = batcher
        self._before = astuple(batcher.stats)
        self.delta: Delta | None = None

    def __enter__(self) -> Counting:
        return self

    def __exit__(self, *exc: object) -> None:
        now = astuple(self._batcher.stats)
        self.delta = Delta(*(a - b for a, b in zip(now, self._before, strict=True)))


def wait_until(condition: Callable[[], bool], what: str, timeout_s: float = WAIT_S) -> None:
    """Poll server state (readiness, not a fixed sleep)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened: {what}")
        time.sleep(0.002)


def wait_idle(batcher: DynamicBatcher) -> None:
    wait_until(lambda: batcher.running == 0 and batcher.waiting == 0, "the batcher idle")


def run_all(jobs: list[Callable[[], Any]], threads: int = CLIENT_THREADS) -> list[Any]:
    """Run every job on a pool of client threads; re-raise the first failure."""
    with ThreadPoolExecutor(threads, thread_name_prefix="client") as pool:
        futures = [pool.submit(job) for job in jobs]
        return [future.result(60) for future in futures]


# -- (a) many concurrent requests, merged, each answered exactly -------------------------------


def test_hundreds_of_concurrent_requests_are_merged_and_each_answered_exactly(
    server: RunningGateway,
) -> None:
    batcher = batcher_of(server, "batched")
    count = 400
    plan = [(PROTOCOLS[i % 3], OUTPUT_CHOICES[i % 4], 1 + (i // 12) % 4) for i in range(count)]
    assert {(p, str(o), r) for p, o, r in plan} >= {
        (p, str(o), r) for p in PROTOCOLS for o in OUTPUT_CHOICES for r in (1, 2, 3, 4)
    }
    with Clients(server) as clients, Counting(batcher) as counted:
        run_all(
            [
                (lambda i=i, p=p, o=o, r=r: infer_add_sub(clients, p, "batched", i, r, o))
                for i, (p, o, r) in enumerate(plan)
            ]
        )
    delta = counted.delta
    assert delta is not None
    assert delta.requests == count
    assert delta.rows == sum(r for _, _, r in plan)
    assert delta.batches < delta.requests, delta  # merging happened
    assert delta.expired == delta.refused == 0
    assert max(batcher.statistics.batches) <= 8  # never past max_batch_size
    wait_idle(batcher)


# -- (b) a malformed request fails alone ---------------------------------------------------------


def _bad_bodies() -> list[tuple[bytes, str]]:
    """Raw HTTP bodies the gateway must refuse with 400, and a fragment of each message."""

    def body(*inputs: dict[str, Any]) -> bytes:
        return orjson.dumps({"inputs": list(inputs)})

    good1 = {"name": "INPUT1", "shape": [1, WIDTH], "datatype": "INT32", "data": [1] * WIDTH}
    return [
        (b'{"inputs": [ {"name": "INPUT0", ', "JSON"),
        (
            body(
                {"name": "INPUT0", "shape": [1, 15], "datatype": "INT32", "data": [1] * 15},
                good1,
            ),
            "INPUT0",
        ),
        (
            body(
                {"name": "INPUT0", "shape": [1, WIDTH], "datatype": "INT32", "data": [1] * 15},
                good1,
            ),
            "INPUT0",
        ),
        (
            body(
                {"name": "INPUT0", "shape": [1, WIDTH], "datatype": "FP32", "data": [1.0] * WIDTH},
                good1,
            ),
            "INPUT0",
        ),
    ]


def post_raw(server: RunningGateway, model: str, body: bytes) -> tuple[int, dict]:
    host, port = server.http_url.split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        connection.request(
            "POST", f"/v2/models/{model}/infer", body, {"Content-Type": "application/json"}
        )
        response = connection.getresponse()
        return response.status, orjson.loads(response.read())
    finally:
        connection.close()


def grpc_bad_shape(clients: Clients) -> None:
    inputs = [grpcclient.InferInput(n, [1, 15], "INT32") for n in ("INPUT0", "INPUT1")]
    for infer_input in inputs:
        infer_input.set_data_from_numpy(np.ones((1, 15), np.int32))
    with pytest.raises(InferenceServerException) as raised:
        clients.get("grpc").infer("batched", inputs)
    assert raised.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "INPUT0" in raised.value.message()


def test_a_malformed_request_among_good_ones_fails_alone(server: RunningGateway) -> None:
    batcher = batcher_of(server, "batched")
    bad = _bad_bodies()
    jobs: list[Callable[[], Any]] = []
    refused: list[tuple[bytes, str, tuple[int, dict]]] = []
    good = 0
    with Clients(server) as clients, Counting(batcher) as counted:
        for i in range(160):
            if i % 10 == 0:  # a bad HTTP body
                raw, fragment = bad[(i // 10) % len(bad)]
                jobs.append(
                    lambda raw=raw, fragment=fragment: refused.append(
                        (raw, fragment, post_raw(server, "batched", raw))
                    )
                )
            elif i % 10 == 5:  # a bad gRPC request
                jobs.append(lambda: grpc_bad_shape(clients))
            else:
                good += 1
                protocol, outputs = PROTOCOLS[i % 3], OUTPUT_CHOICES[i % 4]
                jobs.append(
                    lambda i=i, p=protocol, o=outputs: infer_add_sub(
                        clients, p, "batched", 1000 + i, 1 + i % 4, o
                    )
                )
        run_all(jobs)
        assert len(refused) == 16
        for raw, fragment, (status, payload) in refused:
            assert status == 400, (raw, payload)
            assert fragment in payload["error"], (raw, payload)
        wait_idle(batcher)
    delta = counted.delta
    assert delta is not None
    assert delta.requests == good  # the refused ones never reached the line
    assert delta.batches < delta.requests
    with Clients(server) as clients:  # and the model still serves
        infer_add_sub(clients, "http-binary", "batched", 9999, 2, None)


def infer_lookup(clients: Clients, protocol: str, indices: list[int]) -> np.ndarray:
    """Look up `indices` (one row each) and return ROW, or raise InferenceServerException."""
    module: Any = grpcclient if protocol == "grpc" else httpclient
    array = np.array(indices, dtype=np.int64)[:, None]
    infer_input = module.InferInput("INDEX", list(array.shape), "INT64")
    if protocol == "grpc":
        infer_input.set_data_from_numpy(array)
    else:
        infer_input.set_data_from_numpy(array, binary_data=protocol == "http-binary")
    result = clients.get(protocol).infer("lookup", [infer_input])
    rows: np.ndarray = result.as_numpy("ROW")
    return rows


def test_a_request_whose_values_fail_the_model_fails_alone_not_its_batch(
    server: RunningGateway,
) -> None:
    """An index out of range fails the model's run: merged with other callers' rows, it would
    fail them all with "cannot run on this input". Each caller whose own rows run gets its
    answer; each bad request gets the model's error for its own run."""
    batcher = batcher_of(server, "lookup")
    plan = []
    for i in range(150):
        indices = [(7 * i + row) % LOOKUP_ROWS for row in range(1 + i % 3)]
        if i % 15 == 4:
            indices[-1] = LOOKUP_ROWS + i  # out of range
        plan.append((PROTOCOLS[i % 3], indices))
    outcomes: dict[int, np.ndarray | InferenceServerException] = {}

    def call(i: int, protocol: str, indices: list[int]) -> None:
        try:
            outcomes[i] = infer_lookup(clients, protocol, indices)
        except InferenceServerException as refused:
            outcomes[i] = refused

    with Clients(server) as clients, Counting(batcher) as counted:
        run_all([(lambda i=i, p=p, x=x: call(i, p, x)) for i, (p, x) in enumerate(plan)])
        wait_idle(batcher)
    for i, (protocol, indices) in enumerate(plan):
        outcome = outcomes[i]
        if indices[-1] >= LOOKUP_ROWS:
            assert isinstance(outcome, InferenceServerException), (i, protocol)
            status = "StatusCode.INVALID_ARGUMENT" if protocol == "grpc" else "400"
            assert outcome.status() == status, (i, protocol, outcome)
            assert f"idx={indices[-1]}" in outcome.message(), (i, protocol, outcome)
        else:
            assert not isinstance(outcome, InferenceServerException), (i, protocol, outcome)
            table_rows = np.array(indices)[:, None, None] * 10.0 + np.arange(4)
            np.testing.assert_array_equal(outcome, table_rows, err_msg=f"{i} {protocol}")
    delta = counted.delta
    assert delta is not None
    assert delta.split >= 1, delta  # bad requests were merged with good ones, then split
    with urllib.request.urlopen(f"http://{server.http_url}/metrics", timeout=10) as response:
        exposition = response.read().decode()
    assert f'gateway_batch_splits_total{{model="lookup",version="1"}} {batcher.stats.split}.0' in (
        exposition
    )
    with Clients(server) as clients:  # and the model still serves
        assert infer_lookup(clients, "grpc", [3]).tolist() == [[[30.0, 31.0, 32.0, 33.0]]]


# -- (c) no dynamic_batching: never merged -------------------------------------------------------


def test_a_config_without_dynamic_batching_never_merges(server: RunningGateway) -> None:
    batcher = batcher_of(server, "unmerged")
    assert not batcher.config.merge
    count = 96
    with Clients(server) as clients, Counting(batcher) as counted:
        run_all(
            [
                (
                    lambda i=i: infer_add_sub(
                        clients, PROTOCOLS[i % 3], "unmerged", i, 1 + i % 4, OUTPUT_CHOICES[i % 4]
                    )
                )
                for i in range(count)
            ]
        )
    delta = counted.delta
    assert delta is not None
    assert delta.requests == delta.batches == count
    assert set(batcher.statistics.batches) <= {1, 2, 3, 4}  # each batch: one request's rows


# -- (d) batches grow with load -------------------------------------------------------------------


def infer_slow(
    client: grpcclient.InferenceServerClient, model: str, i: int, rows: int = 1, **kwargs: Any
) -> np.ndarray:
    x = np.full((rows, SLOW_WIDTH), i / 1000, np.float32)
    infer_input = grpcclient.InferInput("X", [rows, SLOW_WIDTH], "FP32")
    infer_input.set_data_from_numpy(x)
    result = client.infer(model, [infer_input], **kwargs)
    y = result.as_numpy("Y")
    assert y.shape == (rows, SLOW_WIDTH)
    return y


def test_mean_batch_size_grows_with_concurrency(server: RunningGateway) -> None:
    batcher = batcher_of(server, "slow")
    assert batcher.config.merge and batcher.config.max_queue_delay_s == 0
    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        reference = infer_slow(client, "slow", 1)[0]  # the answer for one row of 0.001
        with Counting(batcher) as sequential:
            for i in range(20):
                infer_slow(client, "slow", i)
    finally:
        client.close()
    assert sequential.delta is not None
    assert sequential.delta.batches == 20 and sequential.delta.mean_rows == 1.0

    def one_client() -> None:
        own = grpcclient.InferenceServerClient(server.grpc_url)
        try:
            for _ in range(4):
                y = infer_slow(own, "slow", 1)
                np.testing.assert_allclose(y[0], reference, rtol=1e-5)
        finally:
            own.close()

    with Counting(batcher) as concurrent:
        run_all([one_client] * CLIENT_THREADS)
    delta = concurrent.delta
    assert delta is not None
    assert delta.requests == 4 * CLIENT_THREADS
    assert delta.mean_rows > 2, delta


# -- (e) callers that leave while queued -----------------------------------------------------------


def test_grpc_callers_that_give_up_in_line_do_not_disturb_the_others(
    server: RunningGateway,
) -> None:
    batcher = batcher_of(server, "slow_one")
    wait_idle(batcher)
    with Clients(server) as clients, ThreadPoolExecutor(8) as pool, Counting(batcher) as counted:
        # The long batch must outlast the impatient callers' 0.3 s by a wide margin: at 1,024
        # rows it ran 0.36 s in the gateway, and under a loaded suite it sometimes ended first.
        long: Future[np.ndarray] = pool.submit(
            lambda: infer_slow(clients.get("grpc"), "slow_one", 0, rows=2048)
        )
        wait_until(lambda: batcher.running == 1, "the long batch running")
        patient = [
            pool.submit(
                lambda i=i: infer_slow(clients.get("grpc"), "slow_one", i, 2, client_timeout=30)
            )
            for i in (1, 2)
        ]
        wait_until(lambda: batcher.waiting == 2, "two patient callers in line")
        impatient = [
            pool.submit(
                lambda i=i: infer_slow(clients.get("grpc"), "slow_one", i, client_timeout=0.3)
            )
            for i in (3, 4, 5)
        ]
        wait_until(lambda: batcher.waiting == 5, "the impatient callers in line")
        wait_until(lambda: batcher.waiting == 2, "the impatient callers gone from the line")
        assert batcher.running == 1  # they left while the long batch still ran
        for future in impatient:
            with pytest.raises(InferenceServerException) as raised:
                future.result(WAIT_S)
            assert raised.value.status() == "StatusCode.DEADLINE_EXCEEDED"
        assert long.result(60).shape == (2048, SLOW_WIDTH)
        for i, future in zip((1, 2), patient, strict=True):
            y = future.result(WAIT_S)
            single = infer_slow(clients.get("grpc"), "slow_one", i)
            np.testing.assert_allclose(y, np.repeat(single, 2, axis=0), rtol=1e-5)
    delta = counted.delta
    assert delta is not None
    # The long batch, the two patient callers (merged) and the two single checks; the
    # impatient ones never ran.
    assert delta.requests == 1 + 2 + 2
    assert delta.batches == 1 + 1 + 2
    assert delta.refused == 0
    wait_idle(batcher)


def test_an_http_client_that_disconnects_in_line_leaves_it(server: RunningGateway) -> None:
    """The batcher's contract: a caller that leaves (cancelled or disconnected) is taken out of
    the line and never run."""
    batcher = batcher_of(server, "slow_one")
    wait_idle(batcher)
    x = np.full((1, SLOW_WIDTH), 0.5, np.float32)
    body = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "X",
                    "shape": [1, SLOW_WIDTH],
                    "datatype": "FP32",
                    "data": x.ravel().tolist(),
                }
            ]
        }
    )
    head = (
        f"POST /v2/models/slow_one/infer HTTP/1.1\r\nHost: {server.http_url}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    host, port = server.http_url.split(":")
    with Clients(server) as clients, ThreadPoolExecutor(1) as pool, Counting(batcher) as counted:
        long = pool.submit(lambda: infer_slow(clients.get("grpc"), "slow_one", 0, rows=1024))
        wait_until(lambda: batcher.running == 1, "the long batch running")
        with socket.create_connection((host, int(port)), timeout=WAIT_S) as connection:
            connection.sendall(head.encode() + body)
            wait_until(lambda: batcher.waiting == 1, "the HTTP caller in line")
        # The connection is closed: the caller is gone.
        wait_until(
            lambda: batcher.waiting == 0 or long.done(), "the line empty or the long batch done"
        )
        assert long.result(60).shape == (1024, SLOW_WIDTH)
        wait_idle(batcher)
    delta = counted.delta
    assert delta is not None
    assert delta.requests == 1, f"the disconnected caller's request was run anyway: {delta}"


@pytest.fixture
def quick_server(tmp_path: Path) -> Iterator[RunningGateway]:
    models.add_sub(tmp_path / "quick" / "1" / "model.onnx", width=WIDTH)  # merged, no delay
    # "Short" is generous here so that a run slowed by a busy test machine still counts.
    running = RunningGateway(tmp_path, solo_on_loop_us=10_000_000)
    yield running
    running.stop()


def test_a_lone_caller_runs_on_the_loop_and_two_callers_never_do(
    quick_server: RunningGateway,
) -> None:
    """A request alone in flight on a model whose one-row run is short skips the inference
    thread (--solo-on-loop-us): a lone gRPC caller, or a lone HTTP connection. With a second
    caller beside it (another HTTP connection that asked for inference, an HTTP connection beside
    gRPC calls, an open stream) no request does. Every answer is exact either way."""
    server = quick_server
    batcher = batcher_of(server, "quick")
    callers = server.gateway.service.callers

    def on_loop(protocol: str, first: int, client: Any = None) -> int:
        with Clients(server) as clients, Counting(batcher) as counted:
            for i in range(first, first + 3):
                if client is None:
                    infer_add_sub(clients, protocol, "quick", i, 1, None)
                else:
                    x0, x1 = add_sub_inputs(i, 1)
                    inputs = [
                        httpclient.InferInput(n, [1, WIDTH], "INT32") for n in ("INPUT0", "INPUT1")
                    ]
                    inputs[0].set_data_from_numpy(x0)
                    inputs[1].set_data_from_numpy(x1)
                    got = client.infer("quick", inputs).as_numpy("OUTPUT0")
                    np.testing.assert_array_equal(got, x0 + x1)
        assert counted.delta is not None and counted.delta.requests == 3
        return counted.delta.on_loop

    on_loop("grpc", 0)  # times a one-row run
    assert on_loop("grpc", 10) == 3
    assert on_loop("http-binary", 20) == 3  # a new connection, alone
    wait_until(lambda: callers.http_connections == 0, "the server seeing that connection close")
    first = httpclient.InferenceServerClient(server.http_url)
    second = httpclient.InferenceServerClient(server.http_url)
    try:
        assert on_loop("http", 30, first) == 3
        assert on_loop("grpc", 40) == 0  # an HTTP caller's connection is open
        assert on_loop("http", 50, second) == 0  # two HTTP callers
        assert on_loop("http", 60, first) == 0
    finally:
        first.close()
        second.close()
    wait_until(lambda: callers.http_connections == 0, "the server seeing both connections close")
    assert on_loop("grpc", 70) == 3

    streaming = grpcclient.InferenceServerClient(server.grpc_url)
    answers: list[Any] = []
    streaming.start_stream(callback=lambda result, error: answers.append(error or result))
    try:
        x0, x1 = add_sub_inputs(80, 1)
        inputs = [grpcclient.InferInput(n, [1, WIDTH], "INT32") for n in ("INPUT0", "INPUT1")]
        inputs[0].set_data_from_numpy(x0)
        inputs[1].set_data_from_numpy(x1)
        streaming.async_stream_infer("quick", inputs)
        wait_until(lambda: bool(answers), "the streamed answer")
        assert on_loop("grpc", 90) == 0  # an open stream is a caller
    finally:
        streaming.stop_stream()
        streaming.close()
    np.testing.assert_array_equal(answers[0].as_numpy("OUTPUT0"), x0 + x1)

"""OpenTelemetry tracing over the wire: a real gateway exports with its real OTLP exporter to a
small OTLP receiver on loopback, and the spans it received are checked: the server span
continues the caller's traceparent (HTTP header, gRPC metadata), queue and inference spans are
its children, batch spans link every request they served, failures have status ERROR, a
sampling ratio of 0 exports nothing, tracing off creates nothing, and log lines written during a
traced request carry its ids."""

from __future__ import annotations

import io
import json
import logging
import secrets
import threading
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status
from tritonclient.utils import InferenceServerException

from gateway.app.logs import log_handler
from gateway.app.server import StartupError, build_tracing
from gateway.config.settings import GatewaySettings
from gateway.core.telemetry import BatchEvent, RequestEvent
from tests.support import models
from tests.support.server import RunningGateway

WIDTH = 4
MODEL = "batched"
# A long queue delay, so that concurrent requests are served by one batch.
BATCHED_CONFIG = """
max_batch_size: 8
instance_group [ { count: 1, kind: KIND_CPU } ]
dynamic_batching { max_queue_delay_microseconds: 100000 }
"""
PROTOCOLS = ("http", "grpc")
WAIT_S = 10.0


# -- the OTLP receiver ------------------------------------------------------------------------


@dataclass
class Received:
    """Every span a receiver got, with its resource attributes."""

    spans: list[Span] = field(default_factory=list)
    resources: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, request: trace_service_pb2.ExportTraceServiceRequest) -> None:
        with self.lock:
            for resource_spans in request.resource_spans:
                self.resources.append(attributes(resource_spans.resource.attributes))
                for scope_spans in resource_spans.scope_spans:
                    self.spans.extend(scope_spans.spans)

    def snapshot(self) -> list[Span]:
        with self.lock:
            return list(self.spans)

    def clear(self) -> None:
        with self.lock:
            self.spans.clear()
            self.resources.clear()


def value(any_value: AnyValue) -> Any:
    return getattr(any_value, any_value.WhichOneof("value"))


def attributes(pairs: Any) -> dict[str, Any]:
    return {pair.key: value(pair.value) for pair in pairs}


class HttpReceiver:
    """OTLP/HTTP (protobuf) on 127.0.0.1, port 0: POST /v1/traces."""

    def __init__(self) -> None:
        self.received = Received()
        received = self.received

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if self.path != "/v1/traces":
                    self.send_error(404)
                    return
                request = trace_service_pb2.ExportTraceServiceRequest()
                request.ParseFromString(body)
                received.add(request)
                answer = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}/v1/traces"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(WAIT_S)


class GrpcReceiver(trace_service_pb2_grpc.TraceServiceServicer):
    """OTLP/gRPC on 127.0.0.1, port 0."""

    def __init__(self) -> None:
        self.received = Received()
        self._server = grpc.server(futures.ThreadPoolExecutor(2))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(self, self._server)
        port = self._server.add_insecure_port("127.0.0.1:0")
        self.endpoint = f"http://127.0.0.1:{port}"
        self._server.start()

    def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: Any
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        self.received.add(request)
        return trace_service_pb2.ExportTraceServiceResponse()

    def close(self) -> None:
        self._server.stop(None).wait(WAIT_S)


# -- gateways ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tracing")
    models.add_sub(root / MODEL / "1" / "model.onnx", width=WIDTH)
    models.write_config(root / MODEL, BATCHED_CONFIG)
    return root


def start_gateway(repository: Path, env: dict[str, str], **settings: Any) -> RunningGateway:
    """A gateway built while `env` is set (the SDK reads OTEL_* when tracing is built)."""
    with pytest.MonkeyPatch.context() as patch:
        for name, setting in env.items():
            patch.setenv(name, setting)
        return RunningGateway(repository, inference_threads=1, intra_op_threads=1, **settings)


@pytest.fixture(scope="module")
def receiver() -> Iterator[HttpReceiver]:
    running = HttpReceiver()
    yield running
    running.close()


@pytest.fixture(scope="module")
def traced(repository: Path, receiver: HttpReceiver) -> Iterator[RunningGateway]:
    env = {
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": receiver.endpoint,
        "OTEL_TRACES_SAMPLER": "parentbased_always_on",
        "OTEL_SERVICE_NAME": "gateway-under-test",
    }
    running = start_gateway(repository, env, tracing=True)
    yield running
    running.stop()


def exported(server: RunningGateway, receiver: HttpReceiver) -> list[Span]:
    """Every span the gateway finished so far, as the receiver got them."""
    tracing = server.gateway.tracing
    assert tracing is not None
    assert tracing.force_flush()
    return receiver.received.snapshot()


# -- requests ---------------------------------------------------------------------------------


def new_traceparent(sampled: bool = True) -> tuple[str, bytes, bytes]:
    trace_id, span_id = secrets.token_bytes(16), secrets.token_bytes(8)
    header = f"00-{trace_id.hex()}-{span_id.hex()}-{'01' if sampled else '00'}"
    return header, trace_id, span_id


def infer(
    server: RunningGateway,
    protocol: str,
    headers: dict[str, str],
    request_id: str = "",
    rows: int = 1,
    width: int = WIDTH,
) -> None:
    module: Any = grpcclient if protocol == "grpc" else httpclient
    url = server.grpc_url if protocol == "grpc" else server.http_url
    client = module.InferenceServerClient(url)
    try:
        inputs = []
        for name in ("INPUT0", "INPUT1"):
            infer_input = module.InferInput(name, [rows, width], "INT32")
            infer_input.set_data_from_numpy(np.ones((rows, width), dtype=np.int32))
            inputs.append(infer_input)
        result = client.infer(MODEL, inputs, request_id=request_id, headers=headers)
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), np.full((rows, width), 2))
    finally:
        client.close()


def spans_of(spans: list[Span], trace_id: bytes) -> list[Span]:
    return [span for span in spans if span.trace_id == trace_id]


def one(spans: list[Span], name: str) -> Span:
    found = [span for span in spans if span.name == name]
    assert len(found) == 1, [span.name for span in spans]
    return found[0]


# -- tests ------------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_server_span_continues_the_callers_trace(
    traced: RunningGateway, receiver: HttpReceiver, protocol: str
) -> None:
    traceparent, trace_id, parent_id = new_traceparent()
    headers = {"traceparent": traceparent, "tracestate": "vendor=opaque"}
    infer(traced, protocol, headers, request_id=f"req-{protocol}", rows=2)
    spans = spans_of(exported(traced, receiver), trace_id)

    server = one(spans, f"infer {MODEL}")
    assert server.parent_span_id == parent_id
    assert server.kind == Span.SPAN_KIND_SERVER
    assert server.trace_state == "vendor=opaque"
    assert server.status.code != Status.STATUS_CODE_ERROR
    assert attributes(server.attributes) == {
        "gateway.model.name": MODEL,
        "gateway.model.version": "1",
        "gateway.role": "primary",
        "gateway.protocol": protocol,
        "gateway.request.id": f"req-{protocol}",
        "gateway.request.rows": 2,
    }
    queue, inference = one(spans, "queue"), one(spans, "inference")
    for child in (queue, inference):
        assert child.parent_span_id == server.span_id
        assert child.kind == Span.SPAN_KIND_INTERNAL
        assert server.start_time_unix_nano <= child.start_time_unix_nano
        assert child.start_time_unix_nano <= child.end_time_unix_nano
        assert child.end_time_unix_nano <= server.end_time_unix_nano
    assert queue.end_time_unix_nano <= inference.start_time_unix_nano
    assert attributes(inference.attributes)["gateway.batch.size"] >= 2
    # The service's resource: OTEL_SERVICE_NAME, and the gateway's version.
    resources = receiver.received.resources
    assert any(r.get("service.name") == "gateway-under-test" for r in resources)
    assert all("service.version" in r for r in resources)


def test_batch_spans_link_every_request_they_served(
    traced: RunningGateway, receiver: HttpReceiver
) -> None:
    callers = [new_traceparent() for _ in range(6)]
    start = threading.Barrier(len(callers))

    def call(i: int) -> None:
        start.wait(WAIT_S)
        infer(traced, PROTOCOLS[i % 2], {"traceparent": callers[i][0]}, rows=1)

    with futures.ThreadPoolExecutor(len(callers)) as pool:
        for done in [pool.submit(call, i) for i in range(len(callers))]:
            done.result(WAIT_S)
    spans = exported(traced, receiver)
    servers = {caller[1]: one(spans_of(spans, caller[1]), f"infer {MODEL}") for caller in callers}
    linked = {(server.trace_id, server.span_id): server for server in servers.values()}
    batches = [
        span
        for span in spans
        if span.name == f"batch {MODEL}"
        and any((link.trace_id, link.span_id) in linked for link in span.links)
    ]
    seen: list[tuple[bytes, bytes]] = []
    for batch in batches:
        assert batch.parent_span_id == b""  # a root of its own trace, not a child
        assert batch.trace_id not in servers
        links = [(link.trace_id, link.span_id) for link in batch.links]
        seen += links
        assert attributes(batch.attributes) == {
            "gateway.model.name": MODEL,
            "gateway.model.version": "1",
            "gateway.batch.size": len(links),  # one row each
            "gateway.batch.requests": len(links),
        }
        # Every request's inference span links back to the batch that ran it.
        for trace_id, _ in links:
            inference = one(spans_of(spans, trace_id), "inference")
            assert [(lk.trace_id, lk.span_id) for lk in inference.links] == [
                (batch.trace_id, batch.span_id)
            ]
            assert batch.start_time_unix_nano == inference.start_time_unix_nano
    assert sorted(seen) == sorted(linked), "each request is linked from exactly one batch"
    assert max(len(batch.links) for batch in batches) >= 2, "no batch served two requests"


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_failed_request_span_has_status_error(
    traced: RunningGateway, receiver: HttpReceiver, protocol: str
) -> None:
    traceparent, trace_id, parent_id = new_traceparent()
    with pytest.raises(InferenceServerException):
        infer(traced, protocol, {"traceparent": traceparent}, width=WIDTH + 1)
    spans = spans_of(exported(traced, receiver), trace_id)
    server = one(spans, f"infer {MODEL}")
    assert server.parent_span_id == parent_id
    assert server.status.code == Status.STATUS_CODE_ERROR
    assert "INPUT0" in server.status.message
    assert attributes(server.attributes)["error.type"] == "invalid_argument"
    assert [span.name for span in spans] == [f"infer {MODEL}"]  # it never queued


def test_unsampled_caller_is_not_traced(traced: RunningGateway, receiver: HttpReceiver) -> None:
    traceparent, trace_id, _ = new_traceparent(sampled=False)
    for protocol in PROTOCOLS:
        infer(traced, protocol, {"traceparent": traceparent})
    assert spans_of(exported(traced, receiver), trace_id) == []


class LoggingObserver:
    """A telemetry listener that logs one line per request, inside the request's handling."""

    def __init__(self) -> None:
        self.logger = logging.getLogger("tests.tracing.observer")

    def request_finished(self, event: RequestEvent) -> None:
        self.logger.warning("answered %s", event.request_id)

    def batch_finished(self, event: BatchEvent) -> None:
        pass


def test_log_lines_of_a_traced_request_carry_its_ids(
    traced: RunningGateway, receiver: HttpReceiver
) -> None:
    observer = LoggingObserver()
    text, json_lines = io.StringIO(), io.StringIO()
    handlers = [log_handler("text", text), log_handler("json", json_lines)]
    for handler in handlers:
        observer.logger.addHandler(handler)
    telemetry = traced.gateway.registry.telemetry
    before = telemetry.observers
    telemetry.observers = (*before, observer)
    callers = {protocol: new_traceparent() for protocol in PROTOCOLS}
    unsampled, _, _ = new_traceparent(sampled=False)
    try:
        for protocol, (traceparent, _, _) in callers.items():
            infer(traced, protocol, {"traceparent": traceparent}, request_id=f"log-{protocol}")
        infer(traced, "http", {"traceparent": unsampled}, request_id="log-unsampled")
    finally:
        telemetry.observers = before
        for handler in handlers:
            observer.logger.removeHandler(handler)
    spans = exported(traced, receiver)
    text_lines = text.getvalue().splitlines()
    entries = [json.loads(line) for line in json_lines.getvalue().splitlines()]
    for protocol, (_, trace_id, _) in callers.items():
        server = one(spans_of(spans, trace_id), f"infer {MODEL}")
        ids = f"trace_id={trace_id.hex()} span_id={server.span_id.hex()}"
        assert f"answered log-{protocol} {ids}" in "\n".join(text_lines)
        entry = next(e for e in entries if e["message"] == f"answered log-{protocol}")
        assert (entry["trace_id"], entry["span_id"]) == (trace_id.hex(), server.span_id.hex())
    assert any(line.endswith("answered log-unsampled") for line in text_lines)
    unsampled_entry = next(e for e in entries if e["message"] == "answered log-unsampled")
    assert "trace_id" not in unsampled_entry


def test_sampling_ratio_zero_exports_nothing(repository: Path) -> None:
    receiver = HttpReceiver()
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint.removesuffix("/v1/traces"),
        "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": "0",
    }
    server = start_gateway(repository, env, tracing=True)
    try:
        assert server.gateway.registry.telemetry.tracing is not None
        for protocol in PROTOCOLS:
            infer(server, protocol, {})
    finally:
        server.stop()  # flushes and shuts the exporter down
        receiver.close()
    assert receiver.received.snapshot() == []


def test_otlp_over_grpc(repository: Path) -> None:
    receiver = GrpcReceiver()
    env = {
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
    }
    server = start_gateway(repository, env, tracing=True)
    traceparent, trace_id, parent_id = new_traceparent()
    try:
        infer(server, "grpc", {"traceparent": traceparent})
    finally:
        server.stop()  # flushes
        receiver.close()
    spans = spans_of(receiver.received.snapshot(), trace_id)
    assert sorted(span.name for span in spans) == sorted(["inference", f"infer {MODEL}", "queue"])
    assert one(spans, f"infer {MODEL}").parent_span_id == parent_id
    batches = [s for s in receiver.received.snapshot() if s.name == f"batch {MODEL}"]
    assert len(batches) == 1
    assert batches[0].links[0].trace_id == trace_id


def test_tracing_off_creates_nothing(repository: Path) -> None:
    receiver = HttpReceiver()
    # The OTEL_* variables alone do not turn tracing on: the gateway's setting does.
    env = {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": receiver.endpoint}
    server = start_gateway(repository, env)
    try:
        assert server.gateway.tracing is None
        assert server.gateway.registry.telemetry.tracing is None
        traceparent, _, _ = new_traceparent()
        for protocol in PROTOCOLS:
            infer(server, protocol, {"traceparent": traceparent})
    finally:
        server.stop()
        receiver.close()
    assert receiver.received.snapshot() == []


@pytest.mark.parametrize(
    "env", [{"OTEL_SDK_DISABLED": "true"}, {"OTEL_TRACES_EXPORTER": "none"}], ids=str
)
def test_otel_variables_can_turn_tracing_off(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str]
) -> None:
    for name, setting in env.items():
        monkeypatch.setenv(name, setting)
    assert build_tracing(GatewaySettings(tracing=True)) is None


@pytest.mark.parametrize(
    ("name", "setting"),
    [("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"), ("OTEL_TRACES_EXPORTER", "nonesuch")],
)
def test_unusable_otel_variables_stop_the_start(
    monkeypatch: pytest.MonkeyPatch, name: str, setting: str
) -> None:
    monkeypatch.setenv(name, setting)
    with pytest.raises(StartupError, match=setting):
        build_tracing(GatewaySettings(tracing=True))

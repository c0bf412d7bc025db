"""The httptools front end at the byte level: keep-alive, pipelining, slow and odd clients, the
hand-off to aiohttp in the middle of a connection, Expect, 413 and the drain on stop.

Everything here goes through raw sockets, so the requests can be split, glued together and
malformed as real clients (and attackers) do.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import orjson
import pytest

from tests.support import models
from tests.support.server import RunningGateway

TIMEOUT_S = 10
LIMIT = 64 * 1024


@dataclass
class Answer:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes

    def json(self) -> object:
        return orjson.loads(self.body)


def read_answer(stream: BinaryIO) -> Answer:
    """One response off a connection, framed by Content-Length (or by close)."""
    status_line = stream.readline()
    assert status_line.startswith((b"HTTP/1.1 ", b"HTTP/1.0 ")), status_line
    status = int(status_line.split()[1])
    headers: dict[str, str] = {}
    while (line := stream.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    if status < 200:  # interim: no body
        body = b""
    elif "content-length" in headers:
        body = stream.read(int(headers["content-length"]))
    else:
        body = stream.read()
    return Answer(status, headers, body)


class Connection:
    """A raw client connection to the gateway's HTTP port."""

    def __init__(self, server: RunningGateway) -> None:
        host, port = server.http_url.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=TIMEOUT_S)
        self.stream = self.sock.makefile("rb")

    def send(self, *parts: bytes) -> None:
        for part in parts:
            self.sock.sendall(part)

    def answer(self) -> Answer:
        return read_answer(self.stream)

    def closed_by_server(self) -> bool:
        return self.stream.read(1) == b""

    def close(self) -> None:
        self.stream.close()
        self.sock.close()


@pytest.fixture
def connect(gateway: RunningGateway) -> Iterator[type[Connection]]:
    opened: list[Connection] = []

    def open_one() -> Connection:
        connection = Connection(gateway)
        opened.append(connection)
        return connection

    yield open_one  # type: ignore[misc]
    for connection in opened:
        connection.close()


@pytest.fixture(scope="module", params=["uvloop", "asyncio"])
def gateway(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningGateway]:
    """On uvloop (what `gateway serve` runs) and asyncio: their transports differ."""
    root = tmp_path_factory.mktemp("front-end")
    models.add_sub(root / "simple" / "1" / "model.onnx", width=4)
    running = RunningGateway(root, max_request_bytes=LIMIT, event_loop=request.param)
    yield running
    running.stop()


def infer_body(base: int) -> bytes:
    a = list(range(base, base + 4))
    return orjson.dumps(
        {
            "inputs": [
                {"name": "INPUT0", "datatype": "INT32", "shape": [1, 4], "data": a},
                {"name": "INPUT1", "datatype": "INT32", "shape": [1, 4], "data": [1, 1, 1, 1]},
            ],
            "outputs": [{"name": "OUTPUT0"}],
        }
    )


def request(method: str, path: str, body: bytes = b"", **headers: str) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: gateway"]
    if body or method == "POST":
        lines.append(f"Content-Length: {len(body)}")
    lines += [f"{name.replace('_', '-')}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def infer_request(base: int, **headers: str) -> bytes:
    return request("POST", "/v2/models/simple/infer", infer_body(base), **headers)


def assert_sum(answer: Answer, base: int) -> None:
    assert answer.status == 200, answer
    outputs = answer.json()["outputs"]  # type: ignore[index]
    assert [o["name"] for o in outputs] == ["OUTPUT0"]
    assert outputs[0]["data"] == [base + i + 1 for i in range(4)]


def test_keep_alive_serves_many_requests_on_one_connection(connect: type[Connection]) -> None:
    connection = connect()
    for base in range(20):
        connection.send(infer_request(base))
        answer = connection.answer()
        assert_sum(answer, base)
        assert "connection" not in answer.headers
        assert answer.headers["content-type"] == "application/json"
        assert "date" in answer.headers


def test_pipelined_requests_are_answered_in_order(connect: type[Connection]) -> None:
    connection = connect()
    burst = [infer_request(b) for b in range(8)] + [request("GET", "/v2/health/ready")]
    connection.send(b"".join(burst))
    for base in range(8):
        assert_sum(connection.answer(), base)
    assert connection.answer().json() == {"ready": True}


def test_a_request_sent_one_byte_at_a_time(connect: type[Connection]) -> None:
    connection = connect()
    connection.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for byte in infer_request(7):
        connection.send(bytes([byte]))
    assert_sum(connection.answer(), 7)


@pytest.mark.parametrize(
    "raw",
    [
        b"POST /v2/models/simple/infer HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"zz\r\n",
        b"POST /v2/models/simple/infer HTTP/1.1\r\nHost: x\r\nContent-Encoding: gzip\r\n"
        b"Content-Length: 12\r\n\r\nnot gzip at all"[:-3],
    ],
    ids=["bad-chunk-size", "body-not-the-gzip-it-claims"],
)
def test_a_malformed_request_is_logged_as_one_info_line_not_a_traceback(
    connect: type[Connection], raw: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    """aiohttp logs these as ERRORs with tracebacks: any client could flood the log so."""
    with caplog.at_level(logging.INFO, logger="aiohttp"):
        connection = connect()
        connection.send(raw)
        answer = connection.answer()
        assert answer.status == 400, answer
        assert connection.closed_by_server()
    records = [r for r in caplog.records if r.name.startswith("aiohttp")]
    assert records, "aiohttp logged nothing"
    for record in records:
        assert record.levelno == logging.INFO and record.exc_info is None, record
        assert "400" in record.getMessage()


@pytest.mark.parametrize(
    "raw",
    [
        bytes.fromhex("160301") + b"\x00\xa5\x01\x00\x00\xa1\x03\x03",  # a TLS ClientHello
        b"\x00\x01garbage\r\r\n",
        b"GET /v2/health/live HTTP/1.1\r\nHost: x\n\r\n",  # never ends in CRLF CRLF
        b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\r\n",
    ],
    ids=["tls-client-hello", "binary-garbage", "lf-crlf-ending", "cr-cr-lf-ending"],
)
def test_bytes_that_cannot_start_a_request_are_refused_at_once(
    connect: type[Connection], raw: bytes
) -> None:
    """Not left waiting for a blank line that never comes (until the idle timeout)."""
    connection = connect()
    connection.send(raw)
    answer = connection.answer()
    assert answer.status == 400, answer
    assert connection.closed_by_server()


def test_an_aiohttp_route_hands_the_connection_over_mid_way(connect: type[Connection]) -> None:
    """Data-plane requests first (answered here), then a control-plane one: aiohttp takes
    the connection, with a request pipelined behind it, and serves everything after."""
    connection = connect()
    connection.send(infer_request(1))
    answer = connection.answer()
    assert_sum(answer, 1)
    assert "aiohttp" not in answer.headers.get("server", "")
    connection.send(request("GET", "/v2/models/simple/labels") + infer_request(2))
    labels = connection.answer()
    assert labels.status == 200 and labels.json() == {"model": "simple", "labels": {}}
    assert "aiohttp" in labels.headers["server"]
    assert_sum(connection.answer(), 2)
    connection.send(request("GET", "/metrics"))
    assert b"gateway_requests_total" in connection.answer().body


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"GET /v2/health/ready HTTP/1.1\nHost: x\n\n", 400),  # LF-only lines
        (
            b"POST /v2/models/simple/infer HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2"
            b"\r\n\r\nxx",
            400,
        ),
        (b"GET /v2/health/ready HTTP/1.1\r\nX: " + b"a" * (70 * 1024) + b"\r\n\r\n", 400),
        (b"GET /v2/models/simple/infer HTTP/1.1\r\nHost: x\r\n\r\n", 405),
        (b"GET /v2/models/simple/infer/ HTTP/1.1\r\nHost: x\r\n\r\n", 404),
        (b"DELETE /v2 HTTP/1.1\r\nHost: x\r\n\r\n", 405),
        (b"GET /v2/health/ready HTTP/1.1\r\n\r\n", 400),  # no Host
    ],
    ids=[
        "lf-only",
        "two-lengths",
        "huge-head",
        "wrong-method",
        "trailing-slash",
        "delete",
        "no-host",
    ],
)
def test_what_this_front_end_does_not_serve_aiohttp_answers(
    connect: type[Connection], raw: bytes, status: int
) -> None:
    connection = connect()
    connection.send(raw)
    answer = connection.answer()
    assert answer.status == status, answer
    assert "aiohttp" in answer.headers["server"]
    fresh = connect()
    fresh.send(infer_request(3))
    assert_sum(fresh.answer(), 3)


def test_chunked_and_http10_requests_are_served_by_aiohttp(connect: type[Connection]) -> None:
    body = infer_body(4)
    chunked = (
        b"POST /v2/models/simple/infer HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (body[:10], body[10:]))
        + b"0\r\n\r\n"
    )
    connection = connect()
    connection.send(chunked)
    answer = connection.answer()
    assert_sum(answer, 4)
    assert "aiohttp" in answer.headers["server"]
    old = connect()
    old.send(
        b"POST /v2/models/simple/infer HTTP/1.0\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    assert_sum(old.answer(), 4)
    assert old.closed_by_server()


def test_connection_close_is_honoured(connect: type[Connection]) -> None:
    connection = connect()
    connection.send(infer_request(5, Connection="close") + infer_request(6))
    answer = connection.answer()
    assert_sum(answer, 5)
    assert answer.headers["connection"] == "close"
    assert connection.closed_by_server()  # the pipelined request was not answered


def test_expect_100_continue(connect: type[Connection]) -> None:
    connection = connect()
    whole = infer_request(8, Expect="100-continue")
    head, body = whole.split(b"\r\n\r\n", 1)
    connection.send(head + b"\r\n\r\n")
    interim = connection.answer()
    assert interim.status == 100 and interim.body == b""
    connection.send(body)
    assert_sum(connection.answer(), 8)


def test_a_body_over_the_limit_is_refused_and_the_connection_goes_on(
    connect: type[Connection],
) -> None:
    connection = connect()
    big = b"x" * (LIMIT + 1)
    head = request("POST", "/v2/models/simple/infer", b"")
    head = head.replace(b"Content-Length: 0", b"Content-Length: %d" % len(big))
    connection.send(head)
    refused = connection.answer()
    assert refused.status == 413
    assert f"exceeds the limit of {LIMIT} bytes" in refused.json()["error"]  # type: ignore[index]
    connection.send(big, infer_request(9))  # the refused body is read and thrown away
    assert_sum(connection.answer(), 9)


@pytest.mark.parametrize("sends_the_body", [False, True])
def test_a_body_over_the_limit_with_expect_is_refused_and_the_connection_closed(
    connect: type[Connection], sends_the_body: bool
) -> None:
    """No 100 Continue: a 413 and the end of the connection, whether or not the client sends
    the body anyway (it is read and thrown away, so the client sees the answer, not a reset)."""
    connection = connect()
    connection.send(
        b"POST /v2/models/simple/infer HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n"
        b"Expect: 100-continue\r\n\r\n" % (LIMIT + 1)
    )
    answer = connection.answer()
    assert answer.status == 413 and answer.headers["connection"] == "close"
    if sends_the_body:
        connection.send(b"x" * (LIMIT + 1))
    assert connection.closed_by_server()


def test_a_repeated_host_and_a_fragment_are_aiohttp_s_to_answer(
    connect: type[Connection],
) -> None:
    connection = connect()
    connection.send(b"GET /v2/health/live HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")
    answer = connection.answer()
    assert answer.status == 400 and b"Duplicate 'Host'" in answer.body
    connection = connect()
    connection.send(request("GET", "/v2/models/simple#x"))
    answer = connection.answer()
    assert answer.status == 200 and answer.json()["name"] == "simple"  # type: ignore[index]


def test_errors_keep_the_connection_and_name_the_problem(connect: type[Connection]) -> None:
    connection = connect()
    connection.send(request("POST", "/v2/models/nope/infer", infer_body(0)))
    answer = connection.answer()
    assert answer.status == 404 and answer.json() == {"error": "unknown model 'nope'"}
    connection.send(request("POST", "/v2/models/simple/infer", b"not json"))
    answer = connection.answer()
    assert answer.status == 400 and "not valid JSON" in answer.json()["error"]  # type: ignore[index]
    connection.send(request("GET", "/v2/models/simple/versions/9/ready"))
    answer = connection.answer()
    assert answer.status == 404 and answer.json() == {
        "error": "unknown version '9' of model 'simple'"
    }
    connection.send(infer_request(10))
    assert_sum(connection.answer(), 10)


@pytest.mark.parametrize("padding", ["", " \t"], ids=["plain", "trailing-whitespace"])
def test_binary_tensor_data(connect: type[Connection], padding: str) -> None:
    """A header value's trailing whitespace is not part of it (aiohttp drops it too)."""
    a = np.arange(4, dtype=np.int32).reshape(1, 4)
    header = orjson.dumps(
        {
            "inputs": [
                {"name": n, "datatype": "INT32", "shape": [1, 4],
                 "parameters": {"binary_data_size": 16}}
                for n in ("INPUT0", "INPUT1")
            ],
            "outputs": [{"name": "OUTPUT1", "parameters": {"binary_data": True}}],
        }
    )  # fmt: skip
    body = header + a.tobytes() + a.tobytes()
    connection = connect()
    connection.send(
        request(
            "POST",
            "/v2/models/simple/versions/1/infer",
            body,
            Inference_Header_Content_Length=str(len(header)) + padding,
        )
    )
    answer = connection.answer()
    assert answer.status == 200, answer
    assert answer.headers["content-type"] == "application/octet-stream"
    length = int(answer.headers["inference-header-content-length"])
    assert orjson.loads(answer.body[:length])["outputs"][0]["parameters"] == {
        "binary_data_size": 16
    }
    assert np.frombuffer(answer.body[length:], np.int32).tolist() == [0, 0, 0, 0]


def test_a_client_that_pipelines_without_reading_is_held_back(
    connect: type[Connection],
) -> None:
    """Reading pauses once enough is read ahead; every request is still answered, in order."""
    connection = connect()
    count = 3000  # about 1 MB of requests, 4x the read-ahead bound
    sender = threading.Thread(
        target=lambda: connection.send(b"".join(infer_request(i % 50) for i in range(count)))
    )
    sender.start()
    time.sleep(0.5)  # the server's socket buffers fill; reading pauses
    for i in range(count):
        assert_sum(connection.answer(), i % 50)
    sender.join(TIMEOUT_S)


def test_stop_answers_in_flight_requests_and_closes_idle_connections(tmp_path: Path) -> None:
    models.slow(tmp_path / "slow" / "1" / "model.onnx", width=1024, depth=512)
    running = RunningGateway(tmp_path, intra_op_threads=1, shutdown_grace_s=30)
    idle, busy = Connection(running), Connection(running)
    stopping = threading.Thread(target=running.stop)
    try:
        idle.send(request("GET", "/v2/health/live"))
        assert idle.answer().status == 200
        x = np.ones((64, 1024), np.float32)
        header = orjson.dumps(
            {
                "inputs": [
                    {"name": "X", "datatype": "FP32", "shape": [64, 1024],
                     "parameters": {"binary_data_size": x.nbytes}}
                ]
            }
        )  # fmt: skip
        busy.send(
            request(
                "POST",
                "/v2/models/slow/infer",
                header + x.tobytes(),
                Inference_Header_Content_Length=str(len(header)),
            )
        )
        batcher = running.gateway.registry.resolve("slow", "").batcher
        assert batcher is not None
        deadline = time.monotonic() + TIMEOUT_S
        while batcher.running == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert batcher.running == 1
        stopping.start()
        assert idle.closed_by_server()
        answer = busy.answer()
        assert answer.status == 200, answer
        assert answer.headers["connection"] == "close"
        assert busy.closed_by_server()
    finally:
        idle.close()
        busy.close()
        if stopping.is_alive():
            stopping.join(60)
        else:
            running.stop()


def test_a_repeated_binary_header_decodes_each_body_on_its_own(
    connect: type[Connection],
) -> None:
    """The checked JSON header is reused across requests that repeat it; the bytes after it
    are read, and checked against it, for every request."""
    header = orjson.dumps(
        {
            "inputs": [
                {"name": n, "datatype": "INT32", "shape": [1, 4],
                 "parameters": {"binary_data_size": 16}}
                for n in ("INPUT0", "INPUT1")
            ],
            "outputs": [{"name": "OUTPUT0"}],
        }
    )  # fmt: skip
    length = str(len(header))

    def send(body: bytes) -> Answer:
        connection.send(
            request("POST", "/v2/models/simple/infer", body, Inference_Header_Content_Length=length)
        )
        return connection.answer()

    connection = connect()
    ones = np.ones(4, np.int32).tobytes()
    for base in (0, 10, 20):
        a = np.arange(base, base + 4, dtype=np.int32).tobytes()
        assert_sum(send(header + a + ones), base)
    short = send(header + ones + ones[:8])
    assert short.status == 400
    assert "binary_data_size 16 runs past the end of the body (8 binary bytes left)" in str(
        short.json()
    )
    extra = send(header + ones + ones + b"xxxx")
    assert extra.status == 400
    assert "4 bytes of binary data that no input claims" in str(extra.json())
    assert_sum(send(header + np.arange(5, 9, dtype=np.int32).tobytes() + ones), 5)

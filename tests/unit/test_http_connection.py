"""The httptools connection's flow control and fairness, driven byte by byte through a
recording transport so each state is reached deterministically (the integration tests in
tests/integration/test_http_front_end.py cover the same code over real sockets)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from gateway.adapters.http.connection import PIPELINED_BYTES, SERVED_PER_TURN
from gateway.adapters.http.fastpath import FastPathServer


class RecordingTransport(asyncio.Transport):
    """Records writes; calls pause_writing when a write matches `pause_on`."""

    def __init__(self, pause_on: bytes = b"") -> None:
        super().__init__()
        self.protocol: Any = None
        self.written: list[bytes] = []
        self.reading = True
        self.closing = False
        self.pause_on = pause_on

    def write(self, data: Any) -> None:
        self.written.append(bytes(data))
        if self.pause_on and self.pause_on in data:
            self.protocol.pause_writing()

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


LIVE = b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n"


def connect(pause_on: bytes = b"", **timeouts: float) -> tuple[Any, RecordingTransport]:
    service = SimpleNamespace(live=True)  # GET /v2/health/live reads only this
    server = FastPathServer(
        service,  # type: ignore[arg-type]
        None,  # type: ignore[arg-type]  # nothing here is handed to aiohttp
        max_request_bytes=1 << 20,
        compress_responses=False,
        **timeouts,
    )
    connection = server()
    transport = RecordingTransport(pause_on)
    transport.protocol = connection
    connection.connection_made(transport)
    return connection, transport


async def test_reading_pauses_when_writes_stall_while_a_body_is_awaited() -> None:
    """The 100 Continue write fills the transport's buffer while the request's body is still
    to come: whatever the client sends beyond that request is bounded all the same."""
    connection, transport = connect(pause_on=b"100 Continue")
    connection.data_received(
        b"POST /v2/models/m/infer HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
        b"Content-Length: 10\r\n\r\n"
    )
    chunk, taken = b"G" * 65536, 0
    for _ in range(64):  # 4 MiB a client that never reads sends on
        if transport.reading:
            connection.data_received(chunk)
            taken += len(chunk)
    assert not transport.reading
    assert taken <= PIPELINED_BYTES + 2 * len(chunk)


async def test_pipelined_requests_are_served_a_turn_at_a_time() -> None:
    connection, transport = connect()
    count = 3 * SERVED_PER_TURN + 5
    connection.data_received(LIVE * count)
    assert len(transport.written) == SERVED_PER_TURN  # the loop serves others in between
    for _ in range(10):
        await asyncio.sleep(0)
    assert len(transport.written) == count
    assert all(b'{"live":true}' in answer for answer in transport.written)


async def test_an_idle_connection_is_closed_after_the_keepalive_timeout() -> None:
    connection, transport = connect(keepalive_timeout_s=0.05)
    connection.data_received(LIVE)
    assert len(transport.written) == 1 and not transport.closing
    await asyncio.sleep(0.2)
    assert transport.closing


async def test_a_refused_body_is_read_and_thrown_away_then_the_connection_goes_on() -> None:
    connection, transport = connect(linger_s=5.0)
    connection.data_received(
        b"POST /v2/models/m/infer HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (2 << 20)
    )
    assert transport.written[0].startswith(b"HTTP/1.1 413 ")
    assert b"Connection: close" not in transport.written[0]
    for _ in range(32):  # the 2 MiB body, in 64 KiB reads
        connection.data_received(b"x" * 65536)
    connection.data_received(LIVE)  # what follows the body is the next request
    assert len(transport.written) == 2 and b'{"live":true}' in transport.written[1]
    assert not transport.closing


async def test_a_refused_body_that_never_comes_closes_the_connection() -> None:
    connection, transport = connect(linger_s=0.05)
    connection.data_received(
        b"POST /v2/models/m/infer HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (2 << 20)
    )
    assert transport.written[0].startswith(b"HTTP/1.1 413 ")
    await asyncio.sleep(0.2)
    assert transport.closing

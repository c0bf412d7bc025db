"""A minimal HTTP/1.1 keep-alive client for the load generator: pre-encoded requests, one
request in flight per connection, answers read by Content-Length.

aiohttp's client spends about 150 us of CPU per request on this machine, so a Python load
generator on one core gave out at about 6,000 requests/s, before a bare aiohttp echo server
did (the HTTP front-end limit was then only a lower bound). This client does the little a
benchmark needs, at about a third of that cost: it writes bytes built once per request body and
parses the status line, the headers and a Content-Length body. It refuses anything else
(chunked or compressed answers) as a bad response rather than misreading it.
"""

from __future__ import annotations

import asyncio
from collections import deque

HEADER_END = b"\r\n\r\n"


class HttpAnswer:
    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body


class ProtocolError(Exception):
    """An answer this client does not read (not HTTP/1.1 with a Content-Length body)."""


class _Connection(asyncio.Protocol):
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._buffer = bytearray()
        self._waiter: asyncio.Future[HttpAnswer] | None = None
        self.transport: asyncio.Transport | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(ConnectionError(f"connection closed: {exc}"))

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if self._waiter is not None and not self._waiter.done():
            try:
                answer = self._parse()
            except ProtocolError as exc:
                self._waiter.set_exception(exc)
                return
            if answer is not None:
                self._waiter.set_result(answer)

    def send(self, raw: bytes) -> asyncio.Future[HttpAnswer]:
        assert self.transport is not None
        self._waiter = self._loop.create_future()
        self.transport.write(raw)
        return self._waiter

    def _parse(self) -> HttpAnswer | None:
        end = self._buffer.find(HEADER_END)
        if end < 0:
            return None
        lines = bytes(self._buffer[:end]).decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
            raise ProtocolError(f"not an HTTP/1.x status line: {lines[0][:80]!r}")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if "content-length" not in headers:
            raise ProtocolError("an answer without Content-Length (chunked?) is not read here")
        if headers.get("content-encoding", "identity") != "identity":
            raise ProtocolError(f"a {headers['content-encoding']} body is not read here")
        start = end + len(HEADER_END)
        stop = start + int(headers["content-length"])
        if len(self._buffer) < stop:
            return None
        body = bytes(self._buffer[start:stop])
        del self._buffer[:stop]
        return HttpAnswer(int(parts[1]), headers, body)


class RawHttpClient:
    """Keep-alive connections to one host:port, opened on demand and reused when idle."""

    def __init__(self, host: str, port: int, timeout_s: float) -> None:
        self._host, self._port, self._timeout_s = host, port, timeout_s
        self._idle: deque[_Connection] = deque()
        self._all: list[_Connection] = []

    @staticmethod
    def encode(
        method: str, host: str, port: int, path: str, headers: dict[str, str], body: bytes
    ) -> bytes:
        """The request's bytes, built once and sent as many times as needed."""
        lines = [f"{method} {path} HTTP/1.1", f"Host: {host}:{port}"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        lines.append(f"Content-Length: {len(body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body

    async def send(self, raw: bytes) -> HttpAnswer:
        connection = self._idle.pop() if self._idle else await self._connect()
        try:
            async with asyncio.timeout(self._timeout_s):
                answer = await connection.send(raw)
        except BaseException:
            self._drop(connection)  # a half-read answer would confuse the next request
            raise
        if answer.headers.get("connection", "").lower() == "close":
            self._drop(connection)
        else:
            self._idle.append(connection)
        return answer

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(self._timeout_s):
            _, connection = await loop.create_connection(
                lambda: _Connection(loop), self._host, self._port
            )
        self._all.append(connection)
        return connection

    def _drop(self, connection: _Connection) -> None:
        if connection.transport is not None:
            connection.transport.close()

    async def close(self) -> None:
        for connection in self._all:
            self._drop(connection)
        self._idle.clear()
        self._all.clear()
        await asyncio.sleep(0)  # let the transports close

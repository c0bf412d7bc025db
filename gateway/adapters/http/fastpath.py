"""The HTTP port's connections: the data plane answered on httptools, the rest by aiohttp.

Inference, health, metadata, config and statistics requests are parsed by httptools (llhttp)
and answered without a web framework (`connection.Connection`): about 40 us of server CPU a
request instead of aiohttp's 100 (measured by `loadtest/bench.py --lean-http-echo`). Every
other request, and every request that front end does not serve itself (chunked or compressed
bodies, HTTP/1.0, upgrades, heads llhttp refuses, paths app.py might read differently), hands
the connection to aiohttp with the bytes received so far: from then on aiohttp's own protocol
serves it, so the admin, traffic, rollout, feedback and metrics routes, and every corner of
HTTP, behave exactly as the aiohttp application defines them. Both answer through `answers`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from email.utils import formatdate
from http import HTTPStatus

from aiohttp import web

from gateway.adapters.http.connection import Connection
from gateway.core.service import InferenceService

KEEPALIVE_TIMEOUT_S = 75.0
"""An idle connection is closed after this long (aiohttp's default)."""
LINGER_S = 10.0
"""How long the body of a refused (413) request is read and thrown away (aiohttp's
lingering_time) before the connection is closed instead."""


def _status_line(status: int) -> bytes:
    return b"HTTP/1.1 %d %s\r\n" % (status, HTTPStatus(status).phrase.encode())


class FastPathServer:
    """The protocol factory of the HTTP listener, and its connections' drain on stop."""

    def __init__(
        self,
        service: InferenceService,
        aiohttp_server: web.Server,
        *,
        max_request_bytes: int,
        compress_responses: bool,
        keepalive_timeout_s: float = KEEPALIVE_TIMEOUT_S,
        linger_s: float = LINGER_S,
    ) -> None:
        self.service = service
        self.aiohttp_server = aiohttp_server
        self.max_request_bytes = max_request_bytes
        self.compress_responses = compress_responses
        self.keepalive_timeout_s = keepalive_timeout_s
        self.linger_s = linger_s
        self.connections: set[Connection] = set()
        self.status_lines = {int(status): _status_line(status) for status in HTTPStatus}
        self._date_second = 0
        self._date_line = b""
        self._drained: asyncio.Event | None = None

    def __call__(self) -> asyncio.Protocol:
        return Connection(self)

    def date_line(self) -> bytes:
        """`Date: ...\\r\\n`, formatted once a second."""
        now = int(time.time())
        if now != self._date_second:
            self._date_second = now
            self._date_line = b"Date: %s\r\n" % formatdate(now, usegmt=True).encode()
        return self._date_line

    def forget(self, connection: Connection) -> None:
        self.connections.discard(connection)
        if not self.connections and self._drained is not None:
            self._drained.set()

    async def shutdown(self, listener: asyncio.Server, grace_s: float) -> None:
        """Stop listening; close idle connections at once and busy ones after their answer;
        after `grace_s`, cancel what is still running and drop its connection."""
        listener.close()
        self._drained = asyncio.Event()
        for connection in list(self.connections):
            connection.close_when_idle()
        if self.connections:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._drained.wait(), grace_s)
        for connection in list(self.connections):
            connection.abort()
        await listener.wait_closed()

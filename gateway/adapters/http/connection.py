"""One HTTP/1.1 connection of the httptools front end (see fastpath.py), until it closes or
goes to aiohttp.

One request of a connection is served at a time, in order; what a client sends ahead is read
up to PIPELINED_BYTES, then reading pauses until the answers catch up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import socket
from typing import TYPE_CHECKING

import orjson

from gateway.adapters.http import answers, codec
from gateway.adapters.http.errors import HTTP_STATUS, error_body, retry_after
from gateway.adapters.http.heads import INFER, Head, match_route, parse_head
from gateway.core.errors import INTERNAL_MESSAGE, GatewayError, PayloadTooLargeError

if TYPE_CHECKING:
    from gateway.adapters.http.fastpath import FastPathServer

logger = logging.getLogger(__name__)

MAX_HEAD_BYTES = 8190
"""A longer head goes to aiohttp, whose limits (8190 bytes a line or field) answer it."""
_REQUEST_LINE_START = re.compile(rb"(?:\r?\n)*[!#$%&'*+\-.^_`|~0-9A-Za-z]{0,32}(?: |\Z)")
"""What the first bytes of a request must look like (a method token, then a space): anything
else (a TLS handshake on this plain port, say) goes to aiohttp at once, which refuses it."""
_ODD_LINE_END = re.compile(rb"\n\r?\n|\r[^\n]")
"""A head that ended with bare LFs ('\\n\\n', '\\n\\r\\n') or has a CR not before an LF: it will
never end in CRLF CRLF, so aiohttp answers it (400) rather than this waiting for more."""
PIPELINED_BYTES = 256 * 1024
SERVED_PER_TURN = 32
"""Pipelined requests answered in one go before the loop serves others (then this goes on)."""
JOIN_BELOW_BYTES = 64 * 1024
"""Answers smaller than this go out as one write (head and body joined)."""

_SERVER_ANSWERS = {
    "server_metadata": answers.server_metadata,
    "server_live": answers.server_live,
    "server_ready": answers.server_ready,
}
_MODEL_ANSWERS = {
    "model_metadata": answers.model_metadata,
    "model_ready": answers.model_ready,
    "model_config": answers.model_config,
    "model_statistics": answers.model_statistics,
}
_JSON = codec.JSON_CONTENT_TYPE.encode()
_BINARY = codec.BINARY_CONTENT_TYPE.encode()
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_HEADER_LENGTH_LINE = codec.HEADER_LENGTH.encode() + b": %d\r\n"


class Connection(asyncio.Protocol):
    """One client connection, until it is closed or handed to aiohttp."""

    def __init__(self, server: FastPathServer) -> None:
        self._server = server
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._head: Head | None = None  # parsed (and out of the buffer), its body arriving
        self._route: tuple[str, str, str] = ("", "", "")  # the head's (route, model, version)
        self._task: asyncio.Task[None] | None = None
        self._write_paused = False
        self._read_paused = False
        self._closing = False  # answer what is in flight, then close
        self._discard = 0  # bytes of a refused body still to read and throw away
        self._close_after_discard = False
        self._turn: asyncio.Handle | None = None  # a _serve scheduled after a full turn
        self._linger: asyncio.TimerHandle | None = None
        self._idle_since = 0.0
        self._idle_timer: asyncio.TimerHandle | None = None
        self._counted = False  # among service.callers.http_connections (it asked for inference)

    # -- asyncio.Protocol ---------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        self._server.connections.add(self)
        self._idle_since = self._loop.time()
        self._idle_timer = self._loop.call_later(self._server.keepalive_timeout_s, self._check_idle)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        if self._task is not None:  # the client left: its request leaves the batcher's line
            self._task.cancel()
            self._task = None  # no cycle through the cancelled task's frame (and its body)
        for timer in (self._idle_timer, self._linger, self._turn):
            if timer is not None:
                timer.cancel()
        self._uncount()
        self._server.forget(self)

    def data_received(self, data: bytes) -> None:
        self._idle_since = self._loop.time()
        if self._discard:
            if len(data) < self._discard:
                self._discard -= len(data)
                return
            data, self._discard = data[self._discard :], 0
            if self._linger is not None:
                self._linger.cancel()
                self._linger = None
            if self._close_after_discard:
                self._close()
                return
        self._buffer += data
        self._serve()

    def eof_received(self) -> None:
        """The client sent its FIN: taken as the client leaving, so the transport closes and
        the request in flight leaves the batcher's line (connection_lost). TCP cannot tell a
        close from a half-close (`nc -N`) until an answer is written, and a client that closes
        or times out is the common case, whose work must not run for no one (nginx counts it
        499, uvicorn and aiohttp do the same). A half-closing client gets only the answers
        already written."""
        return None

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._serve()

    # -- serving ------------------------------------------------------------------------------
    def _serve(self) -> None:
        """Answer the complete requests in the buffer, in order, until one has to wait; after
        SERVED_PER_TURN of them, let the loop serve others and go on in a later turn."""
        self._turn = None
        for _ in range(SERVED_PER_TURN):
            if not (
                self._task is None
                and not self._write_paused
                and not self._discard
                and self._transport is not None
                and not self._transport.is_closing()
                and self._step()
            ):
                break
        else:
            self._turn = self._loop.call_soon(self._serve)
        self._flow()

    def _step(self) -> bool:
        """Take the next request as far as it goes now; False when it waits for bytes or
        the connection went to aiohttp."""
        buffer = self._buffer
        head = self._head
        if head is None:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:  # incomplete, or ended by bare LFs (which aiohttp refuses its way)
                if (
                    len(buffer) > MAX_HEAD_BYTES
                    or _ODD_LINE_END.search(buffer)
                    or not _REQUEST_LINE_START.match(buffer, 0, 64)
                ):
                    self._hand_off()
                return False
            head_end = end + 4
            if head_end > MAX_HEAD_BYTES:
                self._hand_off()
                return False
            with memoryview(buffer) as view:
                head = parse_head(bytes(view[:head_end]))
            route = None if head is None or not head.plain else self._route_of(head)
            if head is None or route is None:
                self._hand_off()
                return False
            del buffer[:head_end]  # a bytearray drops its front without moving the rest
            if head.content_length > self._server.max_request_bytes:
                self._refuse_too_large(head)
                return True
            self._head, self._route = head, route
            if head.expect_continue and len(buffer) < head.content_length:
                assert self._transport is not None
                self._transport.write(_CONTINUE)
        end = head.content_length
        if len(buffer) < end:
            return False
        body: bytes | bytearray
        if len(buffer) == end:  # the buffer holds just this body: hand it over, no copy
            body, self._buffer = buffer, bytearray()
        else:
            with memoryview(buffer) as view:
                body = bytes(view[:end])
            del buffer[:end]
        self._head = None
        self._dispatch(head, body)
        return True

    def _route_of(self, head: Head) -> tuple[str, str, str] | None:
        """The head's route if this front end answers it, else None."""
        route = match_route(head.method, head.url)
        if route is None:
            return None
        if route[0] != INFER:
            return route if head.content_length == 0 else None
        return route

    def _dispatch(self, head: Head, body: bytes | bytearray) -> None:
        kind, name, version = self._route
        if kind == INFER:
            if not self._counted:  # counted as it is read, so requests read together see it
                self._counted = True
                self._server.service.callers.http_connections += 1
            self._task = self._loop.create_task(self._infer(head, body, name, version))
            return
        service = self._server.service
        try:
            if kind in _SERVER_ANSWERS:
                status, document = _SERVER_ANSWERS[kind](service)
            else:
                status, document = _MODEL_ANSWERS[kind](service, name, version)
            body = orjson.dumps(document)
        except GatewayError as error:
            self._error(head, error)
            return
        except Exception:
            logger.exception("unexpected error handling GET %s", head.url.decode("latin-1"))
            self._respond(head, 500, error_body(INTERNAL_MESSAGE), _JSON)
            return
        self._respond(head, status, body, _JSON)

    def _uncount(self) -> None:
        if self._counted:
            self._counted = False
            self._server.service.callers.http_connections -= 1

    async def _infer(self, head: Head, body: bytes | bytearray, name: str, version: str) -> None:
        service = self._server.service
        try:
            payload, header_length = await answers.infer(
                service, body, head.headers, name, version, service.callers.http_solo()
            )
        except GatewayError as error:
            self._error(head, error)
        except Exception:
            logger.exception("unexpected error handling POST %s", head.url.decode("latin-1"))
            self._respond(head, 500, error_body(INTERNAL_MESSAGE), _JSON)
        else:
            # Inference-Header-Content-Length counts the JSON before any compression.
            extra = b"" if header_length is None else _HEADER_LENGTH_LINE % header_length
            if self._server.compress_responses:
                accept = head.headers.get("accept-encoding")
                payload, coding = await answers.compressed(payload, accept)
                extra += b"Vary: Accept-Encoding\r\n"  # for caches between client and server
                if coding is not None:
                    extra += b"Content-Encoding: %s\r\n" % coding.encode()
            self._respond(head, 200, payload, _JSON if header_length is None else _BINARY, extra)
        self._task = None
        self._serve()

    def _error(self, head: Head, error: GatewayError, *, close: bool = True) -> None:
        wait = retry_after(error)
        extra = b"" if wait is None else b"Retry-After: %s\r\n" % wait.encode()
        status, body = HTTP_STATUS[error.code], error_body(error.message)
        self._respond(head, status, body, _JSON, extra, close=close)

    def _respond(
        self,
        head: Head,
        status: int,
        body: bytes,
        content_type: bytes,
        extra: bytes = b"",
        *,
        close: bool = True,
    ) -> None:
        """Send an answer; with `close`, close the connection after it when the client or a
        stop asks (else the caller does)."""
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        last = self._closing or not head.keep_alive or self._close_after_discard
        server = self._server
        lines = b"%sContent-Type: %s\r\nContent-Length: %d\r\n%s%s%s\r\n" % (
            server.status_lines[status],
            content_type,
            len(body),
            extra,
            server.date_line(),
            b"Connection: close\r\n" if last else b"",
        )
        if len(body) < JOIN_BELOW_BYTES:
            transport.write(lines + body)
        else:
            transport.write(lines)
            transport.write(body)
        self._idle_since = self._loop.time()
        if last and close:
            transport.close()

    def _refuse_too_large(self, head: Head) -> None:
        """413 from Content-Length alone. The body is read and thrown away for up to LINGER_S
        (aiohttp's lingering), so the client reads the answer instead of a reset; then the
        connection goes on, or closes if the client waited for 100-continue (it may never
        send the body) or asked to close."""
        limit = self._server.max_request_bytes
        error = PayloadTooLargeError(
            f"request body of {head.content_length} bytes exceeds the limit of {limit} bytes"
        )
        end = head.content_length
        if len(self._buffer) >= end:  # all here already: the next request follows it
            del self._buffer[:end]
            self._error(head, error)
            return
        self._discard = end - len(self._buffer)
        self._buffer.clear()
        self._close_after_discard = head.expect_continue or not head.keep_alive or self._closing
        self._error(head, error, close=False)
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        if self._close_after_discard and transport.can_write_eof():
            transport.write_eof()  # the answer, then our end closed; reading goes on
        self._linger = self._loop.call_later(self._server.linger_s, self._close)

    def _flow(self) -> None:
        """Stop reading once more than PIPELINED_BYTES are buffered beyond the request being
        read (its whole body); read on when the answers have caught up."""
        transport = self._transport
        if transport is None:
            return
        needed = 0 if self._head is None else self._head.content_length
        if len(self._buffer) > needed + PIPELINED_BYTES:
            if not self._read_paused:
                self._read_paused = True
                transport.pause_reading()
        elif self._read_paused:
            self._read_paused = False
            transport.resume_reading()

    def _hand_off(self) -> None:
        """aiohttp serves this connection from now on, starting with the buffered bytes."""
        transport = self._transport
        assert transport is not None
        self._transport = None
        self._uncount()
        self._server.forget(self)
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        handler = self._server.aiohttp_server()
        transport.set_protocol(handler)
        handler.connection_made(transport)
        if self._read_paused:
            transport.resume_reading()
        data, self._buffer = bytes(self._buffer), bytearray()
        if data:
            handler.data_received(data)

    # -- closing ------------------------------------------------------------------------------
    def _check_idle(self) -> None:
        self._idle_timer = None
        if self._transport is None:
            return
        left = self._idle_since + self._server.keepalive_timeout_s - self._loop.time()
        if self._task is None and left <= 0:
            self._close()
        else:
            timeout_s = self._server.keepalive_timeout_s
            self._idle_timer = self._loop.call_later(
                max(left, min(1.0, timeout_s)), self._check_idle
            )

    def _close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def close_when_idle(self) -> None:
        """On stop: close now if no answer is being made, else after it."""
        self._closing = True
        if self._task is None:
            self._close()

    def abort(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None
        if self._transport is not None:
            self._transport.abort()

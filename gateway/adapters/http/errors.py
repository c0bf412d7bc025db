"""The one place HTTP turns errors into responses: the status table and the error middleware."""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable

import orjson
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

from gateway.core.errors import INTERNAL_MESSAGE, ErrorCode, GatewayError, OverloadedError, clipped

logger = logging.getLogger(__name__)

HTTP_STATUS: dict[ErrorCode, int] = {
    ErrorCode.INVALID_ARGUMENT: 400,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.PAYLOAD_TOO_LARGE: 413,
    ErrorCode.OVERLOADED: 429,
    ErrorCode.UNAVAILABLE: 503,
    ErrorCode.DEADLINE_EXCEEDED: 504,
    ErrorCode.UNIMPLEMENTED: 501,
    ErrorCode.UNAUTHENTICATED: 401,
    ErrorCode.PERMISSION_DENIED: 403,
    ErrorCode.INTERNAL: 500,
}


def error_body(message: str) -> bytes:
    """The JSON body of every error answer: {"error": message}."""
    return orjson.dumps({"error": message})


def retry_after(error: GatewayError) -> str | None:
    """The Retry-After header's value (whole seconds) when the error asks the client to wait."""
    if isinstance(error, OverloadedError):
        return str(max(1, math.ceil(error.retry_after_s)))
    return None


def error_response(status: int, message: str) -> web.Response:
    return web.Response(status=status, body=error_body(message), content_type="application/json")


def gateway_error_response(error: GatewayError) -> web.Response:
    response = error_response(HTTP_STATUS[error.code], error.message)
    wait = retry_after(error)
    if wait is not None:
        response.headers["Retry-After"] = wait
    return response


class ClientMistakes(logging.Filter):
    """aiohttp logs a request it cannot parse (a bad chunk size, a header it refuses, a body
    that is not the gzip it claims) as an ERROR with a traceback, though it answered the client
    400: a client's mistake, which any client could repeat to flood the log. Such a record
    becomes one INFO line (dropped where INFO is not logged)."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if not isinstance(error, HttpProcessingError | RequestPayloadError):
            return True
        detail = clipped(" ".join(str(error).split()), 200)
        record.msg, record.args = f"{record.getMessage()}: {detail}", ()
        record.exc_info = record.exc_text = None
        record.levelno, record.levelname = logging.INFO, "INFO"
        return logging.getLogger(record.name).isEnabledFor(logging.INFO)


def quiet_client_mistakes() -> None:
    """Install ClientMistakes on aiohttp's server logger (once)."""
    server_logger = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, ClientMistakes) for f in server_logger.filters):
        server_logger.addFilter(ClientMistakes())


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except GatewayError as error:
        return gateway_error_response(error)
    except web.HTTPException as error:
        if error.status < 400:
            raise
        response = error_response(error.status, error.reason)
        if "Allow" in error.headers:  # a 405 must say which methods are allowed
            response.headers["Allow"] = error.headers["Allow"]
        return response
    except ConnectionResetError:  # the client left; nobody to answer, nothing to log loudly
        logger.debug("client disconnected during %s %s", request.method, request.path)
        raise
    except Exception:
        logger.exception("unexpected error handling %s %s", request.method, request.path)
        return error_response(500, INTERNAL_MESSAGE)

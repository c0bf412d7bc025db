"""The one place HTTP turns errors into responses: the status table and the error middleware."""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable

import orjson
from aiohttp import web

from gateway.core.errors import ErrorCode, GatewayError, OverloadedError

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
        return error_response(500, "internal error; see the gateway log")

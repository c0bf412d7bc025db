"""The one error family of the gateway: every failure a client can see is a GatewayError."""

from __future__ import annotations

import enum

INTERNAL_MESSAGE = "internal error; see the gateway log"
"""What a client is told of a failure that is the gateway's own (the log has the traceback)."""

MAX_MESSAGE_CHARS = 1000
"""An error message is cut to this many characters. gRPC carries it in a trailer that clients
refuse past 16 KiB (percent-encoded: up to 12 bytes a character), so a message quoting what a
client sent must stay short whatever the client sent."""


def clipped(text: str, limit: int = 64) -> str:
    """`text` as an error message quotes a value a client chose: at most `limit` characters."""
    return text if len(text) <= limit else f"{text[:limit]}...({len(text)} characters)"


class ErrorCode(enum.Enum):
    """What went wrong, independent of the wire protocol (DESIGN.md section 8)."""

    INVALID_ARGUMENT = "invalid_argument"
    NOT_FOUND = "not_found"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    OVERLOADED = "overloaded"
    UNAVAILABLE = "unavailable"
    DEADLINE_EXCEEDED = "deadline_exceeded"
    UNIMPLEMENTED = "unimplemented"
    UNAUTHENTICATED = "unauthenticated"
    PERMISSION_DENIED = "permission_denied"
    INTERNAL = "internal"


class GatewayError(Exception):
    """Base of every error a client may see. The message must be safe to show a client."""

    code: ErrorCode = ErrorCode.INTERNAL

    def __init__(self, message: str) -> None:
        message = clipped(message, MAX_MESSAGE_CHARS)
        super().__init__(message)
        self.message = message


class InvalidInputError(GatewayError):
    code = ErrorCode.INVALID_ARGUMENT


class NotFoundError(GatewayError):
    code = ErrorCode.NOT_FOUND


class PayloadTooLargeError(GatewayError):
    code = ErrorCode.PAYLOAD_TOO_LARGE


class OverloadedError(GatewayError):
    code = ErrorCode.OVERLOADED

    def __init__(self, message: str, *, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class UnavailableError(GatewayError):
    code = ErrorCode.UNAVAILABLE


class DeadlineExceededError(GatewayError):
    code = ErrorCode.DEADLINE_EXCEEDED


class UnimplementedError(GatewayError):
    code = ErrorCode.UNIMPLEMENTED


class UnauthenticatedError(GatewayError):
    code = ErrorCode.UNAUTHENTICATED


class PermissionDeniedError(GatewayError):
    code = ErrorCode.PERMISSION_DENIED


class InternalError(GatewayError):
    code = ErrorCode.INTERNAL

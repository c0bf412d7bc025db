"""The trace and span of the request being handled, for log lines; imports no OpenTelemetry.

Tracing sets it when a sampled request arrives (and clears it for one that is not sampled); the
log filter reads it. It lives in the request's task context, so it stays set for the log lines
the front end writes after the service answered (an unexpected error's traceback) and is gone
with the task. With tracing off nothing ever sets it.
"""

from __future__ import annotations

from contextvars import ContextVar

current_span_ids: ContextVar[tuple[int, int] | None] = ContextVar(
    "gateway_current_span_ids", default=None
)
"""(trace id, span id) of the sampled request being handled in this context, or None."""


def current_ids_hex() -> tuple[str, str] | None:
    """The W3C forms (32 and 16 lower-case hex digits) of the current ids, or None."""
    ids = current_span_ids.get()
    if ids is None:
        return None
    return f"{ids[0]:032x}", f"{ids[1]:016x}"

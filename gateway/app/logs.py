"""Log set-up: one handler on the root logger, text for people or JSON for containers.

A line written while a sampled request is being handled carries its trace and span ids
(text: ` trace_id=... span_id=...` at the end; JSON: `trace_id` and `span_id` keys). With
tracing off the filter only reads an unset context variable.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

import orjson

from gateway.telemetry.trace_ids import current_ids_hex

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s%(trace_ids)s"


class TraceIdsFilter(logging.Filter):
    """Adds `trace_id` and `span_id` ('' outside a sampled request) and `trace_ids` (the text
    suffix) to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        ids = current_ids_hex()
        if ids is None:
            record.trace_id = record.span_id = record.trace_ids = ""
        else:
            record.trace_id, record.span_id = ids
            record.trace_ids = f" trace_id={ids[0]} span_id={ids[1]}"
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        trace_id = getattr(record, "trace_id", "")
        if trace_id:
            entry["trace_id"] = trace_id
            entry["span_id"] = getattr(record, "span_id", "")
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry).decode()


def log_handler(fmt: str, stream: TextIO | None = None) -> logging.Handler:
    """The gateway's handler: `fmt` 'json' or 'text', to `stream` (default stderr)."""
    handler = logging.StreamHandler(sys.stderr if stream is None else stream)
    handler.addFilter(TraceIdsFilter())
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    return handler


def configure_logging(level: str, fmt: str) -> None:
    root = logging.getLogger()
    root.handlers[:] = [log_handler(fmt)]
    root.setLevel(level)

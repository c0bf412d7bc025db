"""Requests and responses as the service sees them: names, datatypes and numpy arrays."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy.typing as npt


@dataclass(slots=True)
class Tensor:
    """One named tensor. `array` has the datatype's numpy dtype (object of bytes for BYTES)."""

    name: str
    datatype: str
    array: npt.NDArray[Any]


@dataclass(slots=True)
class InferRequest:
    model_name: str
    model_version: str
    """As the client wrote it; empty means 'let the gateway choose'."""
    inputs: list[Tensor]
    requested_outputs: list[str] | None = None
    """Output names the client asked for, in its order; None means every output."""
    id: str = ""
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class InferResponse:
    model_name: str
    model_version: str
    outputs: list[Tensor]
    id: str = ""
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RequestContext:
    """Per-request facts that do not belong to the payload."""

    protocol: str
    deadline_s: float | None = None
    """Absolute time on the service clock after which the request is not worth answering."""
    traceparent: str | None = None
    """The caller's W3C trace context (HTTP headers or gRPC metadata), if it sent one."""
    tracestate: str | None = None
    headers: Mapping[str, str] | None = None
    """HTTP headers (case-insensitive) or gRPC metadata (lower-case keys): the sticky key."""
    solo: bool = False
    """No other inference caller was in flight when this request arrived (core/callers.py)."""

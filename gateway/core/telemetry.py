"""What the core reports about requests and batches, and the ports that listen to it.

The service and the batchers emit one event per request and one per executed batch; metrics
(Prometheus) and tracing (OpenTelemetry) are listeners the app layer plugs in. With no tracing
configured nothing is created per request for it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

logger = logging.getLogger(__name__)

OK = "ok"
"""The `code` of a request that succeeded; failures carry ErrorCode values."""


@dataclass(slots=True)
class RequestTiming:
    """Filled by the batcher while a request goes through it (perf_counter nanoseconds)."""

    queue_ns: int = 0
    compute_ns: int = 0
    batch_rows: int = 0
    launched_ns: int = 0
    """When the request's batch started (0 if it never ran)."""


@dataclass(slots=True)
class RequestEvent:
    """One answered request, as the service saw it."""

    model: str
    version: str
    role: str
    """primary, canary or shadow."""
    protocol: str
    code: str
    """OK or the ErrorCode value of the failure."""
    started_ns: int
    ended_ns: int
    rows: int
    timing: RequestTiming
    request_id: str = ""
    error: str = ""
    refused_by_all: bool = False
    """Refused for the caller's mistake, not this version's: a malformed `timeout`, `priority`
    or `label` parameter, or inputs that every other loaded version named in the model's
    traffic policy refuses too (a rollout's error gate leaves it out; the request metrics
    count it)."""
    pinned: bool = False
    """The caller named the version (a number or a label): no traffic policy chose it."""
    caller_limit_s: float | None = None
    """The wait limit its caller set, if any: the gRPC deadline, or a `timeout` parameter the
    queue policy honoured (not the policy's own default)."""


@dataclass(slots=True)
class BatchEvent:
    """One model execution of a batcher."""

    model: str
    version: str
    rows: int
    requests: int
    started_ns: int
    ended_ns: int
    traces: Sequence[RequestTrace] = field(default_factory=list)
    error: str = ""


class Observer(Protocol):
    """Something that counts requests and batches (metrics)."""

    def request_finished(self, event: RequestEvent) -> None: ...

    def batch_finished(self, event: BatchEvent) -> None: ...


class RequestTrace(Protocol):
    """The trace of one request, started when it arrived; ended with its event."""

    def end(self, event: RequestEvent) -> None: ...


class Tracing(Protocol):
    """Starts request traces (continuing the caller's) and records batch spans."""

    def begin(
        self, traceparent: str | None, tracestate: str | None, model: str, role: str
    ) -> RequestTrace | None:
        """None when this request is not sampled."""
        ...

    def batch_finished(self, event: BatchEvent) -> None: ...


class Telemetry:
    """The listeners of one gateway: any number of observers, at most one tracing."""

    def __init__(self, observers: Sequence[Observer] = (), tracing: Tracing | None = None) -> None:
        self.observers = tuple(observers)
        self.tracing = tracing

    def add_observer(self, observer: Observer) -> None:
        """At start-up, before requests flow."""
        self.observers = (*self.observers, observer)

    def request_finished(self, event: RequestEvent, trace: RequestTrace | None) -> None:
        """Never raises: telemetry must not fail a request that was answered."""
        try:
            for observer in self.observers:
                observer.request_finished(event)
            if trace is not None:
                trace.end(event)
        except Exception:
            logger.exception("telemetry failed on a request of %s", event.model)

    def batch_finished(self, event: BatchEvent) -> None:
        """Never raises: telemetry must not break the batcher."""
        try:
            for observer in self.observers:
                observer.batch_finished(event)
            if self.tracing is not None and event.traces:
                self.tracing.batch_finished(event)
        except Exception:
            logger.exception("telemetry failed on a batch of %s", event.model)

"""OpenTelemetry tracing of requests and batches, configured by the standard OTEL_* variables.

One SERVER span per request ("infer {model}") continues the caller's W3C trace context, with
"queue" and "inference" child spans at the times the batcher measured; one span per executed
batch ("batch {model}") is linked to the span of every request it served, and each request's
inference span is linked back to its batch. Built only when the gateway's `tracing` setting is
on; otherwise no object of this module exists and requests pay nothing for it.

The OpenTelemetry SDK reads its own variables (OTEL_TRACES_SAMPLER[_ARG], OTEL_SERVICE_NAME,
OTEL_RESOURCE_ATTRIBUTES, OTEL_EXPORTER_OTLP_*, OTEL_BSP_*, the span limits). This module reads
only the ones that choose the exporters and whether the SDK is disabled, by the SDK's names and
with the specification's defaults (OTLP over http/protobuf).
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Mapping, Sequence
from importlib.metadata import entry_points

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.environment_variables import OTEL_TRACES_EXPORTER
from opentelemetry.sdk.environment_variables import (
    OTEL_EXPORTER_OTLP_ENDPOINT,
    OTEL_EXPORTER_OTLP_PROTOCOL,
    OTEL_EXPORTER_OTLP_TRACES_ENDPOINT,
    OTEL_EXPORTER_OTLP_TRACES_PROTOCOL,
    OTEL_SDK_DISABLED,
)
from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    Decision,
    ParentBased,
    Sampler,
    SamplingResult,
    TraceIdRatioBased,
)
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import Attributes

from gateway.core.telemetry import OK, BatchEvent, RequestEvent
from gateway.telemetry.trace_ids import current_span_ids

logger = logging.getLogger(__name__)

DEFAULT_SERVICE_NAME = "inference-gateway"
SCOPE = "gateway"

# Span attributes (no semantic convention covers model serving; ours are namespaced).
MODEL = "gateway.model.name"
VERSION = "gateway.model.version"
ROLE = "gateway.role"
PROTOCOL = "gateway.protocol"
REQUEST_ID = "gateway.request.id"
ROWS = "gateway.request.rows"
BATCH_SIZE = "gateway.batch.size"
BATCH_REQUESTS = "gateway.batch.requests"
ERROR_TYPE = "error.type"
_PRESAMPLED = "gateway.presampled"
"""Marks a root span the gateway already decided to sample (never exported as an attribute)."""


class TracingConfigError(ValueError):
    """The OTEL_* variables ask for something this gateway cannot do; the message says what."""


class _SampledBatches(Sampler):
    """The configured sampler, except that a root span with links is always recorded: only
    batch spans are started that way, and only when a request they served was sampled."""

    def __init__(self, inner: Sampler) -> None:
        self._inner = inner

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: trace.TraceState | None = None,
    ) -> SamplingResult:
        if links:
            return SamplingResult(Decision.RECORD_AND_SAMPLE, attributes)
        if attributes and attributes.get(_PRESAMPLED):  # drawn in OtelTracing.begin already
            kept = {k: v for k, v in attributes.items() if k != _PRESAMPLED}
            return SamplingResult(Decision.RECORD_AND_SAMPLE, kept)
        return self._inner.should_sample(
            parent_context, trace_id, name, kind, attributes, links, trace_state
        )

    def get_description(self) -> str:
        return self._inner.get_description()


class RequestSpan:
    """The trace of one sampled request: its server span, open until the request ends."""

    __slots__ = ("_batch", "_span", "_tracing")

    def __init__(self, tracing: OtelTracing, span: trace.Span) -> None:
        self._tracing = tracing
        self._span = span
        self._batch: SpanContext | None = None

    @property
    def span_context(self) -> SpanContext:
        return self._span.get_span_context()

    def end(self, event: RequestEvent) -> None:
        span, epoch = self._span, self._tracing.epoch_ns
        attributes: dict[str, str | int] = {
            VERSION: event.version,
            PROTOCOL: event.protocol,
            ROWS: event.rows,
        }
        if event.request_id:
            attributes[REQUEST_ID] = event.request_id
        span.set_attributes(attributes)
        timing = event.timing
        if timing.launched_ns:  # it ran in a batch: when it waited and when it ran
            parent = trace.set_span_in_context(span)
            tracer = self._tracing.tracer
            tracer.start_span(
                "queue", parent, start_time=epoch(timing.launched_ns - timing.queue_ns)
            ).end(epoch(timing.launched_ns))
            links = [Link(self._batch)] if self._batch is not None else None
            tracer.start_span(
                "inference",
                parent,
                attributes={BATCH_SIZE: timing.batch_rows},
                links=links,
                start_time=epoch(timing.launched_ns),
            ).end(epoch(timing.launched_ns + timing.compute_ns))
        if event.code != OK:
            span.set_attribute(ERROR_TYPE, event.code)
            span.set_status(Status(StatusCode.ERROR, event.error or event.code))
        span.end(epoch(event.ended_ns))


class OtelTracing:
    """The gateway's Tracing: request spans continued from the caller, linked batch spans."""

    def __init__(self, provider: TracerProvider) -> None:
        self.provider = provider
        self.tracer = provider.get_tracer(SCOPE)
        self._propagator = TraceContextTextMapPropagator()
        self._root_rate = _root_rate(provider.sampler)
        # perf_counter_ns -> epoch ns, anchored once so that every span of a request (measured
        # on perf_counter by the batcher) lies consistently inside its parent.
        self._offset_ns = time.time_ns() - time.perf_counter_ns()

    def epoch_ns(self, perf_counter_ns: int) -> int:
        return perf_counter_ns + self._offset_ns

    def begin(
        self, traceparent: str | None, tracestate: str | None, model: str, role: str
    ) -> RequestSpan | None:
        """Start the request's server span (never raises; None when not sampled)."""
        try:
            parent: Context | None = None
            attributes: dict[str, str | bool] = {MODEL: model, ROLE: role}
            if traceparent:
                carrier = {"traceparent": traceparent}
                if tracestate:
                    carrier["tracestate"] = tracestate
                parent = self._propagator.extract(carrier)
            elif self._root_rate is not None:
                # A request that starts a trace: the ratio sampler's decision, drawn here for a
                # fraction of a microsecond instead of the SDK's span-and-sampler path (~10 us)
                # for the requests it would drop. Trace ids are random: the same statistics.
                if self._root_rate < 1.0 and random.random() >= self._root_rate:
                    current_span_ids.set(None)
                    return None
                attributes[_PRESAMPLED] = True
            span = self.tracer.start_span(
                f"infer {model}",
                parent,
                kind=SpanKind.SERVER,
                attributes=attributes,
                start_time=self.epoch_ns(time.perf_counter_ns()),
            )
            if not span.is_recording():
                current_span_ids.set(None)
                return None
            ids = span.get_span_context()
            current_span_ids.set((ids.trace_id, ids.span_id))
            return RequestSpan(self, span)
        except Exception:  # telemetry must never fail a request
            logger.exception("tracing failed to start a span for %s", model)
            return None

    def batch_finished(self, event: BatchEvent) -> None:
        requests = [t for t in event.traces if isinstance(t, RequestSpan)]
        if not requests:
            return
        attributes: dict[str, str | int] = {
            MODEL: event.model,
            VERSION: event.version,
            BATCH_SIZE: event.rows,
            BATCH_REQUESTS: event.requests,
        }
        span = self.tracer.start_span(
            f"batch {event.model}",
            Context(),  # a root: its requests are linked, not parents
            attributes=attributes,
            links=[Link(request.span_context) for request in requests],
            start_time=self.epoch_ns(event.started_ns),
        )
        if event.error:
            span.set_status(Status(StatusCode.ERROR, event.error))
        span.end(self.epoch_ns(event.ended_ns))
        batch = span.get_span_context()
        for request in requests:  # their inference spans link back (they end after this)
            request._batch = batch

    def force_flush(self, timeout_ms: int = 30_000) -> bool:
        """Export every finished span now; True when all were exported in time."""
        return self.provider.force_flush(timeout_ms)

    def shutdown(self) -> None:
        """Export what is left and stop the exporters (at gateway stop)."""
        self.provider.shutdown()


def _root_rate(sampler: Sampler) -> float | None:
    """The share of new traces the configured sampler keeps, when it is a trace-id ratio (or
    always on / off), possibly parent-based; None for any other sampler (the SDK decides)."""
    inner = sampler._inner if isinstance(sampler, _SampledBatches) else sampler
    root = getattr(inner, "_root", inner) if isinstance(inner, ParentBased) else inner
    if isinstance(root, TraceIdRatioBased):
        return float(root.rate)
    if root is ALWAYS_ON:
        return 1.0
    if root is ALWAYS_OFF:
        return 0.0
    return None


def tracing_from_env(
    service_version: str, environ: Mapping[str, str] = os.environ
) -> OtelTracing | None:
    """Tracing as the OTEL_* variables configure it; None when they turn it off
    (OTEL_SDK_DISABLED=true, OTEL_TRACES_EXPORTER=none)."""
    if environ.get(OTEL_SDK_DISABLED, "").strip().lower() == "true":
        logger.info("tracing off: %s=true", OTEL_SDK_DISABLED)
        return None
    exporters = _exporters(environ)
    if not exporters:
        logger.info("tracing off: %s=none", OTEL_TRACES_EXPORTER)
        return None
    provider = TracerProvider(resource=_resource(service_version), shutdown_on_exit=False)
    # The sampler the SDK built from OTEL_TRACES_SAMPLER[_ARG], wrapped so that the batch span
    # of a sampled request is always kept. Set before the first get_tracer, which copies it.
    provider.sampler = _SampledBatches(provider.sampler)
    for exporter in exporters.values():
        provider.add_span_processor(BatchSpanProcessor(exporter))
    service = provider.resource.attributes.get(SERVICE_NAME)
    logger.info(
        "tracing on: service %s, sampler %s, exporter(s) %s",
        service,
        provider.sampler.get_description(),
        ", ".join(exporters),
    )
    return OtelTracing(provider)


def _resource(service_version: str) -> Resource:
    """The SDK's resource (OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES, SDK facts) over ours:
    service.name defaults to inference-gateway rather than the SDK's unknown_service."""
    detected = Resource.create()
    attributes = {
        key: value
        for key, value in detected.attributes.items()
        if not (key == SERVICE_NAME and str(value).startswith("unknown_service"))
    }
    ours = Resource({SERVICE_NAME: DEFAULT_SERVICE_NAME, SERVICE_VERSION: service_version})
    return ours.merge(Resource(attributes, detected.schema_url))


def _exporters(environ: Mapping[str, str]) -> dict[str, SpanExporter]:
    """OTEL_TRACES_EXPORTER (default otlp): otlp, console, none, or any exporter installed under
    the SDK's `opentelemetry_traces_exporter` entry points. Keyed by a description for the log."""
    names = [n.strip() for n in environ.get(OTEL_TRACES_EXPORTER, "otlp").split(",")]
    exporters: dict[str, SpanExporter] = {}
    for name in dict.fromkeys(n for n in names if n and n != "none"):
        if name == "otlp":
            protocol, exporter = _otlp_exporter(environ)
            endpoint = (
                environ.get(OTEL_EXPORTER_OTLP_TRACES_ENDPOINT)
                or environ.get(OTEL_EXPORTER_OTLP_ENDPOINT)
                or "the default endpoint"
            )
            exporters[f"otlp ({protocol}) to {endpoint}"] = exporter
        elif name == "console":
            exporters["console"] = ConsoleSpanExporter()
        else:
            found = entry_points(group="opentelemetry_traces_exporter", name=name)
            if not found:
                raise TracingConfigError(
                    f"{OTEL_TRACES_EXPORTER}: no span exporter named {name!r} is installed "
                    "(otlp, console and none are built in)"
                )
            exporters[name] = next(iter(found)).load()()
    return exporters


def _otlp_exporter(environ: Mapping[str, str]) -> tuple[str, SpanExporter]:
    """The OTLP exporter for OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL (default http/protobuf); it
    reads its endpoint, headers, timeout, compression and TLS settings itself."""
    protocol = (
        environ.get(OTEL_EXPORTER_OTLP_TRACES_PROTOCOL)
        or environ.get(OTEL_EXPORTER_OTLP_PROTOCOL)
        or "http/protobuf"
    ).strip()
    if protocol == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        return protocol, OTLPSpanExporter()
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
            OTLPSpanExporter as GrpcSpanExporter,
        )

        return protocol, GrpcSpanExporter()
    raise TracingConfigError(
        f"{OTEL_EXPORTER_OTLP_PROTOCOL}={protocol!r} is not supported: use http/protobuf or grpc"
    )

"""Metrics, tracing and structured logs (Prometheus, OpenTelemetry); nothing here yet."""

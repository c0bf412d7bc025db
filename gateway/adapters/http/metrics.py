"""GET /metrics: the gateway's Prometheus registry, in the text or OpenMetrics format."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder


def metrics_routes(registry: CollectorRegistry) -> list[web.RouteDef]:
    async def metrics(request: web.Request) -> web.Response:
        encode, content_type = choose_encoder(request.headers.get("Accept", ""))
        response = web.Response(body=encode(registry))
        response.headers["Content-Type"] = content_type
        return response

    return [web.get("/metrics", metrics)]


def metrics_app(registry: CollectorRegistry) -> web.Application:
    """A listener of its own for --metrics-port: /metrics only."""
    app = web.Application()
    app.add_routes(metrics_routes(registry))
    return app

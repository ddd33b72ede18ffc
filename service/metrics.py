"""Prometheus metrics: request counts and latencies per route, exposed at /metrics."""

from __future__ import annotations

import time

from fastapi import FastAPI, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest


def install_metrics(app: FastAPI) -> None:
    registry = CollectorRegistry()  # per app, so several apps in one process (tests) do not collide
    requests = Counter("chex_http_requests", "HTTP requests", ["method", "route", "status"], registry=registry)
    latency = Histogram("chex_http_request_seconds", "HTTP request latency", ["method", "route"], registry=registry)
    app.state.metrics_registry = registry

    @app.middleware("http")
    async def _observe(request: Request, call_next):
        start = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        name = getattr(route, "path", "unmatched")
        requests.labels(request.method, name, str(response.status_code)).inc()
        latency.labels(request.method, name).observe(time.perf_counter() - start)
        return response

    @app.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

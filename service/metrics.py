"""Prometheus metrics: request counts and latencies per route, and runs whose steps fail, exposed at /metrics."""

from __future__ import annotations

import time
from collections.abc import Iterator

from fastapi import FastAPI, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from .models import Run


class RunErrors(Collector):
    """Read at each scrape: one sample per run with a failing step (``chex_run_stopped`` 1 once it stopped)."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions

    def collect(self) -> Iterator[Metric]:
        stopped = GaugeMetricFamily(
            "chex_run_stopped",
            "1 when a failing step stopped the run (see its error)",
            labels=["run_id", "step", "code"],
        )
        failures = GaugeMetricFamily(
            "chex_run_step_failures", "times in a row the run's step failed", labels=["run_id", "step", "code"]
        )
        try:
            with self.sessions() as session:
                rows = session.execute(select(Run.id, Run.error).where(Run.error.is_not(None))).all()
        except SQLAlchemyError:
            rows = []  # the database is down: /readyz says so; the scrape still answers
        for run_id, error in rows:
            labels = [str(run_id), str(error.get("step")), str(error.get("code"))]
            stopped.add_metric(labels, 1.0 if error.get("stopped") else 0.0)
            failures.add_metric(labels, float(error.get("failures", 0)))
        yield stopped
        yield failures


def install_metrics(app: FastAPI, sessions: sessionmaker[Session]) -> None:
    registry = CollectorRegistry()  # per app, so several apps in one process (tests) do not collide
    requests = Counter("chex_http_requests", "HTTP requests", ["method", "route", "status"], registry=registry)
    latency = Histogram("chex_http_request_seconds", "HTTP request latency", ["method", "route"], registry=registry)
    registry.register(RunErrors(sessions))
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

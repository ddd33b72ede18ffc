"""App factory, health, metrics, auth and the migration on the real Postgres."""

from __future__ import annotations

from sqlalchemy import inspect


def test_migration_created_every_table(app) -> None:
    from service.models import Base

    tables = set(inspect(app.state.engine).get_table_names())
    assert set(Base.metadata.tables) <= tables
    assert "alembic_version" in tables


def test_health_ready_metrics_docs(client) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json()["database"] == "ok"
    body = client.get("/metrics").text
    assert "chex_http_requests_total" in body
    assert client.get("/docs").status_code == 200
    assert client.get("/openapi.json").json()["info"]["title"] == "chexcurate"

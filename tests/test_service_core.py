"""App factory, health, metrics, auth and the migration on the real Postgres."""

from __future__ import annotations

from httpx import Response
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


def test_readyz_checks_the_real_redis_broker_and_a_live_worker(pg_url) -> None:
    from fastapi.testclient import TestClient

    from service.api.app import create_app
    from service.config import Settings
    from tests.conftest import REDIS_URL
    from tests.servers import celery_worker

    def ready(broker: str) -> Response:
        app = create_app(Settings(database_url=pg_url, broker_url=broker))
        with TestClient(app) as client:
            response = client.get("/readyz")
        app.state.engine.dispose()
        return response

    down = ready("redis://127.0.0.1:1/0")
    assert down.status_code == 503 and down.json()["error"] == "unavailable" and down.headers["Retry-After"]
    assert "broker" in down.json()["detail"]
    lonely = ready(REDIS_URL)
    assert lonely.status_code == 503 and "no Celery worker" in lonely.json()["detail"], lonely.text
    with celery_worker({"CHEX_DATABASE_URL": pg_url, "CHEX_BROKER_URL": REDIS_URL}):
        up = ready(REDIS_URL)
    assert up.status_code == 200, up.text
    assert up.json() == {"database": "ok", "broker": "ok", "workers": "ok"}


def test_cli_db_upgrade_and_token_create(tmp_path, monkeypatch) -> None:
    from sqlalchemy import create_engine, text
    from typer.testing import CliRunner

    from service.auth import hash_token
    from service.cli import app
    from service.config import get_settings

    url = f"sqlite:///{tmp_path / 'cli.db'}"
    monkeypatch.setenv("CHEX_DATABASE_URL", url)
    get_settings.cache_clear()
    runner = CliRunner()
    try:
        assert runner.invoke(app, ["db", "upgrade"]).exit_code == 0
        created = runner.invoke(app, ["token", "create", "--role", "trainer", "--run", "3", "--name", "node-1"])
        assert created.exit_code == 0, created.output
        token = created.stdout.strip().splitlines()[-1]
        engine = create_engine(url)
        with engine.connect() as conn:
            row = conn.execute(
                text("SELECT role, run_ids, name FROM tokens WHERE token_hash = :h"), {"h": hash_token(token)}
            ).one()
        engine.dispose()
        assert row[0] == "trainer" and "3" in str(row[1]) and row[2] == "node-1"
        refused = runner.invoke(app, ["token", "create", "--role", "trainer"])
        assert refused.exit_code == 2 and "at least one run id" in refused.output
        refused = runner.invoke(app, ["token", "create", "--role", "root"])
        assert refused.exit_code == 2 and "role must be one of" in refused.output
    finally:
        get_settings.cache_clear()

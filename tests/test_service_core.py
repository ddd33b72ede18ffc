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


def test_readyz_checks_the_real_redis_broker(pg_url) -> None:
    from fastapi.testclient import TestClient

    from service.config import Settings
    from service.main import create_app
    from tests.conftest import REDIS_URL

    for broker, status in ((REDIS_URL, 200), ("redis://127.0.0.1:1/0", 503)):
        app = create_app(Settings(database_url=pg_url, broker_url=broker))
        with TestClient(app) as client:
            r = client.get("/readyz")
            assert r.status_code == status, r.text
            if status == 200:
                assert r.json()["broker"] == "ok"
            else:
                assert r.json()["error"] == "unavailable" and r.headers["Retry-After"]
        app.state.engine.dispose()


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

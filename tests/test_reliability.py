"""Service-wide reliability: no 5xx but a 503 with Retry-After when the database is down, recovery after
dropped connections, a schema-driven fuzz of every route, and the embedded SQLite default."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import schemathesis
from fastapi import FastAPI
from fastapi.testclient import TestClient

from service.api.app import create_app
from service.auth import create_token
from service.config import Settings
from service.migrate import upgrade

from .conftest import PG_ADMIN_URL
from .test_admin_stats import SeededRun, seed_curated_run

UNREACHABLE_PG = "postgresql+psycopg://postgres@127.0.0.1:1/none"
UNREACHABLE_SQLITE = "sqlite:////nonexistent-chexcurate-dir/sub/chex.db"
RETRY_AFTER = 7
#: examples per operation and generation mode; keeps the fuzz well under a minute
FUZZ_EXAMPLES = 12


def assert_unavailable(response) -> None:
    assert response.status_code == 503, (response.request.method, response.request.url, response.text)
    assert response.headers["retry-after"] == str(RETRY_AFTER)
    body = response.json()
    assert body["error"] in {"unavailable", "database_unavailable"} and body["detail"]


@pytest.fixture(scope="module", params=[UNREACHABLE_PG, UNREACHABLE_SQLITE], ids=["postgres", "sqlite"])
def down(request) -> Iterator[TestClient]:
    """The app on a database that cannot be reached (the lifespan must still start)."""
    app = create_app(Settings(database_url=request.param, retry_after_seconds=RETRY_AFTER))
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client
    app.state.engine.dispose()


def test_readyz_is_503_while_liveness_stays_up(down) -> None:
    assert down.get("/healthz").status_code == 200
    assert_unavailable(down.get("/readyz"))


def test_authenticated_requests_are_503_not_500(down) -> None:
    bearer = {"Authorization": "Bearer chx_whatever"}
    assert_unavailable(down.get("/v1/runs/1/stats", headers=bearer))
    assert_unavailable(down.get("/v1/runs/1/subset?format=csv", headers=bearer))
    assert_unavailable(down.get("/v1/runs/1/stats.png", headers=bearer))


def _concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "1", path)


def test_every_route_answers_503_or_4xx_never_500(down) -> None:
    """Whatever routes exist: each one either does not need the database or says 503 with Retry-After."""
    spec = down.get("/openapi.json").json()
    bearer = {"Authorization": "Bearer chx_whatever"}
    calls = 0
    for path, operations in spec["paths"].items():
        for method in operations:
            if method not in {"get", "post", "put", "patch", "delete"}:
                continue
            response = down.request(method.upper(), _concrete(path), headers=bearer, json={})
            calls += 1
            if response.status_code >= 500:
                assert_unavailable(response)
            else:
                assert response.status_code < 500
    assert calls >= 4


# --- a real database that loses its connections ---------------------------------------------------------


#: this module's own database (the fuzz writes at random; it must not disturb other tests). The app exists at
#: import time because schemathesis reads its OpenAPI then; the database is created before any request.
OWN_DB = f"chex_rel_{uuid.uuid4().hex[:12]}"
OWN_URL = PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + OWN_DB
OWN_APP = create_app(Settings(database_url=OWN_URL, retry_after_seconds=RETRY_AFTER, max_body_bytes=4 * 1024 * 1024))


@pytest.fixture(scope="module")
def own_app() -> Iterator[FastAPI]:
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{OWN_DB}"')
    upgrade(OWN_URL)
    yield OWN_APP
    OWN_APP.state.engine.dispose()
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{OWN_DB}" WITH (FORCE)')


@pytest.fixture(scope="module")
def own_seeded(own_app) -> SeededRun:
    with own_app.state.sessions() as session:
        return seed_curated_run(session)


@pytest.fixture(scope="module")
def own_admin(own_app) -> dict[str, str]:
    with own_app.state.sessions() as session:
        return {"Authorization": f"Bearer {create_token(session, 'fuzz', 'admin')}"}


def test_dropped_connections_are_replaced_without_errors(own_app, own_seeded, own_admin) -> None:
    """A Postgres restart kills every pooled connection; the next requests must not fail."""
    with TestClient(own_app, raise_server_exceptions=False) as client:
        for _ in range(3):  # fill the pool with a few connections
            assert client.get(f"/v1/runs/{own_seeded.run_id}/stats", headers=own_admin).status_code == 200
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            killed = conn.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = %s", (OWN_DB,)
            ).fetchone()
        assert killed and killed[0] >= 1
        for url in ("/readyz", f"/v1/runs/{own_seeded.run_id}/stats", f"/v1/runs/{own_seeded.run_id}/subset"):
            response = client.get(url, headers=own_admin)
            assert response.status_code == 200, response.text


@pytest.fixture(scope="module")
def probe(own_app) -> Iterator[TestClient]:
    """A bare app with the service's error handlers and two routes that provoke database failures."""
    from sqlalchemy import text

    from service.api.errors import install_error_handlers

    app = FastAPI()
    install_error_handlers(app, RETRY_AFTER)
    engine = own_app.state.engine

    @app.get("/killed")
    def killed() -> dict[str, int]:
        with engine.connect() as conn:
            conn.execute(text("SELECT pg_terminate_backend(pg_backend_pid())"))
            return {"value": conn.execute(text("SELECT 1")).scalar_one()}

    @app.get("/too-big")
    def too_big() -> dict[str, int]:
        with engine.connect() as conn:
            return {"value": conn.execute(text("SELECT CAST(:v AS bigint)"), {"v": 2**63}).scalar_one()}

    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


def test_a_connection_lost_mid_request_is_503(probe) -> None:
    assert_unavailable(probe.get("/killed"))


def test_a_value_the_database_refuses_is_422(probe) -> None:
    response = probe.get("/too-big")
    assert response.status_code == 422
    assert response.json()["error"] == "invalid_value" and "out of range" in response.json()["detail"]


# --- schema-driven fuzz of the whole API --------------------------------------------------------------------


# JSONL request bodies (sample uploads) are text: send the generated strings as they are
schemathesis.serializer.alias("application/x-ndjson", "text/plain")
schema = schemathesis.openapi.from_asgi(
    "/openapi.json",
    OWN_APP,
    config=schemathesis.Config.from_dict(
        {
            "seed": 20260101,
            "suppress-health-check": ["all"],
            "generation": {"mode": "all", "max-examples": FUZZ_EXAMPLES, "deterministic": True, "database": "none"},
        }
    ),
)


@schema.parametrize()
def test_fuzzed_requests_never_get_a_server_error(case, own_admin, own_seeded) -> None:
    """Every route that exists when this runs, positive and negative inputs, with an admin token: no 5xx."""
    case.headers = {**(case.headers or {}), **own_admin}
    response = case.call()
    assert response.status_code < 500, f"{case.method} {case.formatted_path} -> {response.status_code}: {response.text}"


# --- the embedded default ---------------------------------------------------------------------------------------


def test_sqlite_embedded_default_smoke(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'chex.db'}"
    upgrade(url)
    app = create_app(Settings(database_url=url))
    try:
        with app.state.sessions() as session:
            seeded = seed_curated_run(session)
            admin = {"Authorization": f"Bearer {create_token(session, 'smoke', 'admin')}"}
        with TestClient(app) as client:
            assert client.get("/healthz").json() == {"status": "ok"}
            assert client.get("/readyz").json()["database"] == "ok"
            stats = client.get(f"/v1/runs/{seeded.run_id}/stats", headers=admin).json()
            assert (stats["samples_total"], stats["samples_seen"], stats["subset_size"]) == (8, 7, 3)
            assert stats["band_counts"] == {"outlier": 1, "support": 2, "central_kept": 1, "central_dropped": 3}
            assert stats["label_enrichment"]["pneumothorax"]["ratio"] == pytest.approx((2 / 3) / (2 / 8))
            assert stats["prototype_drift"]["mean"] > 0
            png = client.get(f"/v1/runs/{seeded.run_id}/stats.png", headers=admin)
            assert png.status_code == 200 and png.content.startswith(b"\x89PNG")
            lines = client.get(f"/v1/runs/{seeded.run_id}/subset", headers=admin).text.splitlines()
            assert len(lines) == 4 and '"provenance"' in lines[0]
    finally:
        app.state.engine.dispose()

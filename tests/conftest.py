"""Shared fixtures: a fresh Postgres database per test session (real server, migrated with Alembic)."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import uuid
from collections.abc import Iterator

import psycopg
import pytest

PG_ADMIN_URL = os.environ.get("CHEX_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("CHEX_TEST_REDIS", "redis://127.0.0.1:6379/15")
SHARED_DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")
#: where the tests' datasets live (pytest's tmp_path, the shared data set): every Settings the tests build, and
#: every API or worker process they start, allows dataset roots there, as a deployment would its data mounts
TEST_ROOTS = [tempfile.gettempdir(), os.path.realpath(SHARED_DATA)]
os.environ.setdefault("CHEX_ALLOWED_ROOTS", json.dumps(TEST_ROOTS))


@contextlib.contextmanager
def scratch_database(migrate: bool = True) -> Iterator[str]:
    """A new database on the real Postgres (migrated unless told not to), dropped afterwards; yields its URL."""
    from service.migrate import upgrade

    name = f"chex_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    try:
        if migrate:
            upgrade(url)
        yield url
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A new, migrated database on the real Postgres, dropped at the end of the session."""
    with scratch_database() as url:
        yield url


@pytest.fixture(scope="session")
def app(pg_url):
    """The API on the session's Postgres database (in-process ASGI; the process-level tests start uvicorn)."""
    from service.api.app import create_app
    from service.config import Settings

    application = create_app(Settings(database_url=pg_url, max_body_bytes=64 * 1024 * 1024))
    yield application
    application.state.engine.dispose()


@pytest.fixture(scope="session")
def client(app):
    from fastapi.testclient import TestClient

    with TestClient(app) as test_client:
        yield test_client


@pytest.fixture(scope="session")
def make_token(app):
    """``make_token(role, run_ids=None) -> {"Authorization": "Bearer ..."}``."""
    from service.auth import create_token

    def make(role: str = "admin", run_ids: list[int] | None = None) -> dict[str, str]:
        with app.state.sessions() as session:
            return {"Authorization": f"Bearer {create_token(session, 'test', role, run_ids)}"}

    return make


@pytest.fixture(scope="session")
def admin(make_token) -> dict[str, str]:
    return make_token("admin")


@pytest.fixture
def db(app):
    """A session on the test database, for asserting on (or counting) rows directly."""
    with app.state.sessions() as session:
        yield session


@pytest.fixture
def stack_env(pg_url) -> dict[str, str]:
    """Environment for real API and worker processes on the session database and the real Redis."""
    return stack_environment(pg_url)


def stack_environment(database_url: str) -> dict[str, str]:
    """Environment for real API and worker processes on ``database_url`` and the test Redis db (emptied first)."""
    import redis

    redis.Redis.from_url(REDIS_URL).flushdb()
    return {
        "CHEX_DATABASE_URL": database_url,
        "CHEX_BROKER_URL": REDIS_URL,
        "CHEX_CURATION_WAIT_SECONDS": "4",
        "CHEX_INIT_REDRIVE_SECONDS": "3",
    }

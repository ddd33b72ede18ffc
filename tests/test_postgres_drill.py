"""Postgres itself dies: kill -9 of the postmaster of a cluster the test starts (never the shared server), once
while a curation step is half-written and once while a bulk embedding upload is half-copied, then a restart
(crash recovery). The run completes, the trainer only ever saw retries, and nothing the database acknowledged
is lost or doubled. Then two workers race on one run under load: versions stay gapless, steps stay in order.

A step in flight is caught deterministically: the test holds a row lock the step needs at its end (the
manifest's row, which the step updates last) or an uncommitted twin of the upload's last row, waits until the
server shows the writer blocked on it with a transaction that has already written, and kills then.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import psycopg
import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from service.auth import create_token
from service.db import make_engine, session_factory
from service.launcher import start_worker
from service.migrate import upgrade
from service.models import Embedding
from tests.conftest import stack_environment
from tests.runs_helpers import Trainer, assert_run_complete, encode, make_dataset, npz
from tests.servers import PrivatePostgres, private_postgres, uvicorn_server

CONFIG = {"k": 3, "warmup_samples": 48, "batch_size": 16, "epochs": 3, "curation_epochs": 1, "max_central": 2}
OCTET = {"Content-Type": "application/octet-stream"}


@pytest.fixture(scope="module")
def cluster() -> Iterator[PrivatePostgres]:
    with private_postgres() as server:
        yield server


@pytest.fixture(scope="module")
def drill_url(cluster: PrivatePostgres) -> str:
    url = cluster.database("chex_drill")
    upgrade(url)
    return url


@pytest.fixture
def sessions(drill_url: str) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(drill_url)
    yield session_factory(engine)
    engine.dispose()


@pytest.fixture
def drill_env(drill_url: str) -> dict[str, str]:
    return stack_environment(drill_url)


def blocked_writer(url: str, timeout: float = 60.0) -> str:
    """Wait until a backend with a transaction that has written something waits on a lock; its statement."""
    deadline = time.monotonic() + timeout
    with psycopg.connect(url, autocommit=True) as conn:
        while True:
            row = conn.execute(
                "SELECT query FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND backend_xid IS NOT NULL "
                "AND pid <> pg_backend_pid()"
            ).fetchone()
            if row is not None:
                return str(row[0])
            assert time.monotonic() < deadline, "no writer got blocked"
            time.sleep(0.02)


def crash_when_blocked(cluster: PrivatePostgres, url: str, caught: list[str], restarted: threading.Event) -> None:
    caught.append(blocked_writer(url))
    cluster.crash()
    time.sleep(1.0)  # down for a moment: requests meanwhile get 503 or a dropped connection
    cluster.start()
    restarted.set()


def stored_embeddings(session: Session, run_id: int) -> dict[int, np.ndarray]:
    rows = session.execute(select(Embedding.sample_id, Embedding.vector).where(Embedding.run_id == run_id))
    return {sid: np.frombuffer(vector, dtype=np.float16) for sid, vector in rows}


def new_run(http: httpx.Client, sessions: sessionmaker[Session], n: int) -> tuple[int, dict[str, str], list[int]]:
    """A run over a new dataset of ``n`` samples: its id, a trainer's headers, the sample ids."""
    with sessions() as session:
        dataset_id, sample_ids = make_dataset(session, n)
    created = http.post("/v1/runs", json={"dataset_id": dataset_id, "config": CONFIG})
    assert created.status_code == 201, created.text
    run_id = int(created.json()["id"])
    with sessions() as session:
        return run_id, {"Authorization": "Bearer " + create_token(session, "t", "trainer", [run_id])}, sample_ids


def admin_headers(sessions: sessionmaker[Session]) -> dict[str, str]:
    with sessions() as session:
        return {"Authorization": "Bearer " + create_token(session, "drill", "admin")}


def test_postmaster_killed_mid_curation_step(cluster, drill_url, drill_env, sessions) -> None:
    caught: list[str] = []
    restarted = threading.Event()
    killer = threading.Thread(target=crash_when_blocked, args=(cluster, drill_url, caught, restarted))
    blocker: list[psycopg.Connection[Any]] = []
    with uvicorn_server(drill_env) as url, worker(drill_env, "w1"):
        admin = httpx.Client(base_url=url, headers=admin_headers(sessions), timeout=60)
        run_id, headers, _ = new_run(admin, sessions, 96)
        trainer = Trainer(url, run_id, headers)

        def hold_the_manifest(m: dict[str, Any]) -> None:
            if m["phase"] != "curation" or blocker:
                return
            # the third curation step writes its embeddings and decisions, then waits on the manifest's row
            if sum(1 for epoch, _ in trainer.seen if epoch == 1) == 2:
                conn = psycopg.connect(drill_url)
                conn.execute("SELECT 1 FROM manifests WHERE id = %s FOR NO KEY UPDATE", (m["manifest_id"],))
                blocker.append(conn)
                killer.start()

        trainer.before_embeddings = hold_the_manifest
        trainer.run()
        killer.join(timeout=120)
    assert restarted.is_set() and caught, "the kill did not happen"
    assert caught[0].lstrip().startswith("UPDATE manifests"), caught  # the step had written all but its answer
    assert trainer.retries > 0 and trainer.dropped == 0  # the trainer saw retries, nothing else
    with sessions() as session:
        assert_run_complete(session, run_id, trainer, 96, CONFIG)
        stored = stored_embeddings(session, run_id)
    posted = sorted({sid for epoch, ids in trainer.seen if epoch <= 1 for sid in ids})
    assert sorted(stored) == posted  # one row per embedded sample: none lost, none doubled
    for sid, vector in stored.items():
        np.testing.assert_array_equal(vector, encode([sid])[0])


def test_postmaster_killed_mid_bulk_upload(cluster, drill_url, drill_env, sessions) -> None:
    n, dim = 3000, 32
    with uvicorn_server(drill_env) as url:
        admin = httpx.Client(base_url=url, headers=admin_headers(sessions), timeout=60)
        run_id, _, sample_ids = new_run(admin, sessions, n)
        ids = np.asarray(sorted(sample_ids), dtype=np.int64)
        emb = np.random.default_rng(3).standard_normal((n, dim)).astype(np.float32)
        body = npz(sample_id=ids, embedding=emb)
        # an uncommitted twin of the upload's last row: the COPY stores every row before it, then waits on it
        blocker = psycopg.connect(drill_url)
        blocker.execute(
            "INSERT INTO embeddings (run_id, sample_id, dim, vector, step) VALUES (%s, %s, %s, %s, 0)",
            (run_id, int(ids[-1]), dim, bytes(2 * dim)),
        )
        first: list[httpx.Response | Exception] = []

        def upload() -> None:
            try:
                first.append(admin.post(f"/v1/runs/{run_id}/embeddings", content=body, headers=OCTET))
            except httpx.TransportError as exc:
                first.append(exc)

        uploader = threading.Thread(target=upload)
        uploader.start()
        caught: list[str] = []
        restarted = threading.Event()
        crash_when_blocked(cluster, drill_url, caught, restarted)
        uploader.join(timeout=60)
        assert caught[0].lstrip().upper().startswith("COPY EMBEDDINGS"), caught
        answer = first[0]
        assert isinstance(answer, httpx.TransportError) or answer.status_code == 503, answer  # a retry, no more
        with sessions() as session:  # the half-copied transaction is gone with the crash
            assert session.scalar(select(func.count()).select_from(Embedding).where(Embedding.run_id == run_id)) == 0
        for _ in range(2):  # the retry, and a repeat of it: idempotent
            again = admin.post(f"/v1/runs/{run_id}/embeddings", content=body, headers=OCTET)
            assert again.status_code == 200 and again.json()["rows"] == n, again.text
    with sessions() as session:
        stored = stored_embeddings(session, run_id)
    assert sorted(stored) == ids.tolist()
    np.testing.assert_array_equal(np.stack([stored[int(s)] for s in ids]), emb.astype(np.float16))


class worker:
    """A Celery worker named ``name`` for the block; ``tasks_done`` counts the curated batches it answered."""

    def __init__(self, env: dict[str, str], name: str) -> None:
        self.env, self.name = env, name

    def __enter__(self) -> worker:
        self.child = start_worker(self.env, name=self.name)
        self.child.wait_ready(60)
        return self

    def __exit__(self, *_: object) -> None:
        self.child.stop(grace=15)

    def tasks_done(self) -> int:
        return sum("curate_manifest" in line and "succeeded" in line for line in self.child.lines)


def test_two_workers_race_on_one_run(stack_env, client, db, admin) -> None:
    """Six trainers and two workers on one run: every step is applied once, in order, whoever applies it."""
    dataset_id, _ = make_dataset(db, 240)
    config = {**CONFIG, "batch_size": 8}
    run_id = client.post("/v1/runs", json={"dataset_id": dataset_id, "config": config}, headers=admin).json()["id"]
    headers = {"Authorization": "Bearer " + create_token(db, "t", "trainer", [run_id])}
    with uvicorn_server(stack_env) as url, worker(stack_env, "w1") as one, worker(stack_env, "w2") as two:
        trainers = [Trainer(url, run_id, headers) for _ in range(6)]
        threads = [threading.Thread(target=t.run) for t in trainers]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
        done = one.tasks_done(), two.tasks_done()
    assert not any(t.is_alive() for t in threads)
    assert min(done) > 0, done  # both workers applied steps of the run
    assert_run_complete(db, run_id, trainers, 240, config)

"""A run that cannot progress says so, and an admin repairs it over the API.

A failing step (the warm-up k-means, a curated batch) is noted on the run: ``GET /v1/runs/{id}``, its stats and
``/metrics`` show it, leases (and embedding posts) answer 409 ``run_failed`` naming the reason, and
``POST /v1/runs/{id}/repair`` (exclude the bad rows, re-initialise the prototypes) lets the run go on to done.

Failures are made as an older release could have left them: a stored embedding that is not finite as float16
(stored before the range checks existed), a prototype version of NaNs. Each path is driven twice: embedded
(SQLite, steps in the API process) and with the real worker (uvicorn + a Celery worker on Redis + Postgres).
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select, update

import service.lifecycle
from service.auth import create_token
from service.config import Settings
from service.main import create_app
from service.migrate import upgrade
from service.models import Decision, Embedding, EpochItem, PrototypeVersion, Run
from tests.runs_helpers import encode, make_dataset, npy
from tests.servers import celery_worker, uvicorn_server

CONFIG = {"k": 2, "warmup_samples": 8, "batch_size": 4, "epochs": 2, "curation_epochs": 1, "max_central": 1}
OCTET = {"Content-Type": "application/octet-stream"}
N = 24


def poison_embedding(session, run_id: int, sample_id: int) -> None:
    """The sample's stored embedding becomes all-Inf, as a release before the float16 range check could store."""
    vector = np.full(32, np.inf, dtype=np.float16).tobytes()
    session.execute(
        update(Embedding).where(Embedding.run_id == run_id, Embedding.sample_id == sample_id).values(vector=vector)
    )
    session.commit()


def poison_prototypes(session, run_id: int) -> int:
    """A new current prototype version of NaNs (as a refresh over unchecked rows could have written)."""
    run = session.get(Run, run_id)
    version = run.prototype_version + 1
    session.add(
        PrototypeVersion(
            run_id=run_id,
            version=version,
            k=2,
            dim=32,
            vectors=np.full((2, 32), np.nan, np.float32).tobytes(),
            usage=[0, 0],
            step=run.step,
        )
    )
    run.prototype_version = version
    session.commit()
    return version


class Driver:
    """A trainer (and an admin) on the HTTP API: leases, posts, acknowledges, records what it was handed."""

    def __init__(self, http: Any, run_id: int, trainer: dict[str, str], admin: dict[str, str]) -> None:
        self.http, self.run_id, self.trainer, self.admin = http, run_id, trainer, admin
        self.seen: list[tuple[int, list[int]]] = []

    def lease(self, size: int | None = None) -> Any:
        params = {"size": size} if size else None
        return self.http.post(f"/v1/runs/{self.run_id}/manifests", params=params, headers=self.trainer)

    def post(self, manifest: dict[str, Any]) -> Any:
        ids = [i["sample_id"] for i in manifest["items"]]
        url = f"/v1/runs/{self.run_id}/manifests/{manifest['manifest_id']}"
        if manifest["phase"] == "subset":
            answer = self.http.post(url + "/ack", headers=self.trainer)
        else:
            answer = self.http.post(url + "/embeddings", content=npy(encode(ids)), headers={**self.trainer, **OCTET})
        if answer.status_code == 200:
            self.seen.append((manifest["epoch"], ids))
        return answer

    def step(self, size: int | None = None) -> tuple[Any, Any]:
        """One lease and, when it holds items, its post (retrying a 503 a few times, as the client does)."""
        lease = self.lease(size)
        if lease.status_code != 200 or not lease.json()["items"]:
            return lease, None
        for _ in range(20):
            answer = self.post(lease.json())
            if answer.status_code != 503:
                return lease, answer
            time.sleep(0.3)
        return lease, answer

    def until_stopped(self, timeout: float = 60) -> Any:
        """Lease until the run answers 409 (the worker's failure noted), with nothing to hand out meanwhile."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            lease = self.lease()
            if lease.status_code == 409:
                return lease
            assert lease.status_code == 200 and not lease.json()["items"], lease.text
            time.sleep(0.3)
        raise AssertionError("the run never stopped")

    def to_done(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            lease, answer = self.step()
            assert lease.status_code == 200, lease.text
            if lease.json()["phase"] == "done":
                return
            if answer is None:
                time.sleep(0.2)
                continue
            assert answer.status_code == 200, answer.text
        raise AssertionError("the run did not finish")

    def run(self) -> dict[str, Any]:
        return self.http.get(f"/v1/runs/{self.run_id}", headers=self.admin).json()

    def stats(self) -> dict[str, Any]:
        return self.http.get(f"/v1/runs/{self.run_id}/stats", headers=self.admin).json()

    def metrics(self) -> str:
        return self.http.get("/metrics").text

    def repair(self, **body: Any) -> Any:
        return self.http.post(f"/v1/runs/{self.run_id}/repair", json=body, headers=self.admin)


def stopped_metric(text: str, run_id: int) -> float | None:
    """The run's ``chex_run_stopped`` sample in a Prometheus text page (None: the run has none)."""
    for line in text.splitlines():
        if line.startswith("chex_run_stopped{") and f'run_id="{run_id}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return None


def warm_up_with_a_poisoned_row(driver: Driver, sessions) -> int:
    """Post the warm-up in two halves; between them one stored row of the first half goes bad. Returns its id."""
    lease, answer = driver.step(size=4)
    assert answer.status_code == 200, answer.text
    bad = driver.seen[-1][1][1]
    with sessions() as session:
        poison_embedding(session, driver.run_id, bad)
    lease, answer = driver.step(size=4)  # the warm-up's last post: k-means over all eight rows
    assert answer.status_code == 200 and answer.json()["stored"] == 4, answer.text  # the post itself stands
    return bad


def assert_stopped_naming(driver: Driver, lease: Any, code: str, step: str) -> dict[str, Any]:
    assert lease.status_code == 409 and lease.json()["error"] == "run_failed", lease.text
    assert code in lease.json()["detail"] and "repair" in lease.json()["detail"]
    error = driver.run()["error"]
    assert error["stopped"] and error["code"] == code and error["step"] == step, error
    assert driver.stats()["error"] == error
    assert stopped_metric(driver.metrics(), driver.run_id) == 1.0
    return error


def assert_completes_without(driver: Driver, sessions, excluded: int) -> None:
    run = driver.run()
    assert run["phase"] == "done" and run["error"] is None
    assert stopped_metric(driver.metrics(), driver.run_id) is None
    curated = Counter(i for epoch, ids in driver.seen if epoch == 1 for i in ids)
    assert excluded not in curated and max(curated.values()) == 1 and len(curated) == N - 1
    with sessions() as session:
        decisions = session.scalar(select(func.count()).select_from(Decision).where(Decision.run_id == run["id"]))
        assert decisions == N - 1  # every curated sample once, the excluded one never


@pytest.fixture
def embedded(tmp_path):
    """The embedded default: SQLite, no broker (every step runs in the API process)."""
    url = f"sqlite:///{tmp_path / 'embedded.db'}"
    upgrade(url)
    app = create_app(Settings(database_url=url))
    assert app.state.settings.embedded
    with TestClient(app) as client:
        yield client, app.state.sessions
    app.state.engine.dispose()


def new_run(http: Any, sessions, admin_token: str | None = None) -> Driver:
    with sessions() as session:
        dataset_id, _ = make_dataset(session, N)
        admin = {"Authorization": "Bearer " + (admin_token or create_token(session, "a", "admin"))}
    created = http.post("/v1/runs", json={"dataset_id": dataset_id, "config": CONFIG}, headers=admin)
    assert created.status_code == 201, created.text
    run_id = created.json()["id"]
    with sessions() as session:
        trainer = {"Authorization": "Bearer " + create_token(session, "t", "trainer", [run_id])}
    return Driver(http, run_id, trainer, admin)


def test_embedded_warmup_failure_stops_the_run_and_a_repair_excluding_the_row_lets_it_finish(embedded) -> None:
    client, sessions = embedded
    driver = new_run(client, sessions)
    bad = warm_up_with_a_poisoned_row(driver, sessions)
    lease = driver.lease()  # the very next lease says why
    error = assert_stopped_naming(driver, lease, "bad_stored_embeddings", "warmup_kmeans")
    assert error["sample_ids"] == [bad] and str(bad) in lease.json()["detail"]
    assert driver.run()["phase"] == "warmup" and driver.run()["prototype_version"] == 0

    repaired = driver.repair(exclude_samples=error["sample_ids"], reason="corrupt stored embedding")
    assert repaired.status_code == 200, repaired.text
    assert repaired.json()["error"] is None and repaired.json()["phase"] == "curation"  # k-means ran in the repair
    with sessions() as session:
        assert session.get(Embedding, (driver.run_id, bad)) is None
    driver.to_done()
    assert_completes_without(driver, sessions, bad)


def test_embedded_curation_failure_stops_the_run_and_reinit_repairs_it(embedded) -> None:
    client, sessions = embedded
    driver = new_run(client, sessions)
    for _ in range(2):
        assert driver.step()[1].status_code == 200
    lease, answer = driver.step()
    assert lease.json()["phase"] == "curation" and answer.status_code == 200
    with sessions() as session:
        broken = poison_prototypes(session, driver.run_id)
    lease = driver.lease()
    answer = driver.post(lease.json())
    assert_stopped_naming(driver, answer, "bad_prototypes", "curation_step")
    assert_stopped_naming(driver, driver.lease(), "bad_prototypes", "curation_step")

    repaired = driver.repair(reinit_prototypes=True)
    assert repaired.status_code == 200 and repaired.json()["error"] is None, repaired.text
    assert repaired.json()["prototype_version"] == broken + 1
    assert driver.post(lease.json()).status_code == 200  # the held lease is still good
    driver.to_done()
    with sessions() as session:
        run = session.get(Run, driver.run_id)
        assert run.phase == "done" and run.error is None


def test_a_passing_error_is_counted_and_stops_the_run_at_the_limit(client, admin, monkeypatch) -> None:
    """An error that is not the run's data (here: a k-means that raises) is noted and retried at each lease; at
    ``step_failure_limit`` failures in a row the run stops. The trainer's post that ended the warm-up stands."""
    driver = new_run(client, client.app.state.sessions, admin["Authorization"][7:])

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("the k-means library fell over")

    monkeypatch.setattr(service.lifecycle, "init_prototypes", broken)
    limit = client.app.state.settings.step_failure_limit
    lease, answer = driver.step(size=8)
    assert answer.status_code == 200
    for failures in range(1, limit):
        error = driver.run()["error"]
        assert (error["failures"], error["stopped"], error["code"]) == (failures, False, "step_error")
        assert "fell over" in error["detail"]
        lease = driver.lease()  # not stopped yet: nothing to hand out, and the k-means is tried again
        assert lease.status_code == 200 and lease.json()["items"] == []
    assert driver.run()["error"]["failures"] == limit and driver.run()["error"]["stopped"]
    assert_stopped_naming(driver, driver.lease(), "step_error", "warmup_kmeans")

    monkeypatch.undo()
    repaired = driver.repair()
    assert repaired.status_code == 200 and repaired.json()["phase"] == "curation" and repaired.json()["error"] is None


def test_a_bad_row_posted_in_warmup_is_refused_naming_it_and_the_run_goes_on(embedded) -> None:
    client, sessions = embedded
    driver = new_run(client, sessions)
    lease = driver.lease().json()
    ids = [i["sample_id"] for i in lease["items"]]
    for value, code in ((1e5, "non_finite"), (1e-9, "zero_rows")):
        arr = encode(ids).astype(np.float32)
        arr[2] = value
        url = f"/v1/runs/{driver.run_id}/manifests/{lease['manifest_id']}/embeddings"
        refused = client.post(url, content=npy(arr), headers={**driver.trainer, **OCTET})
        assert refused.status_code == 422 and refused.json()["error"] == code and refused.json()["rows"] == [2]
        assert "float16" in refused.json()["detail"]
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(Embedding)) == 0
    assert driver.post(lease).status_code == 200
    driver.to_done()
    assert driver.run()["error"] is None


def test_worker_failures_stop_the_run_and_repairs_let_it_finish(stack_env, client, db, admin) -> None:
    """The production topology: the warm-up k-means fails in the Celery worker (a stored row gone bad), the
    neighbour index refuses the same rows, the run is repaired by excluding the row; later a curated batch fails
    in the worker (unusable prototypes), and a repair re-initialising the prototypes lets the run finish."""
    sessions = client.app.state.sessions
    with uvicorn_server(stack_env) as url, celery_worker(stack_env), httpx.Client(base_url=url, timeout=60) as http:
        driver = new_run(http, sessions, admin["Authorization"][7:])
        bad = warm_up_with_a_poisoned_row(driver, sessions)
        error = assert_stopped_naming(driver, driver.until_stopped(), "bad_stored_embeddings", "warmup_kmeans")
        assert error["sample_ids"] == [bad]

        # the neighbour index over the same rows fails once, and then says so instead of 202 for ever
        neighbours = f"/v1/runs/{driver.run_id}/samples/{driver.seen[0][1][0]}/neighbours"
        deadline, answer = time.monotonic() + 60, http.get(neighbours, headers=admin)
        while answer.status_code == 202 and time.monotonic() < deadline:
            time.sleep(0.3)
            answer = http.get(neighbours, headers=admin)
        assert answer.status_code == 409 and answer.json()["error"] == "index_failed", answer.text
        assert "zero_rows" in answer.json()["detail"] and str(bad) in answer.json()["detail"]

        repaired = driver.repair(exclude_samples=[bad])
        assert repaired.status_code == 200 and repaired.json()["error"] is None, repaired.text
        lease, answer = driver.step()
        deadline = time.monotonic() + 60
        while lease.json()["phase"] == "warmup" and time.monotonic() < deadline:  # the worker's k-means, re-asked
            time.sleep(0.3)
            lease, answer = driver.step()
        assert lease.json()["phase"] == "curation" and answer.status_code == 200, answer.text

        with sessions() as session:
            poison_prototypes(session, driver.run_id)
        lease, answer = driver.step()
        assert_stopped_naming(driver, answer, "bad_prototypes", "curation_step")
        assert_stopped_naming(driver, driver.lease(), "bad_prototypes", "curation_step")
        repaired = driver.repair(reinit_prototypes=True)
        assert repaired.status_code == 200 and repaired.json()["error"] is None, repaired.text
        assert driver.post(lease.json()).status_code == 200
        driver.to_done()
        assert_completes_without(driver, sessions, bad)
        db.expire_all()
        assert (
            db.scalar(
                select(func.count())
                .select_from(EpochItem)
                .where(EpochItem.run_id == driver.run_id, EpochItem.state != "done")
            )
            == 0
        )

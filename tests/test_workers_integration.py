"""The production topology with real processes: uvicorn + a Celery worker on the real Redis + Postgres.

A trainer loop drives runs through warm-up (k-means in the worker), curation (curated batches computed by
the worker) and the subset phase; workers are killed with SIGKILL mid-run and Redis is restarted, and the
run still completes with every sample acknowledged once per epoch and prototype versions moving forward.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable

import httpx
from sqlalchemy import func, select

from service.auth import create_token
from service.models import Decision, PrototypeVersion, Run
from tests.runs_helpers import encode, make_dataset, npy
from tests.servers import PrivateRedis, celery_worker, uvicorn_server

CONFIG = {"k": 3, "warmup_samples": 48, "batch_size": 16, "epochs": 3, "curation_epochs": 1, "max_central": 2}


class Trainer:
    """A minimal trainer: retries 503s, drops a batch on 409 lease_expired, records what it was handed."""

    def __init__(self, url: str, run_id: int, headers: dict[str, str]) -> None:
        self.http = httpx.Client(base_url=url, headers=headers, timeout=60)
        self.run_id = run_id
        self.seen: list[tuple[int, list[int]]] = []
        self.retries = 0
        #: called with the count of curation steps done so far, between requests (a test's kill switch)
        self.after_curation_step: Callable[[int], None] | None = None

    def post(self, path: str, **kwargs) -> httpx.Response:
        for _ in range(200):
            try:
                r = self.http.post(path, **kwargs)
            except httpx.TransportError:
                r = None
            if r is not None and r.status_code != 503:
                return r
            self.retries += 1
            time.sleep(0.5)
        raise AssertionError(f"{path}: still unavailable")

    def run(self, stop_after_curation_steps: int | None = None) -> None:
        steps = 0
        while True:
            m = self.post(f"/v1/runs/{self.run_id}/manifests").json()
            if m["phase"] == "done":
                return
            if m["manifest_id"] is None:
                time.sleep(min(m["wait_seconds"] or 0.2, 0.5))
                continue
            ids = [i["sample_id"] for i in m["items"]]
            base = f"/v1/runs/{self.run_id}/manifests/{m['manifest_id']}"
            if m["phase"] == "subset":
                r = self.post(base + "/ack")
            else:
                r = self.post(
                    base + "/embeddings", content=npy(encode(ids)), headers={"Content-Type": "application/octet-stream"}
                )
            if r.status_code == 409 and r.json()["error"] == "lease_expired":
                continue
            assert r.status_code == 200, r.text
            self.seen.append((m["epoch"], ids))
            if m["phase"] == "curation":
                steps += 1
                if self.after_curation_step is not None:
                    self.after_curation_step(steps)
                if stop_after_curation_steps is not None and steps >= stop_after_curation_steps:
                    return


def assert_run_complete(db, run_id: int, trainer: Trainer, n_samples: int) -> None:
    db.expire_all()
    run = db.get(Run, run_id)
    assert run.phase == "done"
    per_epoch: dict[int, Counter] = {}
    for epoch, ids in trainer.seen:
        per_epoch.setdefault(epoch, Counter()).update(ids)
    assert sum(per_epoch[0].values()) == CONFIG["warmup_samples"] and max(per_epoch[0].values()) == 1
    assert sum(per_epoch[1].values()) == n_samples and max(per_epoch[1].values()) == 1
    decisions = db.scalar(select(func.count()).select_from(Decision).where(Decision.run_id == run_id))
    assert decisions == n_samples  # no curation step applied twice
    versions = sorted(db.scalars(select(PrototypeVersion.version).where(PrototypeVersion.run_id == run_id)))
    assert versions == list(range(1, run.step + 2))  # one version per applied step, strictly increasing
    kept = set(db.scalars(select(Decision.sample_id).where(Decision.run_id == run_id, Decision.kept)))
    for epoch in (2, 3):
        assert set(per_epoch[epoch]) == kept and max(per_epoch[epoch].values()) == 1


def new_run(client, db, admin, n: int) -> tuple[int, dict[str, str]]:
    dataset_id, _ = make_dataset(db, n)
    run_id = client.post("/v1/runs", json={"dataset_id": dataset_id, "config": CONFIG}, headers=admin).json()["id"]
    return run_id, {"Authorization": "Bearer " + create_token(db, "t", "trainer", [run_id])}


def test_run_completes_through_worker(stack_env, client, db, admin) -> None:
    run_id, headers = new_run(client, db, admin, 96)
    with uvicorn_server(stack_env) as url, celery_worker(stack_env):
        trainer = Trainer(url, run_id, headers)
        trainer.run()
    assert_run_complete(db, run_id, trainer, 96)
    db.expire_all()
    assert "init_requested_at" in db.get(Run, run_id).progress  # k-means was handed to the worker


def wait_for(predicate, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.2)


def test_workers_killed_around_kmeans_and_mid_curation(stack_env, client, db, admin) -> None:
    run_id, headers = new_run(client, db, admin, 96)

    def state() -> Run:
        db.expire_all()
        return db.get(Run, run_id)

    with uvicorn_server(stack_env) as url:
        trainer = Trainer(url, run_id, headers)
        runner = threading.Thread(target=trainer.run)
        runner.start()
        # warm-up needs no worker; its end queues the k-means, which nobody takes yet
        wait_for(lambda: "init_requested_at" in state().progress)
        with celery_worker(stack_env) as worker:
            os.kill(worker.pid, signal.SIGKILL)  # as it picks up the k-means task
            worker.wait()
        killed = threading.Event()
        with celery_worker(stack_env) as worker:

            def kill_while_batches_flow(steps: int) -> None:
                # from the trainer's thread, so the kill lands in curation however fast the steps run
                if steps >= 2 and not killed.is_set():
                    os.kill(worker.pid, signal.SIGKILL)
                    killed.set()

            trainer.after_curation_step = kill_while_batches_flow
            wait_for(killed.is_set)
            worker.wait()
        time.sleep(5)  # trainers now get 503 + Retry-After and keep retrying
        with celery_worker(stack_env):
            runner.join(timeout=240)
    assert not runner.is_alive()
    assert trainer.retries > 0
    assert_run_complete(db, run_id, trainer, 96)


def test_redis_restart_is_re_driven_from_postgres(stack_env, client, db, admin, tmp_path) -> None:
    broker = PrivateRedis(tmp_path)
    broker.start()
    env = {**stack_env, "CHEX_BROKER_URL": broker.url}
    run_id, headers = new_run(client, db, admin, 96)
    try:
        with uvicorn_server(env) as url, celery_worker(env):
            trainer = Trainer(url, run_id, headers)
            trainer.run(stop_after_curation_steps=2)
            broker.kill()  # everything queued or cached in Redis is gone
            time.sleep(1)
            broker.start()
            trainer.run()
    finally:
        broker.kill()
    assert_run_complete(db, run_id, trainer, 96)

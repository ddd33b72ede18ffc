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

from service.auth import create_token
from service.models import Run
from tests.runs_helpers import Trainer, assert_run_complete, make_dataset
from tests.servers import PrivateRedis, celery_worker, uvicorn_server

CONFIG = {"k": 3, "warmup_samples": 48, "batch_size": 16, "epochs": 3, "curation_epochs": 1, "max_central": 2}


def new_run(client, db, admin, n: int) -> tuple[int, dict[str, str]]:
    dataset_id, _ = make_dataset(db, n)
    run_id = client.post("/v1/runs", json={"dataset_id": dataset_id, "config": CONFIG}, headers=admin).json()["id"]
    return run_id, {"Authorization": "Bearer " + create_token(db, "t", "trainer", [run_id])}


def test_run_completes_through_worker(stack_env, client, db, admin) -> None:
    run_id, headers = new_run(client, db, admin, 96)
    with uvicorn_server(stack_env) as url, celery_worker(stack_env):
        trainer = Trainer(url, run_id, headers)
        trainer.run()
    assert_run_complete(db, run_id, trainer, 96, CONFIG)
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
    assert_run_complete(db, run_id, trainer, 96, CONFIG)


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
    assert_run_complete(db, run_id, trainer, 96, CONFIG)

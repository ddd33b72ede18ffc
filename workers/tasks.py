"""Celery tasks. Each is idempotent: it re-reads the Postgres state under the run lock before acting,
so a redelivered or repeated task changes nothing that is already done."""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path
from typing import Any

from celery import Task
from celery.signals import worker_init, worker_process_init

from service.arrays import read_npy
from service.config import get_settings
from service.errors import ApiError, ServiceUnavailable
from service.ingest import run_dicom_scan
from service.lifecycle import advance_if_epoch_done, init_or_record, lock_run
from service.models import Dataset
from service.schemas.datasets import DicomScanRequest
from service.steps import apply_embeddings, manifest_phase

from .celery_app import TASK_CURATE, TASK_DICOM_SCAN, TASK_INIT_PROTOTYPES, TASK_NEIGHBOUR_INDEX, TASK_OFFLINE, app
from .state import warm_up, worker_state


@worker_init.connect
def _warm_main_process(**_: Any) -> None:
    warm_up(cuda=False)  # a prefork parent must not touch CUDA before forking its children


@worker_process_init.connect
def _warm_child_process(**_: Any) -> None:
    warm_up(cuda=True)


@app.task(name=TASK_CURATE)
def curate_manifest(run_id: int, manifest_id: str, body_key: str) -> dict[str, Any]:
    """Apply a curation manifest's embeddings (handed over in Redis); returns the curated batch or an error."""
    state = worker_state()
    body = state.redis.get(body_key)  # bytes: the client is built without decode_responses
    with state.sessions() as session:
        try:
            if body is None:  # hand-over gone: fine if the manifest was applied meanwhile (a duplicate task)
                _, stored = manifest_phase(session, run_id, manifest_id)
                if stored is not None:
                    return stored
                raise ApiError(409, "embeddings_expired", "the posted embeddings expired before a worker took them")
            limit = get_settings().step_failure_limit
            result = apply_embeddings(
                session,
                run_id,
                manifest_id,
                read_npy(body if isinstance(body, bytes) else body.encode()),
                partial(init_or_record, limit=limit),
                limit,
                cache=state.prototypes,
                backend=state.backend,
            )
        except ApiError as exc:
            session.rollback()
            return {"error": exc.code, "status": exc.status, "detail": exc.detail, **exc.extra}
        except ServiceUnavailable as exc:  # the step failed and was noted on the run; the trainer posts again
            session.rollback()
            return {"error": "unavailable", "status": 503, "detail": exc.detail}
    state.redis.delete(body_key)
    return result


@app.task(name=TASK_INIT_PROTOTYPES)
def init_prototypes(run_id: int) -> dict[str, Any]:
    """k-means after warm-up, then open the first curation epoch. A no-op if another task already did it, or the
    run is stopped; a failure is noted on the run (and asked again at the next lease until the run stops)."""
    state = worker_state()
    with state.sessions() as session:
        run = lock_run(session, run_id)
        if run.phase == "warmup" and run.prototype_version == 0:
            advance_if_epoch_done(session, run, partial(init_or_record, limit=get_settings().step_failure_limit))
        session.commit()
        answer = {"run_id": run.id, "phase": run.phase, "prototype_version": run.prototype_version}
        return answer | ({"error": run.error} if run.error else {})


@app.task(name=TASK_DICOM_SCAN, bind=True)
def dicom_scan(self: Task, dataset_id: int, request: dict[str, Any]) -> dict[str, Any]:
    """Scan a dataset's DICOM folder with progress (files read / files listed) in the task state."""
    state = worker_state()

    def progress(done: int, total: int) -> None:
        if done == total or done % 50 == 0:
            self.update_state(state="PROGRESS", meta={"stage": "dicom scan", "current": done, "total": total})

    with state.sessions() as session:
        dataset = session.get(Dataset, dataset_id)
        if dataset is None:
            return {"error": "unknown_dataset", "status": 404, "detail": f"dataset {dataset_id} does not exist"}
        settings = get_settings()
        try:
            result = run_dicom_scan(
                session,
                dataset_id,
                Path(dataset.root),
                DicomScanRequest(**request),
                progress,
                settings.path_limits(),
                settings.text_limits(),
            )
        except ApiError as exc:
            session.rollback()
            return {"error": exc.code, "status": exc.status, "detail": exc.detail, **exc.extra}
    return result.model_dump()


@app.task(name=TASK_OFFLINE, bind=True)
def offline_curation(self: Task, run_id: int) -> dict[str, Any]:
    """Offline curation of a run's stored embeddings; progress goes to the run row (shown in its stats)."""
    from workers.jobs.offline import run_offline_curation

    state = worker_state()

    last = [0.0]

    def progress(stage: str, done: int, total: int) -> None:
        now = time.monotonic()
        if now - last[0] >= 1.0 or done == total:  # ~2,000 reports at 1.2 M rows; a poller needs ~1/s
            last[0] = now
            self.update_state(state="PROGRESS", meta={"stage": stage, "current": done, "total": total})

    try:
        return run_offline_curation(state.sessions, run_id, progress)
    except ApiError as exc:
        return {"error": exc.code, "status": exc.status, "detail": exc.detail, **exc.extra}


@app.task(name=TASK_NEIGHBOUR_INDEX)
def neighbour_index(run_id: int) -> dict[str, Any]:
    """Build (or find) the run's FAISS neighbour index and leave it in the shared index directory; the stored
    rows' refusal (e.g. unusable embeddings) comes back as an error answer, not a task failure."""
    state = worker_state()
    try:
        index = state.neighbour_indexes.get(state.sessions, run_id)
    except ApiError as exc:
        return {"error": exc.code, "status": exc.status, "detail": exc.detail, **exc.extra}
    return {
        "run_id": run_id,
        "kind": index.kind,
        "rows": index.key.rows,
        "dim": index.dim,
        "max_step": index.key.max_step,
    }

"""Celery tasks: one thin shell per job, registered under the names the dispatcher sends (``service.dispatch``).

Each is idempotent: the job re-reads the database state under the run lock before acting, so a redelivered or
repeated task changes nothing that is already done. A job's ``ApiError`` goes back as the result's error envelope
(``service.errors.to_envelope``), which the API raises again; anything else fails the task.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from functools import partial, wraps
from typing import Any, TypeVar

from celery import Task
from celery.signals import worker_init, worker_process_init

from service.config import get_settings
from service.dispatch import (
    TASK_CURATE,
    TASK_DICOM_SCAN,
    TASK_EMBEDDING_MAP,
    TASK_IMPORT,
    TASK_INIT_PROTOTYPES,
    TASK_NEIGHBOUR_INDEX,
    TASK_OFFLINE,
)
from service.errors import ApiError, is_envelope, to_envelope
from service.explorer.embedding_map import make_map
from service.handover import Handover, drop, send_reply, take
from service.jobs.dataset_import import import_dataset
from service.jobs.dicom_scan import scan_dataset
from service.jobs.offline import run_offline_curation
from service.jobs.warmup import initialise_prototypes
from service.runs.posts import apply_embeddings, manifest_phase
from service.runs.schedule import init_or_record
from service.stages import collecting, stage

from .celery_app import app
from .state import WorkerState, warm_up, worker_state

F = TypeVar("F", bound=Callable[..., dict[str, Any]])


@worker_init.connect
def _warm_main_process(**_: Any) -> None:
    warm_up(cuda=False)  # a prefork parent must not touch CUDA before forking its children


@worker_process_init.connect
def _warm_child_process(**_: Any) -> None:
    warm_up(cuda=True)


def answers_errors(task: F) -> F:
    """The job's ApiError as the task's result envelope instead of a task failure."""

    @wraps(task)
    def run(*args: Any, **kwargs: Any) -> dict[str, Any]:
        try:
            return task(*args, **kwargs)
        except ApiError as exc:
            return to_envelope(exc)

    return run  # type: ignore[return-value]


@app.task(name=TASK_CURATE, ignore_result=True)
def curate_manifest(run_id: int, manifest_id: str, handed_over: dict[str, Any]) -> None:
    """Apply a curation manifest's embeddings (handed over in Redis); the curated batch, an error envelope, or
    word that the step could not finish goes back on the hand-over's reply list with the step's stage timings.
    An unexpected failure still fails the task, after the API was told."""
    state, handover = worker_state(), Handover.from_arg(handed_over)
    ttl = get_settings().handover_ttl_seconds
    with collecting() as stages:
        try:
            reply: dict[str, Any] = {"answer": _curate(state, run_id, manifest_id, handover)}
        except ApiError as exc:
            reply = {"answer": to_envelope(exc)}
        except Exception as exc:
            with contextlib.suppress(Exception):  # Redis may be what failed: the API then times out (503)
                send_reply(state.redis, handover, {"unavailable": type(exc).__name__, "stages": stages}, ttl)
            raise
    send_reply(state.redis, handover, {**reply, "stages": stages}, ttl)
    if not is_envelope(reply["answer"]):
        drop(state.redis, handover)  # after the answer: the API is not kept waiting for it


def _curate(state: WorkerState, run_id: int, manifest_id: str, handover: Handover) -> dict[str, Any]:
    with stage("take"):
        arr = take(state.redis, handover)
    with state.sessions() as session:
        try:
            if arr is None:  # hand-over gone: fine if the manifest was applied meanwhile (a duplicate task)
                _, stored = manifest_phase(session, run_id, manifest_id)
                if stored is not None:
                    return stored
                raise ApiError(409, "embeddings_expired", "the posted embeddings expired before a worker took them")
            limit = get_settings().step_failure_limit
            result = apply_embeddings(
                session,
                run_id,
                manifest_id,
                arr,
                partial(init_or_record, limit=limit),
                limit,
                cache=state.prototypes,
                backend=state.backend,
            )
        except ApiError:
            session.rollback()
            raise
    return result


@app.task(name=TASK_INIT_PROTOTYPES)
def init_prototypes(run_id: int) -> dict[str, Any]:
    """k-means after warm-up, then the first curation epoch (``service.jobs.warmup``)."""
    return initialise_prototypes(worker_state().sessions, run_id, get_settings().step_failure_limit)


@app.task(name=TASK_DICOM_SCAN, bind=True)
@answers_errors
def dicom_scan(self: Task, dataset_id: int, request: dict[str, Any]) -> dict[str, Any]:
    """Scan a dataset's DICOM folder with progress (files read / files listed) in the task state."""

    def progress(done: int, total: int) -> None:
        if done == total or done % 50 == 0:
            self.update_state(state="PROGRESS", meta={"stage": "dicom scan", "current": done, "total": total})

    return scan_dataset(worker_state().sessions, dataset_id, request, get_settings(), progress)


@app.task(name=TASK_IMPORT, bind=True)
@answers_errors
def dataset_import(self: Task, dataset_id: int, request: dict[str, Any]) -> dict[str, Any]:
    """Import a public set from its published layout, with progress (the main table's bytes, or report files) in
    the task state."""
    last = [0.0]

    def progress(done: int, total: int) -> None:
        now = time.monotonic()
        if now - last[0] >= 1.0 or done == total:
            last[0] = now
            self.update_state(state="PROGRESS", meta={"stage": "import", "current": done, "total": total})

    return import_dataset(worker_state().sessions, dataset_id, request, get_settings(), progress)


@app.task(name=TASK_OFFLINE, bind=True)
@answers_errors
def offline_curation(self: Task, run_id: int) -> dict[str, Any]:
    """Offline curation of a run's stored embeddings; progress goes to the run row (shown in its stats)."""
    last = [0.0]

    def progress(stage: str, done: int, total: int) -> None:
        now = time.monotonic()
        if now - last[0] >= 1.0 or done == total:  # ~2,000 reports at 1.2 M rows; a poller needs ~1/s
            last[0] = now
            self.update_state(state="PROGRESS", meta={"stage": stage, "current": done, "total": total})

    return run_offline_curation(worker_state().sessions, run_id, progress)


@app.task(name=TASK_NEIGHBOUR_INDEX)
@answers_errors
def neighbour_index(run_id: int) -> dict[str, Any]:
    """Build (or find) the run's FAISS neighbour index and leave it in the shared index directory; the stored
    rows' refusal (e.g. unusable embeddings) comes back as an error answer, not a task failure."""
    state = worker_state()
    index = state.neighbour_indexes.get(state.sessions, run_id)
    return {
        "run_id": run_id,
        "kind": index.kind,
        "rows": index.key.rows,
        "dim": index.dim,
        "max_step": index.key.max_step,
    }


@app.task(name=TASK_EMBEDDING_MAP, bind=True)
@answers_errors
def embedding_map(self: Task, run_id: int) -> dict[str, Any]:
    """Make the run's embedding map (PCA, explorer) into the shared cache; the answer says how many points."""

    def progress(stage: str) -> None:
        self.update_state(state="PROGRESS", meta={"stage": stage})

    answer = make_map(worker_state().sessions, run_id, get_settings().explorer_cache_dir, progress)
    return {"run_id": run_id, "rows": answer["rows"], "shown": answer["shown"]}

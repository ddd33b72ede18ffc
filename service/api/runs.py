"""Runs: create (admin), read (admin or a trainer scoped to the run)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response, status
from fastapi.concurrency import run_in_threadpool
from sqlalchemy import select
from sqlalchemy.orm import Session

from ..errors import ApiError
from ..jobs.dedup_sweep import sweep_run
from ..models import Run, RunExclusion
from ..runs.access import epoch_progress, load_run, lock_run
from ..runs.create import new_run
from ..runs.exclusions import check_in_dataset, exclude_from_run
from ..runs.failures import clear_failure
from ..runs.schedule import advance_if_epoch_done, reinit_prototypes
from ..schemas.runs import DedupSweepRequest, ExclusionEntry, RepairRequest, RunCreate, RunOut
from ..schemas.tasks import TaskAccepted
from .deps import AdminDep, DispatcherDep, RunAccessDep, RunId, SessionDep

router = APIRouter(prefix="/v1/runs", tags=["runs"])


@router.post("", status_code=status.HTTP_201_CREATED, response_model=RunOut)
def create_run(body: RunCreate, session: SessionDep, _: AdminDep) -> Run:
    """Create a run over a dataset's accepted samples; its warm-up epoch is ready to hand out at once. With
    ``embedding_set_id`` offline curation reads that named set of the dataset (no upload per run)."""
    run = new_run(session, body)
    session.commit()
    return run


@router.get("", response_model=list[RunOut])
def list_runs(session: SessionDep, _: AdminDep) -> list[Run]:
    return list(session.scalars(select(Run).order_by(Run.id)))


def _run_out(session: Session, run: Run) -> RunOut:
    size, done = epoch_progress(session, run)
    return RunOut.model_validate(run).model_copy(update={"epoch_size": size, "epoch_done": done})


@router.get("/{run_id}", response_model=RunOut)
def get_run(run_id: RunId, session: SessionDep, _: RunAccessDep) -> RunOut:
    """The run, with the size of its current epoch and how much of it is done (what a trainer's progress bar
    and learning-rate horizon need), and its ``error`` when a step of it fails."""
    return _run_out(session, load_run(session, run_id))


@router.get("/{run_id}/exclusions", response_model=list[ExclusionEntry])
def run_exclusions(run_id: RunId, session: SessionDep, _: AdminDep) -> list[ExclusionEntry]:
    """The samples left out of this run only: reported unreadable by its trainers, or excluded by a repair (an
    admin may make any of them dataset-wide with ``POST /v1/datasets/{id}/exclusions``)."""
    load_run(session, run_id)
    rows = session.scalars(select(RunExclusion).where(RunExclusion.run_id == run_id).order_by(RunExclusion.sample_id))
    return [ExclusionEntry.model_validate(row) for row in rows]


@router.post("/{run_id}/repair", response_model=RunOut)
def repair_run(
    run_id: RunId, body: RepairRequest, session: SessionDep, dispatcher: DispatcherDep, _: AdminDep
) -> RunOut:
    """Repair a run whose step failed (``error`` in the run): leave ``exclude_samples`` out of it (their stored
    embeddings in it deleted), optionally re-initialise its prototypes from its stored embeddings, clear the
    error and let the step run again (the warm-up k-means at once: in this request without workers, queued with
    them). The answer is the run as it then is; if the step failed again, ``error`` says so."""
    run = lock_run(session, run_id)
    if body.exclude_samples:
        check_in_dataset(session, run.dataset_id, body.exclude_samples)
        exclude_from_run(session, run, body.exclude_samples, body.reason, source="admin")
    if body.reinit_prototypes:
        if run.prototype_version == 0:
            raise ApiError(
                409, "no_prototypes", f"run {run_id} has no prototypes yet: the warm-up k-means is retried instead"
            )
        reinit_prototypes(session, run)
    clear_failure(run)
    run.progress = {k: v for k, v in run.progress.items() if k != "init_requested_at"}
    advance_if_epoch_done(session, run, dispatcher.init_prototypes)
    session.commit()
    return _run_out(session, run)


@router.post("/{run_id}/dedup-sweep", response_model=dict[str, Any])
async def dedup_sweep(run_id: RunId, body: DedupSweepRequest, request: Request, _: AdminDep) -> dict[str, Any]:
    """Per eps: the near-duplicate pairs and rows that `dedup_epsilon` would remove from the run's stored
    embeddings (offline's prototypes and rows), with the least similar pairs that count. Writes nothing."""
    return await run_in_threadpool(
        sweep_run, request.app.state.sessions, run_id, body.epsilons, body.same_patient, body.examples
    )


@router.post(
    "/{run_id}/offline",
    response_model=dict[str, Any] | TaskAccepted,
    responses={202: {"model": TaskAccepted, "description": "queued on a worker"}},
)
async def offline_curation(
    run_id: RunId, response: Response, dispatcher: DispatcherDep, _: AdminDep
) -> dict[str, Any] | TaskAccepted:
    """Offline curation of the run's stored embeddings: k-means, band selection over random super-batches,
    decisions stored, run done. Progress is in the run's stats; with workers this answers 202 and the task runs
    on the refresh queue."""
    answer = await run_in_threadpool(dispatcher.offline_curation, run_id)
    if isinstance(answer, TaskAccepted):
        response.status_code = status.HTTP_202_ACCEPTED
    return answer

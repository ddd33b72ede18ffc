"""Runs: create (admin), read (admin or a trainer scoped to the run)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response, status
from fastapi.concurrency import run_in_threadpool
from sqlalchemy import func, select

from workers.curation import CurationConfig

from ..deps import AdminDep, DispatcherDep, RunAccessDep, RunId, SessionDep
from ..errors import ApiError
from ..lifecycle import start
from ..models import Dataset, EpochItem, Run
from ..schemas.runs import RunCreate, RunOut
from ..schemas.tasks import TaskAccepted

router = APIRouter(prefix="/v1/runs", tags=["runs"])


@router.post("", status_code=status.HTTP_201_CREATED, response_model=RunOut)
def create_run(body: RunCreate, session: SessionDep, _: AdminDep) -> Run:
    """Create a run over a dataset's accepted samples; its warm-up epoch is ready to hand out at once."""
    if session.get(Dataset, body.dataset_id) is None:
        raise ApiError(404, "unknown_dataset", f"dataset {body.dataset_id} does not exist")
    try:
        config = CurationConfig(**body.config)
    except ValueError as exc:
        raise ApiError(422, "invalid_config", f"invalid curation config: {exc}") from exc
    run = Run(dataset_id=body.dataset_id, config=config.model_dump(), seed=config.seed, model_id=body.model_id)
    session.add(run)
    session.flush()
    start(session, run)
    session.commit()
    return run


@router.get("", response_model=list[RunOut])
def list_runs(session: SessionDep, _: AdminDep) -> list[Run]:
    return list(session.scalars(select(Run).order_by(Run.id)))


@router.get("/{run_id}", response_model=RunOut)
def get_run(run_id: RunId, session: SessionDep, _: RunAccessDep) -> RunOut:
    """The run, with the size of its current epoch and how much of it is done (what a trainer's progress bar
    and learning-rate horizon need)."""
    run = session.get(Run, run_id)
    if run is None:
        raise ApiError(404, "unknown_run", f"run {run_id} does not exist")
    size, done = session.execute(
        select(func.count(), func.count().filter(EpochItem.state == "done")).where(
            EpochItem.run_id == run.id, EpochItem.epoch == run.epoch
        )
    ).one()
    return RunOut.model_validate(run).model_copy(update={"epoch_size": size, "epoch_done": done})


@router.post(
    "/{run_id}/offline",
    response_model=dict[str, Any] | TaskAccepted,
    responses={202: {"model": TaskAccepted, "description": "queued on a worker"}},
)
async def offline_curation(
    run_id: RunId, request: Request, response: Response, dispatcher: DispatcherDep, _: AdminDep
) -> dict[str, Any] | TaskAccepted:
    """Offline curation of the run's stored embeddings (SPEC §2.5): k-means, band selection over random
    super-batches, decisions stored, run done. Progress is in the run's stats; with workers this answers
    202 and the task runs on the refresh queue."""
    if not dispatcher.eager:
        from workers.celery_app import TASK_OFFLINE

        response.status_code = status.HTTP_202_ACCEPTED
        return dispatcher.submit(TASK_OFFLINE, [run_id])
    from workers.jobs.offline import run_offline_curation

    return await run_in_threadpool(run_offline_curation, request.app.state.sessions, run_id)

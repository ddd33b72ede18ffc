"""Runs: create (admin), read (admin or a trainer scoped to the run)."""

from __future__ import annotations

from fastapi import APIRouter, status
from sqlalchemy import select

from workers.curation import CurationConfig

from ..deps import AdminDep, RunAccessDep, RunId, SessionDep
from ..errors import ApiError
from ..lifecycle import start
from ..models import Dataset, Run
from ..schemas.runs import RunCreate, RunOut

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
def get_run(run_id: RunId, session: SessionDep, _: RunAccessDep) -> Run:
    run = session.get(Run, run_id)
    if run is None:
        raise ApiError(404, "unknown_run", f"run {run_id} does not exist")
    return run

"""Importing a public CXR set from its published layout into a dataset (admin only)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response, status

from ..ingest import load_dataset
from ..schemas.imports import ImportRequest, ImportResult
from ..schemas.tasks import TaskAccepted
from .datasets import readable_root
from .deps import AdminDep, DatasetId, DispatcherDep, SessionDep, SettingsDep

router = APIRouter(prefix="/v1/datasets", tags=["datasets"])


@router.post(
    "/{dataset_id}/import",
    response_model=ImportResult | TaskAccepted,
    responses={202: {"model": TaskAccepted, "description": "queued on a worker (background=true with a broker)"}},
)
def import_set(
    dataset_id: DatasetId,
    body: ImportRequest,
    session: SessionDep,
    settings: SettingsDep,
    dispatcher: DispatcherDep,
    response: Response,
    _: AdminDep,
    background: Annotated[
        bool, Query(description="queue the import on a worker and answer 202 with a task id")
    ] = False,
) -> ImportResult | TaskAccepted:
    """Import ``format`` (mimic-cxr, chexpert-plus, padchest, openi, nih) from its published layout under the
    dataset's root, with the paper's preprocessing (frontal views, findings + impression, no empty reports, the
    set's labels; each switchable in ``options``). Idempotent: importing again updates what changed. Every row
    not stored is counted by reason (``skipped``: an option left it out; ``rejected``: unusable). With
    ``background`` and workers it runs on the refresh queue; poll ``status_url`` for progress."""
    root = readable_root(load_dataset(session, dataset_id), settings)
    answer = dispatcher.dataset_import(session, dataset_id, root, body, background)
    if isinstance(answer, TaskAccepted):
        response.status_code = status.HTTP_202_ACCEPTED
    return answer

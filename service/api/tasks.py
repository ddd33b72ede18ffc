"""Background task status (progress while running, the result or the error when done)."""

from __future__ import annotations

from fastapi import APIRouter

from ..errors import ApiError
from ..schemas.tasks import TaskStatus
from .deps import AdminDep, DispatcherDep

router = APIRouter(prefix="/v1/tasks", tags=["tasks"])


@router.get("/{task_id}", response_model=TaskStatus)
def task_status(task_id: str, dispatcher: DispatcherDep, _: AdminDep) -> TaskStatus:
    """PENDING (queued, or unknown: Celery cannot tell them apart), PROGRESS, SUCCESS or FAILURE."""
    if dispatcher.eager:
        raise ApiError(404, "no_workers", "this deployment runs tasks in-process: there are no background tasks")
    return dispatcher.status(task_id)

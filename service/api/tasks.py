"""Background task status (progress while running, the result or the error when done)."""

from __future__ import annotations

from fastapi import APIRouter

from ..schemas.tasks import TaskStatus
from .deps import AdminDep, DispatcherDep

router = APIRouter(prefix="/v1/tasks", tags=["tasks"])


@router.get("/{task_id}", response_model=TaskStatus)
def task_status(task_id: str, dispatcher: DispatcherDep, _: AdminDep) -> TaskStatus:
    """PENDING (queued, or unknown: Celery cannot tell them apart), PROGRESS, SUCCESS or FAILURE; 404
    ``no_workers`` where tasks run in-process."""
    return dispatcher.task_status(task_id)

"""Background tasks: the 202 answer and the status a client polls."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel


class TaskAccepted(BaseModel):
    task_id: str
    status_url: str


class TaskStatus(BaseModel):
    task_id: str
    state: str  # PENDING (queued or unknown), PROGRESS, SUCCESS, FAILURE
    progress: dict[str, Any] | None = None  # {"current", "total", ...} while running
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None

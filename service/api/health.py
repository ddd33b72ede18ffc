"""Liveness and readiness."""

from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy import text

from ..errors import ServiceUnavailable
from .deps import DispatcherDep, SessionDep

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@router.get("/readyz")
def readyz(session: SessionDep, dispatcher: DispatcherDep) -> dict[str, str]:
    """The database answers, and with a broker configured the broker and at least one live worker; 503 otherwise
    (a trainer's curated batch would only time out)."""
    try:
        session.execute(text("SELECT 1"))
    except Exception as exc:  # any driver error means not ready
        raise ServiceUnavailable(f"database: {type(exc).__name__}") from exc
    return {"database": "ok", **dispatcher.readiness()}

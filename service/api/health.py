"""Liveness and readiness."""

from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy import text

from ..errors import ServiceUnavailable
from .deps import DispatcherDep, SessionDep, SettingsDep

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@router.get("/readyz")
def readyz(session: SessionDep, settings: SettingsDep, dispatcher: DispatcherDep) -> dict[str, str]:
    """The database answers, and with a broker configured the broker and at least one live worker; 503 otherwise
    (a trainer's curated batch would only time out)."""
    try:
        session.execute(text("SELECT 1"))
    except Exception as exc:  # any driver error means not ready
        raise ServiceUnavailable(f"database: {type(exc).__name__}") from exc
    checks = {"database": "ok", "broker": "embedded (eager tasks)", "workers": "embedded (in this process)"}
    if settings.broker_url:
        import redis

        try:
            redis.Redis.from_url(settings.broker_url, socket_timeout=2).ping()
        except Exception as exc:
            raise ServiceUnavailable(f"broker: {type(exc).__name__}") from exc
        checks["broker"] = "ok"
        if not dispatcher.live_worker():
            raise ServiceUnavailable("workers: no Celery worker answered a ping; start one (chexcurate worker)")
        checks["workers"] = "ok"
    return checks

"""Liveness and readiness."""

from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy import text

from ..deps import SessionDep, SettingsDep
from ..errors import ServiceUnavailable

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@router.get("/readyz")
def readyz(session: SessionDep, settings: SettingsDep) -> dict[str, str]:
    """The database answers, and the broker when one is configured; 503 otherwise."""
    try:
        session.execute(text("SELECT 1"))
    except Exception as exc:  # any driver error means not ready
        raise ServiceUnavailable(f"database: {type(exc).__name__}") from exc
    checks = {"database": "ok", "broker": "embedded (eager tasks)"}
    if settings.broker_url:
        import redis

        try:
            redis.Redis.from_url(settings.broker_url, socket_timeout=2).ping()
        except Exception as exc:
            raise ServiceUnavailable(f"broker: {type(exc).__name__}") from exc
        checks["broker"] = "ok"
    return checks

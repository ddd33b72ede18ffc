"""Every error leaves as JSON naming the problem: ``{"error": code, "detail": message, ...}``."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError, DBAPIError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException


class ApiError(Exception):
    """A 4xx the client can act on; ``code`` is a stable machine-readable name."""

    def __init__(self, status: int, code: str, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail, self.extra = status, code, detail, extra


class StepFailure(ApiError):
    """The run's own state stops one of its steps (not the request that happened to run it): e.g. too few or
    unusable stored embeddings for the warm-up k-means. Recorded on the run, which stops at once."""


class ServiceUnavailable(Exception):
    """A dependency (database, broker, worker) is down or too slow: 503 with Retry-After."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


def _body(code: str, detail: Any, **extra: Any) -> dict[str, Any]:
    return {"error": code, "detail": detail, **extra}


def install_error_handlers(app: FastAPI, retry_after_seconds: int) -> None:
    retry = {"Retry-After": str(retry_after_seconds)}

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(_body(exc.code, exc.detail, **exc.extra), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [
            {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")} for e in exc.errors()
        ]
        return JSONResponse(_body("invalid_request", problems), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(
            _body("http_error", exc.detail), status_code=exc.status_code, headers=getattr(exc, "headers", None)
        )

    @app.exception_handler(ServiceUnavailable)
    async def _unavailable(_: Request, exc: ServiceUnavailable) -> JSONResponse:
        return JSONResponse(_body("unavailable", exc.detail), status_code=503, headers=retry)

    @app.exception_handler(OperationalError)
    async def _db_down(_: Request, exc: OperationalError) -> JSONResponse:
        return JSONResponse(
            _body("database_unavailable", "the database cannot be reached"), status_code=503, headers=retry
        )

    @app.exception_handler(DataError)
    async def _bad_value(_: Request, exc: DataError) -> JSONResponse:
        # The database refused a value the request carried (e.g. an id beyond bigint): the client's problem.
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else "invalid value"
        return JSONResponse(_body("invalid_value", f"the database cannot store or compare a value: {reason}"), 422)

    @app.exception_handler(DBAPIError)
    async def _db_error(_: Request, exc: DBAPIError) -> JSONResponse:
        if exc.connection_invalidated:
            return JSONResponse(_body("database_unavailable", "the database connection was lost"), 503, headers=retry)
        raise exc

"""Every error leaves the API as JSON naming the problem: ``{"error": code, "detail": message, ...}``."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError, DBAPIError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import ApiError, ServiceUnavailable


def _body(code: str, detail: Any, **extra: Any) -> dict[str, Any]:
    return {"error": code, "detail": detail, **extra}


def install_error_handlers(app: FastAPI, retry_after_seconds: int) -> None:
    retry = {"Retry-After": str(retry_after_seconds)}

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status)

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
        return JSONResponse(exc.body(), status_code=exc.status, headers=retry)

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

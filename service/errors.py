"""The service's one error family, free of any web framework.

``ApiError`` is a problem the client can act on: an HTTP status and a stable ``code``. ``StepFailure`` is the run's
own state stopping one of its steps (recorded on the run, which stops at once); ``ServiceUnavailable`` is a
dependency that is down or too slow (503 with Retry-After). The API turns them into JSON answers
(``service.api.errors``); a worker sends them back through the broker as an envelope (``to_envelope``), which
the dispatcher raises again (``from_envelope``). docs/DESIGN.md, "Errors".
"""

from __future__ import annotations

from typing import Any

#: HTTP status of ServiceUnavailable, and the one an envelope is raised again as ServiceUnavailable for
UNAVAILABLE = 503


class ApiError(Exception):
    """A 4xx the client can act on; ``code`` is a stable machine-readable name."""

    def __init__(self, status: int, code: str, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail, self.extra = status, code, detail, extra

    def body(self) -> dict[str, Any]:
        """The JSON answer: ``{"error": code, "detail": message, ...extra}``."""
        return {"error": self.code, "detail": self.detail, **self.extra}


class StepFailure(ApiError):
    """The run's own state stops one of its steps (not the request that happened to run it): e.g. too few or
    unusable stored embeddings for the warm-up k-means. Recorded on the run, which stops at once."""


class ServiceUnavailable(ApiError):
    """A dependency (database, broker, worker) is down or too slow: 503 with Retry-After."""

    def __init__(self, detail: str) -> None:
        super().__init__(UNAVAILABLE, "unavailable", detail)


def unknown_run(run_id: int) -> ApiError:
    return ApiError(404, "unknown_run", f"run {run_id} does not exist")


def to_envelope(exc: ApiError) -> dict[str, Any]:
    """An error as a task's JSON result: the answer's body plus its ``status``."""
    return {**exc.body(), "status": exc.status}


def is_envelope(result: dict[str, Any]) -> bool:
    return "error" in result and "status" in result


def from_envelope(result: dict[str, Any]) -> ApiError:
    """The error a task's result carries, as it was raised on the worker (a 503 as ServiceUnavailable)."""
    extra = dict(result)
    status, code, detail = int(extra.pop("status")), str(extra.pop("error")), str(extra.pop("detail"))
    return ServiceUnavailable(detail) if status == UNAVAILABLE else ApiError(status, code, detail, **extra)

"""A run that cannot progress says so (docs/ERRORS.md, "Stopped runs").

A failing step of a run (the warm-up k-means, a curated batch) is noted in ``Run.error``: the step, its error,
how many times in a row it failed. The run stops, and its leases and embedding posts answer 409 ``run_failed``
naming the reason, at once for a ``StepFailure`` (the run's own data cannot make progress, so a retry would fail
the same way) and after ``step_failure_limit`` failures in a row for any other error (which may be passing, e.g.
memory). Database errors are the database's, not the run's: they are neither noted nor counted, and the step
is retried as before. An admin repairs a stopped run over the API (``POST /v1/runs/{id}/repair``).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy.exc import DBAPIError

from .errors import ApiError, ServiceUnavailable, StepFailure
from .models import Run

STEP_INIT = "warmup_kmeans"
STEP_CURATE = "curation_step"
DETAIL_CHARS = 2000


def is_infrastructure(exc: BaseException) -> bool:
    """A database or broker failure: retried where it happened, never held against the run."""
    return isinstance(exc, DBAPIError | ServiceUnavailable)


def stopped(run: Run) -> bool:
    return bool(run.error and run.error.get("stopped"))


def record_failure(run: Run, step: str, exc: BaseException, limit: int) -> dict[str, Any]:
    """Note ``exc`` on the run (the caller holds the run lock and commits); returns the error noted."""
    previous = run.error or {}
    failures = int(previous.get("failures", 0)) + 1 if previous.get("step") == step else 1
    if isinstance(exc, ApiError):
        code, detail, extra = exc.code, exc.detail, exc.extra
    else:
        code, detail, extra = "step_error", f"{type(exc).__name__}: {exc}", {}
    error: dict[str, Any] = {
        "step": step,
        "code": code,
        "detail": detail[:DETAIL_CHARS],
        "failures": failures,
        "stopped": isinstance(exc, StepFailure) or failures >= limit,
        "at": datetime.now(UTC).isoformat(),
    }
    if "sample_ids" in extra:
        error["sample_ids"] = list(extra["sample_ids"])[:100]
    run.error = error
    if step == STEP_INIT:
        # asked again at the next lease (with workers), not after the re-drive delay: a stop shows within a few
        run.progress = {k: v for k, v in run.progress.items() if k != "init_requested_at"}
    return error


def clear_failure(run: Run) -> None:
    if run.error is not None:
        run.error = None


def stop_reason(run: Run) -> str:
    error = run.error or {}
    times = f"{error.get('failures')} time{'s' if error.get('failures') != 1 else ''}"
    why = f"{error.get('code')}: {error.get('detail')}"
    return f"run {run.id} is stopped: its {error.get('step')} failed {times} ({why}); an admin can repair it " + (
        f"(POST /v1/runs/{run.id}/repair)"
    )


def ensure_runnable(run: Run) -> None:
    """409 ``run_failed`` naming the reason when the run is stopped."""
    if stopped(run):
        raise ApiError(409, "run_failed", stop_reason(run), reason=run.error)


def failed_step_answer(run: Run) -> Exception:
    """What the request whose step just failed gets: 409 once the run is stopped, else 503 (retry the same post)."""
    if stopped(run):
        return ApiError(409, "run_failed", stop_reason(run), reason=run.error)
    error = run.error or {}
    return ServiceUnavailable(
        f"run {run.id}'s {error.get('step')} failed ({error.get('failures')} in a row; the run stops at "
        f"the limit): {error.get('code')}: {error.get('detail')}"
    )

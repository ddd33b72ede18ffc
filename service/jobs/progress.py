"""Progress of a long job, reported to a callback at once and persisted in ``Run.progress`` every few seconds."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import text, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from ..db import is_postgres
from ..models import Run

#: ``progress(stage, done, total)``
ProgressCallback = Callable[[str, int, int], None]


class ProgressRecorder:
    """Times stages and keeps an admin informed without slowing the job down.

    Every report reaches ``callback``; ``Run.progress`` is written in its own short transaction on a stage
    change, at a stage's end, and otherwise at most every ``interval`` seconds. Persisting is best effort:
    a run row locked by someone else is skipped after ``lock_timeout_ms`` rather than stalling the job.
    """

    def __init__(
        self,
        sessions: sessionmaker[Session],
        run_id: int,
        job: str,
        callback: ProgressCallback | None = None,
        interval: float = 2.0,
        lock_timeout_ms: int = 500,
    ) -> None:
        self.sessions, self.run_id, self.job, self.callback = sessions, run_id, job, callback
        self.interval, self.lock_timeout_ms = interval, lock_timeout_ms
        self.started = time.monotonic()
        self.stage: str | None = None
        self.stage_started = self.started
        self.last_persist = float("-inf")
        self.seconds: dict[str, float] = {}

    def __call__(self, stage: str, done: int, total: int, persist: bool = True) -> None:
        now = time.monotonic()
        changed = stage != self.stage
        if changed:
            self._close_stage(now)
            self.stage, self.stage_started = stage, now
        if self.callback is not None:
            self.callback(stage, done, total)
        if persist and (changed or done >= total or now - self.last_persist >= self.interval):
            self.last_persist = now
            self.persist(self.snapshot(stage, done, total))

    def _close_stage(self, now: float) -> None:
        if self.stage is not None:
            self.seconds[self.stage] = round(self.seconds.get(self.stage, 0.0) + now - self.stage_started, 3)

    def finish(self) -> dict[str, float]:
        """Close the running stage; seconds per stage plus ``total``."""
        now = time.monotonic()
        self._close_stage(now)
        self.stage = None
        return {**self.seconds, "total": round(now - self.started, 3)}

    def snapshot(self, stage: str, done: int, total: int, **extra: Any) -> dict[str, Any]:
        return {
            "job": self.job,
            "stage": stage,
            "done": int(done),
            "total": int(total),
            "seconds": dict(self.seconds),
            "updated_at": datetime.now(UTC).isoformat(),
            **extra,
        }

    def persist(self, progress: dict[str, Any]) -> None:
        with self.sessions() as session:
            try:
                if is_postgres(session):
                    session.execute(text(f"SET LOCAL lock_timeout = {int(self.lock_timeout_ms)}"))
                session.execute(update(Run).where(Run.id == self.run_id).values(progress=progress))
                session.commit()
            except OperationalError:
                session.rollback()  # lock timeout (SQLite: database locked): the next report tries again

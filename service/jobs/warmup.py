"""The warm-up k-means on a worker (the init-prototypes task), then the run's first curation epoch.

The embedded default runs the same k-means in the request that ends the warm-up (``runs.schedule.init_or_record``).
Here it is ``refresh_prototypes`` over the warm-up epoch's rows with a session factory: the rows are read in a
snapshot of their own and the k-means runs outside any transaction, so the run lock is not held meanwhile and
trainers' leases go on being answered. Version 1 is stored under the lock only if the run still waits for it; a
redelivered or repeated task, or one that lost the race, changes nothing.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from ..models import Run
from ..runs.access import lock_run, run_config
from ..runs.failures import STEP_INIT, clear_failure, is_infrastructure, record_failure
from ..runs.leasing import epoch_open
from ..runs.prototypes import step_kmeans
from ..runs.schedule import advance_if_epoch_done, awaiting_prototypes, warmup_ids


def initialise_prototypes(sessions: sessionmaker[Session], run_id: int, failure_limit: int) -> dict[str, Any]:
    """k-means after warm-up, then the first curation epoch opened. A no-op if another task already did it, or the
    run is stopped; a failure is noted on the run (asked again at the next lease until the run stops)."""
    with sessions() as session:
        run = lock_run(session, run_id)
        waiting = awaiting_prototypes(run) and not epoch_open(session, run.id, run.epoch)
        config, ids = run_config(run), warmup_ids(session, run) if waiting else None
        session.commit()
    if ids is not None:
        try:
            step_kmeans(sessions, run_id, config, ids, "warm-up", claim=_claim)
        except Exception as exc:
            if is_infrastructure(exc):
                raise
            with sessions() as session:
                run = lock_run(session, run_id)
                if awaiting_prototypes(run):
                    record_failure(run, STEP_INIT, exc, failure_limit)
                session.commit()
    with sessions() as session:
        run = lock_run(session, run_id)
        advance_if_epoch_done(session, run, _already_asked)
        session.commit()
        answer = {"run_id": run.id, "phase": run.phase, "prototype_version": run.prototype_version}
        return answer | ({"error": run.error} if run.error else {})


def _claim(run: Run) -> bool:
    """Store version 1 only while the run still waits for it; its warm-up failure, if any, is then over."""
    if not awaiting_prototypes(run):
        return False
    clear_failure(run)
    return True


def _already_asked(run: Run) -> None:
    """This task was the k-means: a run still without prototypes waits for the next lease to ask again."""

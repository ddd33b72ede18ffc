"""Finding a run: its row (read, or locked for a change), its curation config, and the samples it hands out."""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from ..curation import CurationConfig
from ..db import is_postgres
from ..errors import unknown_run
from ..models import Decision, EpochItem, Run, RunExclusion, Sample


def load_run(session: Session, run_id: int) -> Run:
    """The run, or 404 ``unknown_run``."""
    run = session.get(Run, run_id)
    if run is None:
        raise unknown_run(run_id)
    return run


def lock_run(session: Session, run_id: int) -> Run:
    """The run's row, locked until the transaction ends: every change of a run's phase, epoch, step or prototype
    version happens under it, so they form one sequence whichever process makes them (docs/DESIGN.md)."""
    connection = session.connection()
    if not is_postgres(connection):
        # SQLite ignores FOR UPDATE, and pysqlite opens its transaction only at the first write: two requests of
        # one run (a trainer's lease and its background ack) could both read the old epoch and both advance it.
        # Taking the database write lock before reading the run serialises them as the row lock does on Postgres.
        dbapi = connection.connection.dbapi_connection
        if not getattr(dbapi, "in_transaction", True):
            connection.exec_driver_sql("BEGIN IMMEDIATE")
    run = session.scalar(select(Run).where(Run.id == run_id).with_for_update())
    if run is None:
        raise unknown_run(run_id)
    return run


def run_config(run: Run) -> CurationConfig:
    return CurationConfig.model_validate(run.config)


def in_pool(run: Run) -> list[Any]:
    """The samples a run hands out: accepted in its dataset and not left out of this run."""
    left_out = select(RunExclusion.sample_id).where(RunExclusion.run_id == run.id)
    return [Sample.dataset_id == run.dataset_id, Sample.status == "accepted", Sample.id.not_in(left_out)]


def run_pool(session: Session, run: Run) -> NDArray[np.int64]:
    ids = session.scalars(select(Sample.id).where(*in_pool(run)))
    return np.fromiter(ids, dtype=np.int64)


def subset_ids(session: Session, run: Run) -> NDArray[np.int64]:
    """Union of kept samples over the curation epochs, less any left out since."""
    kept = select(Decision.sample_id).where(Decision.run_id == run.id, Decision.kept.is_(True))
    ids = session.scalars(select(Sample.id).where(Sample.id.in_(kept), *in_pool(run)))
    return np.fromiter(ids, dtype=np.int64)


def epoch_progress(session: Session, run: Run) -> tuple[int, int]:
    """``(size, done)`` of the run's current epoch: its handed-out rows, and those acknowledged."""
    size, done = session.execute(
        select(func.count(), func.count().filter(EpochItem.state == "done")).where(
            EpochItem.run_id == run.id, EpochItem.epoch == run.epoch
        )
    ).one()
    return int(size), int(done)

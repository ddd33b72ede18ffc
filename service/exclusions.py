"""Leaving samples out: of one run (a trainer's unreadable report on a sample it holds a live lease on, or an admin
repairing the run), or of a whole dataset (an admin's verdict). Callers hold the run lock where there is a run,
and commit."""

from __future__ import annotations

import numpy as np
from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from .bulk import foreign_ids
from .errors import ApiError
from .leasing import skip_samples
from .models import Embedding, Run, RunExclusion, Sample
from .schemas.datasets import ExclusionOut


def check_in_dataset(session: Session, dataset_id: int, sample_ids: list[int]) -> None:
    """404 ``unknown_samples`` naming the ids that are not samples of the dataset."""
    missing = foreign_ids(session, dataset_id, np.asarray(sample_ids, dtype=np.int64))
    if missing:
        raise ApiError(
            404,
            "unknown_samples",
            f"{len(missing)} sample ids are not in dataset {dataset_id}, e.g. {missing[:10]}",
            sample_ids=missing[:100],
        )


def excluded_from_run(session: Session, run_id: int, sample_id: int) -> bool:
    return session.get(RunExclusion, (run_id, sample_id)) is not None


def exclude_from_run(session: Session, run: Run, sample_ids: list[int], reason: str, source: str) -> int:
    """Leave samples out of this run only; returns how many were not already.

    A trainer (``source="trainer"``) drops a row it holds a lease on, so leased rows are skipped too. An admin's
    exclusion skips pending rows (a lease in flight stays with its holder) and deletes the samples' stored
    embeddings in the run, so k-means, prototype re-initialisation and the neighbour index leave them out.
    """
    ids = sorted(set(sample_ids))
    known = set(
        session.scalars(
            select(RunExclusion.sample_id).where(RunExclusion.run_id == run.id, RunExclusion.sample_id.in_(ids))
        )
    )
    session.add_all(
        RunExclusion(run_id=run.id, sample_id=i, source=source, reason=reason) for i in ids if i not in known
    )
    skip_samples(session, [run.id], ids, ("pending", "leased") if source == "trainer" else ("pending",))
    if source == "admin":
        session.execute(delete(Embedding).where(Embedding.run_id == run.id, Embedding.sample_id.in_(ids)))
    return len(ids) - len(known)


def exclude_from_dataset(session: Session, dataset_id: int, sample_ids: list[int], reason: str) -> ExclusionOut:
    """Mark samples unreadable dataset-wide: no run hands them out again (pending rows of unfinished runs are
    skipped, later epochs and later runs draw from accepted samples only). All or nothing."""
    ids = sorted(set(sample_ids))
    check_in_dataset(session, dataset_id, ids)
    session.execute(update(Sample).where(Sample.id.in_(ids)).values(status="unreadable", rejection_reason=reason))
    runs = list(
        session.scalars(select(Run.id).where(Run.dataset_id == dataset_id, Run.phase != "done").order_by(Run.id))
    )
    if runs:
        skip_samples(session, runs, ids, ("pending",))
    return ExclusionOut(excluded=len(ids), runs=runs)

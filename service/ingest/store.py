"""Idempotent upsert of samples keyed by (dataset_id, external_id), inside the caller's transaction."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Integer, cast, func, insert, literal, select, update
from sqlalchemy.orm import Session

from ..db import is_postgres
from ..models import Sample, utcnow

#: rows per SELECT / INSERT / UPDATE round; SQLAlchemy batches the executemany underneath
BATCH_ROWS = 1000
#: two-int advisory lock key space for "ingest into dataset N" (distinct from single-bigint run locks)
INGEST_LOCK_CLASS = 0x1D5


#: the stored fields a re-post is compared on (everything but the key and bookkeeping)
COMPARED = (
    "image_uri", "report", "report_synthetic", "labels", "meta", "content_hash", "study_uid", "sop_uid",
    "patient_id", "study_id", "split",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class SampleIn:
    """A row that passed every check, ready to store."""

    external_id: str
    image_uri: str
    report: str
    report_synthetic: bool
    labels: list[str]
    meta: dict[str, Any]
    content_hash: str
    study_uid: str | None = None
    sop_uid: str | None = None
    patient_id: str | None = None
    study_id: str | None = None
    split: str | None = None

    def values(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in COMPARED}


@dataclass
class UpsertCounts:
    accepted: int = 0  # new samples
    updated: int = 0
    unchanged: int = 0


def lock_dataset_for_ingest(session: Session, dataset_id: int) -> None:
    """Serialise ingests into one dataset until commit, so two uploads of the same new id cannot both insert.

    An advisory lock rather than ``SELECT ... FOR UPDATE`` on the dataset row: that would also block
    creating runs on the dataset (their foreign key takes a share lock on the row). SQLite has one writer
    anyway.
    """
    if is_postgres(session):
        # The (int4, int4) form: fold the bigint id into int4 range; a collision only serialises more.
        key = cast(literal(dataset_id % 2**31), Integer)
        session.execute(select(func.pg_advisory_xact_lock(cast(literal(INGEST_LOCK_CLASS), Integer), key)))


def upsert_batch(session: Session, dataset_id: int, rows: list[SampleIn]) -> UpsertCounts:
    """Insert new ids, update changed ones, leave equal ones alone; ``rows`` must have distinct ids."""
    counts = UpsertCounts()
    if not rows:
        return counts
    columns = [getattr(Sample, name) for name in COMPARED]
    found = session.execute(
        select(Sample.id, Sample.external_id, Sample.status, *columns).where(
            Sample.dataset_id == dataset_id, Sample.external_id.in_([r.external_id for r in rows])
        )
    ).all()
    existing = {row.external_id: row for row in found}
    now = utcnow()
    inserts: list[dict[str, Any]] = []
    updates: list[dict[str, Any]] = []
    for row in rows:
        values = row.values()
        old = existing.get(row.external_id)
        if old is None:
            inserts.append(
                {"dataset_id": dataset_id, "external_id": row.external_id, **values}
                | {"status": "accepted", "rejection_reason": None, "created_at": now, "updated_at": now}
            )
        elif any(getattr(old, name) != value for name, value in values.items()):
            change = {"id": old.id, "updated_at": now, **values}
            # A new image gets a fresh chance; a report-only change keeps a trainer's "unreadable" verdict.
            if old.content_hash != row.content_hash or old.image_uri != row.image_uri:
                change |= {"status": "accepted", "rejection_reason": None}
            updates.append(change)
        else:
            counts.unchanged += 1
    if inserts:
        session.execute(insert(Sample), inserts)
    if updates:
        session.execute(update(Sample), updates)
    counts.accepted, counts.updated = len(inserts), len(updates)
    return counts


@dataclass
class SampleWriter:
    """Buffers checked rows and upserts them in batches, all in the session's one transaction.

    Nothing is committed here: the caller commits after the whole body was read, or rolls back.
    """

    session: Session
    dataset_id: int
    counts: UpsertCounts = field(default_factory=UpsertCounts)
    _pending: list[SampleIn] = field(default_factory=list)
    _locked: bool = False

    def add(self, row: SampleIn) -> None:
        self._pending.append(row)
        if len(self._pending) >= BATCH_ROWS:
            self.flush()

    def flush(self) -> None:
        if not self._pending:
            return
        if not self._locked:
            lock_dataset_for_ingest(self.session, self.dataset_id)
            self._locked = True
        batch = upsert_batch(self.session, self.dataset_id, self._pending)
        self._pending = []
        self.counts.accepted += batch.accepted
        self.counts.updated += batch.updated
        self.counts.unchanged += batch.unchanged

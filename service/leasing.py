"""Epochs as materialised seeded permutations, leased in order with row locks (SPEC §3, design note 7).

Each epoch's permutation is stored as rows (run, epoch, position, sample, state, lease, manifest). A claim
takes the next N pending-or-expired rows with ``FOR UPDATE SKIP LOCKED``, so concurrent trainers never get
the same row; an acknowledgement marks rows done; an epoch ends when every row is done.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
from numpy.typing import NDArray
from sqlalchemy import and_, func, insert, select, update
from sqlalchemy.orm import Session

from .bulk import copy_rows, is_postgres
from .models import EpochItem


def materialise_epoch(session: Session, run_id: int, seed: int, epoch: int, sample_ids: NDArray[np.int64]) -> int:
    """Store the seeded permutation of ``sample_ids`` for ``epoch``; returns its length."""
    order = np.random.default_rng([seed, epoch]).permutation(np.sort(sample_ids))
    rows = [(run_id, epoch, pos, int(sid), "pending") for pos, sid in enumerate(order.tolist())]
    if is_postgres(session):
        copy_rows(
            session,
            "COPY epoch_items (run_id, epoch, position, sample_id, state) FROM STDIN (FORMAT binary)",
            ("int8", "int4", "int4", "int8", "varchar"),
            rows,
        )
    elif rows:
        keys = ("run_id", "epoch", "position", "sample_id", "state")
        session.execute(insert(EpochItem), [dict(zip(keys, r, strict=True)) for r in rows])
    return len(rows)


def claim(
    session: Session, run_id: int, epoch: int, size: int, manifest_id: str, now: datetime, lease_seconds: int
) -> list[int]:
    """Lease the next ``size`` claimable rows of the epoch to ``manifest_id``; their sample ids in order.

    Lapsed leases go first, then pending rows by position. Each is its own index range scan in position
    order that stops after ``size`` rows (one OR-ed predicate would make Postgres sort the whole epoch).
    """
    lease = {"state": "leased", "lease_expires_at": now + timedelta(seconds=lease_seconds), "manifest_id": manifest_id}
    taken: list[tuple[int, int]] = []
    for condition in (
        and_(EpochItem.state == "leased", EpochItem.lease_expires_at < now),
        EpochItem.state == "pending",
    ):
        if len(taken) >= size:
            break
        claimable = (
            select(EpochItem.id)
            .where(EpochItem.run_id == run_id, EpochItem.epoch == epoch, condition)
            .order_by(EpochItem.position)
            .limit(size - len(taken))
            .with_for_update(skip_locked=True)
        )
        taken += session.execute(
            update(EpochItem)
            .where(EpochItem.id.in_(claimable.scalar_subquery()))
            .values(**lease)
            .returning(EpochItem.position, EpochItem.sample_id)
        ).all()
    return [sample_id for _, sample_id in sorted(taken)]


def manifest_rows(session: Session, manifest_id: str) -> dict[int, str]:
    """Sample id -> state of the rows still assigned to ``manifest_id`` (a lapsed, re-claimed lease moves
    rows to another manifest; a skipped unreadable sample stays here as done)."""
    rows = session.execute(
        select(EpochItem.sample_id, EpochItem.state).where(EpochItem.manifest_id == manifest_id)
    ).all()
    return {sample_id: state for sample_id, state in rows}


def complete(session: Session, manifest_id: str) -> int:
    result = session.execute(
        update(EpochItem)
        .where(EpochItem.manifest_id == manifest_id, EpochItem.state == "leased")
        .values(state="done", lease_expires_at=None)
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


def skip_samples(
    session: Session, run_ids: list[int], sample_ids: list[int], states: tuple[str, ...] = ("pending", "leased")
) -> None:
    """Samples left out leave the open epochs of the runs: their rows in ``states`` count as done, nobody gets
    them again (a leased row stays with its holder unless ``states`` names it)."""
    session.execute(
        update(EpochItem)
        .where(EpochItem.run_id.in_(run_ids), EpochItem.sample_id.in_(sample_ids), EpochItem.state.in_(states))
        .values(state="done", lease_expires_at=None)
    )


def holds_live_lease(session: Session, run_id: int, epoch: int, sample_id: int, manifest_id: str | None) -> bool:
    """Whether the sample's row of the epoch is leased now (to ``manifest_id`` when given) and not expired."""
    now = datetime.now(UTC)
    where = [
        EpochItem.run_id == run_id,
        EpochItem.epoch == epoch,
        EpochItem.sample_id == sample_id,
        EpochItem.state == "leased",
        EpochItem.lease_expires_at > now,
    ]
    if manifest_id is not None:
        where.append(EpochItem.manifest_id == manifest_id)
    return session.scalar(select(EpochItem.id).where(*where)) is not None


def epoch_open(session: Session, run_id: int, epoch: int) -> bool:
    """Whether any row of the epoch is not done yet (an index probe, not a count over the epoch)."""
    return (
        session.scalar(
            select(EpochItem.id)
            .where(EpochItem.run_id == run_id, EpochItem.epoch == epoch, EpochItem.state.in_(("pending", "leased")))
            .limit(1)
        )
        is not None
    )


def next_lease_expiry(session: Session, run_id: int, epoch: int) -> datetime | None:
    expiry = session.scalar(
        select(func.min(EpochItem.lease_expires_at)).where(
            EpochItem.run_id == run_id, EpochItem.epoch == epoch, EpochItem.state == "leased"
        )
    )
    # SQLite keeps no zone: its timestamps are the UTC ones written, read back naive
    return expiry.replace(tzinfo=UTC) if expiry is not None and expiry.tzinfo is None else expiry

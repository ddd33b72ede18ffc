"""The gallery: one epoch's decisions of a run, per band and prototype, a page at a time (keyset pagination).

A page is the next ``limit`` decisions after the last one shown, in (band, prototype, sample) order: a range of
the index ``ix_decisions_gallery`` read from the cursor, joined to the samples by primary key. No OFFSET and no
count, so page 5,000 of a million-sample run costs what page 1 does. A label filter reads on along that range
until the page is full.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, cast, exists, func, literal, literal_column, select, tuple_
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Session

from ..curation import BAND_LABELS
from ..db import is_postgres
from ..errors import ApiError
from ..models import Decision, Run, Sample

PAGE_MAX = 200


@dataclass(frozen=True)
class Cursor:
    """The last decision shown: where the next page starts (``band.prototype.sample_id`` in a URL)."""

    band: int
    prototype: int
    sample_id: int

    def __str__(self) -> str:
        return f"{self.band}.{self.prototype}.{self.sample_id}"

    @classmethod
    def parse(cls, text: str) -> Cursor:
        try:
            band, prototype, sample_id = (int(part) for part in text.split("."))
        except ValueError:
            raise ApiError(422, "invalid_cursor", f"cursor must be band.prototype.sample_id, got {text!r}") from None
        return cls(band, prototype, sample_id)


@dataclass(frozen=True)
class GalleryQuery:
    epoch: int
    band: int | None = None  # service.curation.Band code; None: every band
    prototype: int | None = None
    label: str | None = None
    after: Cursor | None = None
    limit: int = 48


def band_code(label: str | None) -> int | None:
    """The band code of a band's name (``outlier``, ``support``, ``central_kept``, ``central_dropped``)."""
    if not label:
        return None
    if label not in BAND_LABELS:
        raise ApiError(422, "unknown_band", f"band must be one of {list(BAND_LABELS)}, got {label!r}")
    return BAND_LABELS.index(label)


def decided_epochs(session: Session, run: Run) -> list[int]:
    """The epochs with decisions (the first and last read off the index's edges, the ones between assumed)."""
    lo, hi = session.execute(
        select(func.min(Decision.epoch), func.max(Decision.epoch)).where(Decision.run_id == run.id)
    ).one()
    return [] if lo is None else list(range(int(lo), int(hi) + 1))


def has_label(session: Session, label: str) -> ColumnElement[bool]:
    """Whether a sample's JSON list of labels holds ``label`` (jsonb containment on Postgres)."""
    if is_postgres(session):
        return Sample.labels.op("@>")(cast(literal(json.dumps([label])), JSONB))
    element = func.json_each(Sample.labels).table_valued("value")
    return exists(select(literal_column("1")).select_from(element).where(element.c.value == label))


def gallery_page(session: Session, run: Run, query: GalleryQuery) -> tuple[list[dict[str, Any]], Cursor | None]:
    """One page of decisions with their samples, and the cursor of the next page (None on the last)."""
    if not 1 <= query.limit <= PAGE_MAX:
        raise ApiError(422, "invalid_limit", f"limit must be 1..{PAGE_MAX}, got {query.limit}")
    where: list[Any] = [Decision.run_id == run.id, Decision.epoch == query.epoch]
    if query.band is not None:
        where.append(Decision.band == query.band)
    if query.prototype is not None:
        where.append(Decision.prototype == query.prototype)
    if query.label:
        where.append(has_label(session, query.label))
    if query.after is not None:
        after = query.after
        where.append(
            tuple_(Decision.band, Decision.prototype, Decision.sample_id)
            > tuple_(after.band, after.prototype, after.sample_id)
        )
    rows = session.execute(
        select(
            Decision.band,
            Decision.prototype,
            Decision.sample_id,
            Decision.distance,
            Decision.kept,
            Sample.external_id,
            Sample.report,
            Sample.labels,
        )
        .join(Sample, Sample.id == Decision.sample_id)
        .where(*where)
        .order_by(Decision.band, Decision.prototype, Decision.sample_id)
        .limit(query.limit + 1)
    ).all()
    items = [
        {
            "sample_id": sid,
            "band": BAND_LABELS[band],
            "prototype": prototype,
            "distance": distance,
            "kept": kept,
            "external_id": external_id,
            "report": report,
            "labels": list(labels or []),
        }
        for band, prototype, sid, distance, kept, external_id, report, labels in rows[: query.limit]
    ]
    last = rows[query.limit - 1] if len(rows) > query.limit else None
    return items, (Cursor(last[0], last[1], last[2]) if last is not None else None)

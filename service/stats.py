"""Run statistics and the subset export, computed with SQL aggregates.

The curation epochs are ``1..curation_epochs`` (epoch 0 is the warm-up, see ``runs.schedule``); every
number here covers the decisions of those epochs only. Only aggregates and the first and latest prototype
versions reach Python, never one row per decision, except in the streamed export.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import numpy as np
from numpy.typing import NDArray
from sqlalchemy import ColumnElement, Integer, Select, case, cast, func, literal, select, true
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Session

from .curation import BAND_LABELS, Band, compute_fraction
from .db import is_postgres
from .enrichment import enrichment_from_counts
from .errors import ApiError
from .models import Decision, PrototypeVersion, Run, Sample
from .runs.access import in_pool, run_config
from .runs.modes import run_modes
from .runs.prototypes import version_vectors
from .schemas.admin import BandCounts, LabelShare, PrototypeDrift, PrototypeStats, RunStats
from .schemas.runs import RunError

#: columns of the subset export, in order
EXPORT_COLUMNS = ("sample_id", "external_id", "image_uri", "band", "prototype", "distance", "epoch", "step")


def curation_window(run: Run) -> tuple[int, int]:
    """First and last curation epoch (inclusive); empty (1, 0) when the run curates nothing."""
    return 1, run_config(run).curation_epochs


def _curated(run: Run) -> list[ColumnElement[bool]]:
    first, last = curation_window(run)
    return [Decision.run_id == run.id, Decision.epoch >= first, Decision.epoch <= last]


def kept_ids(run: Run) -> Select[int]:
    return select(Decision.sample_id).where(*_curated(run), Decision.kept.is_(True)).distinct()


def band_counts(session: Session, run: Run) -> BandCounts:
    rows = session.execute(select(Decision.band, func.count()).where(*_curated(run)).group_by(Decision.band))
    return BandCounts(**{Band(code).label: int(n) for code, n in rows})


def prototype_stats(session: Session, run: Run, latest: PrototypeVersion | None) -> list[PrototypeStats]:
    rows = session.execute(
        select(Decision.prototype, func.count(), func.avg(Decision.distance))
        .where(*_curated(run))
        .group_by(Decision.prototype)
    )
    per = {int(k): (int(n), float(mean)) for k, n, mean in rows}
    ids = range(latest.k) if latest is not None else sorted(per)
    usage = list(latest.usage) if latest is not None else []
    return [
        PrototypeStats(
            id=k,
            usage=int(usage[k]) if k < len(usage) else None,
            decisions=per.get(k, (0, 0.0))[0],
            mean_distance=per[k][1] if k in per else None,
        )
        for k in ids
    ]


def prototype_drift(first: PrototypeVersion | None, latest: PrototypeVersion | None) -> PrototypeDrift | None:
    """Euclidean distance each prototype moved from the first version to the latest."""
    if first is None or latest is None:
        return None
    a, b = version_vectors(first).astype(np.float64), version_vectors(latest).astype(np.float64)
    if a.shape != b.shape:
        raise ApiError(409, "prototype_shape_changed", f"prototype versions have shapes {a.shape} and {b.shape}")
    per = np.linalg.norm(b - a, axis=1)
    return PrototypeDrift(
        from_version=first.version,
        to_version=latest.version,
        per_prototype=[float(x) for x in per],
        mean=float(per.mean()),
    )


def edge_version(session: Session, run: Run, newest: bool) -> PrototypeVersion | None:
    """The run's latest (``newest``) or first stored prototype version; None before warm-up."""
    order = PrototypeVersion.version.desc() if newest else PrototypeVersion.version.asc()
    return session.scalar(select(PrototypeVersion).where(PrototypeVersion.run_id == run.id).order_by(order).limit(1))


def _label_counts(session: Session, samples: list[ColumnElement[bool]]) -> dict[str, int]:
    """Per label, the number of distinct samples carrying it (labels: a JSON list of strings per sample)."""
    if is_postgres(session):
        labels = case((func.jsonb_typeof(Sample.labels) == "array", Sample.labels), else_=cast(literal("[]"), JSONB))
        element = func.jsonb_array_elements_text(labels).table_valued("value")
    else:
        labels = case((func.json_type(Sample.labels) == "array", Sample.labels), else_=literal("[]"))
        element = func.json_each(labels).table_valued("value")
    rows = session.execute(
        select(element.c.value, func.count(Sample.id.distinct()))
        .select_from(Sample)
        .join(element, true())
        .where(*samples)
        .group_by(element.c.value)
    )
    return {str(label): int(n) for label, n in rows}


def label_enrichment(session: Session, run: Run, samples_total: int, subset_size: int) -> dict[str, LabelShare]:
    """Share of each label in the subset / its share in the run's pool (accepted samples not left out of it)."""
    dataset = _label_counts(session, in_pool(run))
    subset = _label_counts(session, [Sample.id.in_(kept_ids(run))])
    names = sorted(dataset)
    shares = enrichment_from_counts(
        np.array([dataset[n] for n in names], dtype=np.int64),
        samples_total,
        np.array([subset.get(n, 0) for n in names], dtype=np.int64),
        subset_size,
        names,
    )
    return {
        name: LabelShare(
            dataset_share=s["dataset_share"],
            subset_share=s["subset_share"],
            ratio=None if np.isnan(s["ratio"]) else s["ratio"],
        )
        for name, s in shares.items()
    }


def subset_figures(session: Session, run: Run) -> tuple[int, int, int, float]:
    """``(pool size, samples seen, subset size, subset ratio)`` over the curation epochs."""
    samples_total = session.scalar(select(func.count()).where(*in_pool(run)))
    seen, subset = session.execute(
        select(
            func.count(Decision.sample_id.distinct()),
            func.count(case((Decision.kept.is_(True), Decision.sample_id)).distinct()),
        ).where(*_curated(run))
    ).one()
    total = int(samples_total or 0)
    return total, int(seen), int(subset), (min(1.0, subset / total) if total else 0.0)


def run_compute_fraction(run: Run, ratio: float) -> float:
    config = run_config(run)
    return compute_fraction(ratio, config.epochs, config.curation_epochs)


def run_stats(session: Session, run: Run) -> RunStats:
    total, seen, subset, ratio = subset_figures(session, run)
    latest = edge_version(session, run, newest=True)
    first, last = curation_window(run)
    return RunStats(
        run_id=run.id,
        dataset_id=run.dataset_id,
        phase=run.phase,
        epoch=run.epoch,
        step=run.step,
        curation_epochs=list(range(first, last + 1)),
        samples_total=total,
        samples_seen=int(seen),
        subset_size=int(subset),
        subset_ratio=ratio,
        subset_complete=run.phase in ("subset", "done"),
        compute_fraction=run_compute_fraction(run, ratio),
        band_counts=band_counts(session, run),
        prototypes=prototype_stats(session, run, latest),
        prototype_drift=prototype_drift(edge_version(session, run, newest=False), latest),
        label_enrichment=label_enrichment(session, run, total, int(subset)),
        prototype_version=run.prototype_version,
        model_id=run.model_id,
        checkpoint_step=run.checkpoint_step,
        progress=dict(run.progress or {}),
        modes=run_modes(run, run_config(run)),
        error=RunError.model_validate(run.error) if run.error else None,
    )


def distance_histograms(
    session: Session, run: Run, bins: int = 49
) -> tuple[NDArray[np.float64], dict[int, NDArray[np.int64]]]:
    """Bin edges over [min d, max d] and, per band code, the decision count in each bin (one GROUP BY)."""
    lo, hi = session.execute(
        select(func.min(Decision.distance), func.max(Decision.distance)).where(*_curated(run))
    ).one()
    if lo is None:
        return np.linspace(0.0, 1.0, bins + 1), {}
    edges = np.linspace(float(lo), float(hi) + 1e-9, bins + 1)
    if is_postgres(session):
        bucket = func.least(func.width_bucket(Decision.distance, float(edges[0]), float(edges[-1]), bins), bins) - 1
    else:  # SQLite: CAST truncates toward zero, and d - lo >= 0
        width = float(edges[1] - edges[0])
        bucket = func.min(cast((Decision.distance - float(lo)) / width, Integer), bins - 1)
    rows = session.execute(
        select(Decision.band, bucket, func.count()).where(*_curated(run)).group_by(Decision.band, bucket)
    )
    hists: dict[int, NDArray[np.int64]] = {}
    for band, b, n in rows:
        hists.setdefault(int(band), np.zeros(bins, dtype=np.int64))[int(b)] += int(n)
    return edges, hists


def band_count_array(counts: BandCounts) -> NDArray[np.int64]:
    return np.array([getattr(counts, label) for label in BAND_LABELS], dtype=np.int64)


def subset_rows(
    session: Session, run: Run, chunk: int = 2000, offset: int = 0, limit: int | None = None
) -> Iterator[dict[str, Any]]:
    """The curated subset, one row per sample (its first kept decision), ordered by sample id, streamed (rows
    ``offset .. offset + limit`` of it when given): the export columns plus what the training formats carry (report,
    labels, patient, study, split)."""
    first = (
        select(
            Decision.sample_id,
            Decision.band,
            Decision.prototype,
            Decision.distance,
            Decision.epoch,
            Decision.step,
            func.row_number()
            .over(partition_by=Decision.sample_id, order_by=(Decision.epoch, Decision.step, Decision.id))
            .label("rank"),
        )
        .where(*_curated(run), Decision.kept.is_(True))
        .subquery()
    )
    stmt = (
        select(
            Sample.id,
            Sample.external_id,
            Sample.image_uri,
            first.c.band,
            first.c.prototype,
            first.c.distance,
            first.c.epoch,
            first.c.step,
            Sample.report,
            Sample.report_synthetic,
            Sample.labels,
            Sample.patient_id,
            Sample.study_id,
            Sample.split,
        )
        .join(first, first.c.sample_id == Sample.id)
        .where(first.c.rank == 1)
        .order_by(Sample.id)
        .offset(offset)
        .limit(limit)
        .execution_options(yield_per=chunk)
    )
    for row in session.execute(stmt):
        sample_id, external_id, image_uri, band, prototype, distance, epoch, step, *extra = row
        report, synthetic, labels, patient_id, study_id, split = extra
        yield {
            "sample_id": sample_id,
            "external_id": external_id,
            "image_uri": image_uri,
            "band": Band(band).label,
            "prototype": prototype,
            "distance": distance,
            "epoch": epoch,
            "step": step,
            "report": report,
            "report_synthetic": synthetic,
            "labels": list(labels or []),
            "patient_id": patient_id,
            "study_id": study_id,
            "split": split,
        }


def export_provenance(session: Session, run: Run) -> dict[str, Any]:
    """What an export needs to be explained and replayed: config, seed, model, prototypes, window."""
    first, last = curation_window(run)
    subset_size = session.scalar(select(func.count()).select_from(kept_ids(run).subquery()))
    return {
        "run_id": run.id,
        "dataset_id": run.dataset_id,
        "embedding_set_id": run.embedding_set_id,
        "config": run.config,
        "modes": run_modes(run, run_config(run)),
        "seed": run.seed,
        "model_id": run.model_id,
        "checkpoint_step": run.checkpoint_step,
        "prototype_version": run.prototype_version,
        "phase": run.phase,
        "subset_complete": run.phase in ("subset", "done"),
        "curation_epochs": list(range(first, last + 1)),
        "subset_size": int(subset_size or 0),
        "columns": list(EXPORT_COLUMNS),
        "exported_at": datetime.now(UTC).isoformat(),
    }

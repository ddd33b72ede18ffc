"""The runs list and a run's live figures (what the run page polls): SQL aggregates only, never a row per decision.

A run's figures change only when its phase, epoch, step or prototype version does, so the last answer per run is
kept in memory under that key: a page polling every few seconds costs one primary-key read while nothing moves.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

from sqlalchemy import ColumnElement, func, select
from sqlalchemy.orm import Session

from .. import stats
from ..curation import BAND_LABELS
from ..models import Dataset, Decision, Run, Sample
from ..runs.access import epoch_progress, in_pool, run_config

#: a label whose share of the run's pool is below this is marked rare on the run page
RARE_SHARE = 0.05
#: most points of the band-count timeline (steps are grouped into buckets beyond this)
TIMELINE_POINTS = 200

_TRUE = ("true", "1", "yes")


def _flag_conditions() -> dict[str, ColumnElement[bool]]:
    """The sample flags whose shares the run page shows, read from ``samples.meta`` (the synthetic set and the
    importers write them): near-duplicate follow-ups, and reports flagged as noisy or mismatched."""
    noise = func.lower(func.coalesce(Sample.meta["noise"].as_string(), ""))
    return {
        "near_duplicates": func.lower(func.coalesce(Sample.meta["near_duplicate"].as_string(), "")).in_(_TRUE),
        "flagged_reports": noise.not_in(("", "none")),
    }


def _state(run: Run, kind: str) -> tuple[Any, ...]:
    """What a run's figures depend on: they are recomputed only when one of these changes."""
    return (kind, run.id, run.created_at, run.phase, run.epoch, run.step, run.prototype_version, repr(run.error))


def run_row(session: Session, run: Run, dataset_name: str) -> dict[str, Any]:
    """One row of the runs list: dataset, phase, progress, subset ratio, compute fraction."""
    key = _state(run, "row")
    figures = _CACHE.get(key)
    if figures is None:
        figures = stats.subset_figures(session, run)
        _CACHE.put(key, figures)
    total, _, subset, ratio = figures
    size, done = epoch_progress(session, run)
    config = run_config(run)
    return {
        "id": run.id,
        "dataset": dataset_name,
        "dataset_id": run.dataset_id,
        "phase": run.phase,
        "epoch": run.epoch,
        "epochs": config.epochs,
        "step": run.step,
        "epoch_size": size,
        "epoch_done": done,
        "samples_total": total,
        "subset_size": subset,
        "subset_ratio": ratio,
        "compute_fraction": stats.run_compute_fraction(run, ratio),
        "error": run.error,
    }


def runs_list(session: Session) -> list[dict[str, Any]]:
    rows = session.execute(select(Run, Dataset.name).join(Dataset, Dataset.id == Run.dataset_id).order_by(Run.id))
    return [run_row(session, run, name) for run, name in rows]


def band_timeline(session: Session, run: Run) -> list[dict[str, Any]]:
    """Decisions per band for each curation step (grouped into at most ``TIMELINE_POINTS`` buckets per epoch),
    with the subset ratio as the epoch goes (kept so far in the epoch / the pool)."""
    first, last = stats.curation_window(run)
    window = [Decision.run_id == run.id, Decision.epoch >= first, Decision.epoch <= last]
    top = session.scalar(select(func.max(Decision.step)).where(*window)) or 0
    width = max(1, -(-int(top) // TIMELINE_POINTS))
    bucket = (Decision.step - 1) // width
    rows = session.execute(
        select(Decision.epoch, bucket, Decision.band, func.count(), func.count().filter(Decision.kept.is_(True)))
        .where(*window)
        .group_by(Decision.epoch, bucket, Decision.band)
        .order_by(Decision.epoch, bucket)
    )
    points: dict[tuple[int, int], dict[str, Any]] = {}
    for epoch, b, band, n, kept in rows:
        point = points.setdefault(
            (int(epoch), int(b)),
            {"epoch": int(epoch), "step": (int(b) + 1) * width, "kept": 0, **dict.fromkeys(BAND_LABELS, 0)},
        )
        point[BAND_LABELS[int(band)]] += int(n)
        point["kept"] += int(kept)
    pool = session.scalar(select(func.count()).where(*in_pool(run))) or 0
    running: dict[int, int] = {}
    for point in points.values():
        running[point["epoch"]] = running.get(point["epoch"], 0) + point.pop("kept")
        point["subset_ratio"] = min(1.0, running[point["epoch"]] / pool) if pool else 0.0
    return list(points.values())


def flag_shares(session: Session, run: Run) -> dict[str, dict[str, float | None]]:
    """Per flag: its share of the run's pool, of the subset, and their ratio (None where the pool has none)."""
    conditions = _flag_conditions()

    def counts(where: list[Any]) -> tuple[int, list[int]]:
        row = session.execute(
            select(func.count(), *(func.count().filter(c) for c in conditions.values())).where(*where)
        ).one()
        return int(row[0]), [int(n) for n in row[1:]]

    pool, in_pool_counts = counts(in_pool(run))
    subset, in_subset_counts = counts([*in_pool(run), Sample.id.in_(stats.kept_ids(run))])
    out: dict[str, dict[str, float | None]] = {}
    for name, d, s in zip(conditions, in_pool_counts, in_subset_counts, strict=True):
        dataset_share, subset_share = d / max(pool, 1), s / max(subset, 1)
        out[name] = {
            "dataset_share": dataset_share,
            "subset_share": subset_share,
            "ratio": subset_share / dataset_share if dataset_share else None,
        }
    return out


def live_figures(session: Session, run: Run) -> dict[str, Any]:
    """Everything the run page shows, as JSON (the page polls it while the run trains)."""
    key = _state(run, "page")
    cached = _CACHE.get(key)
    size, done = epoch_progress(session, run)  # moves with every acknowledged manifest: never cached
    if cached is None:
        cached = _figures(session, run)
        _CACHE.put(key, cached)
    return {**cached, "epoch_size": size, "epoch_done": done, "progress": dict(run.progress or {})}


def _figures(session: Session, run: Run) -> dict[str, Any]:
    summary = stats.run_stats(session, run)
    drift = summary.prototype_drift.per_prototype if summary.prototype_drift else []
    config = run_config(run)
    return {
        "run_id": run.id,
        "phase": run.phase,
        "epoch": run.epoch,
        "epochs": config.epochs,
        "curation_epochs": summary.curation_epochs,
        "step": run.step,
        "prototype_version": run.prototype_version,
        "error": run.error,
        "samples_total": summary.samples_total,
        "subset_size": summary.subset_size,
        "subset_ratio": summary.subset_ratio,
        "compute_fraction": summary.compute_fraction,
        "band_counts": summary.band_counts.model_dump(),
        "timeline": band_timeline(session, run),
        "prototypes": [
            {**p.model_dump(), "drift": drift[p.id] if p.id < len(drift) else None} for p in summary.prototypes
        ],
        "labels": [
            {**share.model_dump(), "name": name, "rare": share.dataset_share < RARE_SHARE}
            for name, share in sorted(summary.label_enrichment.items(), key=lambda item: item[1].dataset_share)
        ],
        "flags": flag_shares(session, run),
    }


class _Recent:
    """The last answers of a few keys (least recently used dropped), shared by the API's threads."""

    def __init__(self, size: int = 32) -> None:
        self.size, self.items, self.lock = size, OrderedDict[Any, Any](), threading.Lock()

    def get(self, key: Any) -> Any:
        with self.lock:
            if key in self.items:
                self.items.move_to_end(key)
            return self.items.get(key)

    def put(self, key: Any, value: Any) -> None:
        with self.lock:
            self.items[key] = value
            while len(self.items) > self.size:
                self.items.popitem(last=False)


_CACHE = _Recent()

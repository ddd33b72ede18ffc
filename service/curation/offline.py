"""Offline curation, before training: k-means on a warm-up sample, then band selection over random super-batches."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from .backend import Backend, CpuBackend
from .config import CurationConfig
from .dedup import dedup_keep
from .hierarchy import assign_finest, balanced_sample, hierarchical_kmeans
from .kmeans import init_prototypes
from .selection import Band, Selection, assign_rows, select_batch
from .target import TargetTally, select_toward, settle_exact, wanted_rows
from .validate import as_matrix

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class OfflineCuration:
    """Per-row outcome over the whole set, in input row order."""

    prototypes: NDArray[np.float32]
    prototype: NDArray[np.int64]
    distance: NDArray[np.float32]
    band: NDArray[np.int8]
    keep: NDArray[np.bool_]
    batch: NDArray[np.int64]  # super-batch (step) each row was selected in
    duplicate: NDArray[np.bool_] | None = None  # removed as a near-duplicate (dedup mode), else None
    modes: dict[str, Any] = field(default_factory=dict)  # each mode beyond the paper: parameters and outcome

    @property
    def subset_ratio(self) -> float:
        return float(self.keep.mean())

    def band_counts(self) -> dict[str, int]:
        counts = np.bincount(self.band, minlength=len(Band))
        return {b.label: int(counts[b]) for b in Band}


@dataclass(frozen=True)
class OfflineDraw:
    """The seeded draws of an offline pass: warm-up rows, the rows in super-batch order, canonical positions."""

    warmup: NDArray[np.int64]
    batches: NDArray[np.int64]
    position: NDArray[np.int64]  # of each row in the canonical order (dedup keeps the earliest of a group)


def offline_draw(n: int, config: CurationConfig, order: NDArray[np.integer] | None = None) -> OfflineDraw:
    """Warm-up sample and super-batch permutation from ``default_rng(seed)`` over canonical positions."""
    canonical = np.arange(n) if order is None else np.asarray(order, dtype=np.int64)
    if canonical.shape != (n,) or (order is not None and not np.array_equal(np.sort(canonical), np.arange(n))):
        raise ValueError(f"order must be a permutation of the {n} rows")
    rng = np.random.default_rng(config.seed)
    warmup = canonical[np.sort(rng.choice(n, size=min(n, config.warmup_samples), replace=False))]
    batches = canonical[rng.permutation(n)]
    position = np.empty(n, dtype=np.int64)
    position[canonical] = np.arange(n)
    return OfflineDraw(warmup, batches, position)


def offline_assignment(
    features: ArrayLike,
    config: CurationConfig,
    order: NDArray[np.integer] | None = None,
    backend: Backend | None = None,
) -> tuple[NDArray[np.float32], NDArray[np.int64], NDArray[np.int64]]:
    """The prototypes p_k ``curate_offline`` would make, every row's c_i under them, and canonical positions."""
    f = as_matrix("features", features)
    draw = offline_draw(len(f), config, order)
    prototypes = init_prototypes(f[draw.warmup], config.k, config.seed, config.kmeans_iterations)
    return prototypes, assign_rows(f, prototypes, backend), draw.position


def curate_offline(
    features: ArrayLike,
    config: CurationConfig,
    backend: Backend | None = None,
    progress: Progress | None = None,
    order: NDArray[np.integer] | None = None,
    patient: NDArray[np.int64] | None = None,
) -> OfflineCuration:
    """Curate fixed embeddings: prototypes from ``warmup_samples`` random rows, one pass of super-batches.

    Prototypes stay fixed: with no model in the loop the embeddings do not drift, so there is nothing to
    follow. Super-batch ``s`` uses sampler seed ``(config.seed, s)``; the last batch may be short.
    ``features`` may be float16 (rows are taken to float32 one super-batch at a time, never all at once).
    ``order`` lists the rows in their canonical order (by the ids they are keyed by; default: as given): the
    warm-up sample and the super-batches are drawn over positions in it, so the outcome does not depend on how
    the rows happen to be stored. ``progress(done, total)`` is called with ``done = 0`` once the prototypes
    exist, then after each batch. The modes beyond the paper (docs/MODES.md) run when the config turns them on;
    ``patient`` (integer codes, -1 unknown) is what ``dedup_same_patient`` compares.
    """
    backend_: Backend = backend or CpuBackend()
    f = as_matrix("features", features)
    n = len(f)
    draw = offline_draw(n, config, order)
    warmup, order, position = draw.warmup, draw.batches, draw.position
    prototypes = init_prototypes(f[warmup], config.k, config.seed, config.kmeans_iterations)
    modes = config.modes()
    eligible = np.ones(n, dtype=bool)
    if config.dedup_epsilon is not None:
        assigned = assign_rows(f, prototypes, backend_)
        eligible = dedup_keep(f, assigned, config.dedup_epsilon, position, patient, backend_)
        modes["dedup"] = {**modes["dedup"], "removed": int(n - eligible.sum())}
    controlled = config.target_ratio is not None and config.prototype_mode == "flat"
    tally = TargetTally(config.target_ratio or 0.0)

    prototype = np.empty(n, dtype=np.int64)
    distance = np.empty(n, dtype=np.float32)
    band = np.empty(n, dtype=np.int8)
    keep = np.empty(n, dtype=bool)
    batch = np.empty(n, dtype=np.int64)
    n_batches = -(-n // config.batch_size)
    if progress is not None:
        progress(0, n_batches)  # k-means is done: lets a caller time it apart from selection
    for step in range(n_batches):
        rows = order[step * config.batch_size : (step + 1) * config.batch_size]
        sel: Selection
        if controlled:
            wanted = wanted_rows(tally.target_ratio, tally.seen, tally.kept, len(rows))
            sel, plan = select_toward(
                f[rows], prototypes, config, (config.seed, step), wanted, backend_, eligible[rows]
            )
            tally.add(plan, len(rows), int(sel.keep.sum()))
        else:
            sel = select_batch(
                f[rows], prototypes, config, seed=(config.seed, step), backend=backend_, eligible=eligible[rows]
            )
        prototype[rows], distance[rows], band[rows], keep[rows] = (
            sel.prototype,
            sel.distance,
            sel.band,
            sel.keep,
        )
        batch[rows] = step
        if progress is not None:
            progress(step + 1, n_batches)
    if controlled:
        keep = _settle(keep, band, eligible, round(tally.target_ratio * n), (config.seed, n_batches), tally, modes)
    if config.prototype_mode == "hierarchical":
        size = round(config.target_ratio * n) if config.target_ratio is not None else int(keep.sum())
        keep = _balanced(f[warmup], f, config, size, eligible & (band != Band.OUTLIER), backend_, modes)
        if config.target_ratio is not None:  # the balanced sample, not the controller, sets the size here
            modes["target_ratio"] = {
                **modes["target_ratio"],
                "requested_size": size,
                "achieved_ratio": float(keep.mean()),
            }
    duplicate = None if config.dedup_epsilon is None else ~eligible
    return OfflineCuration(prototypes, prototype, distance, band, keep, batch, duplicate, modes)


def _settle(
    keep: NDArray[np.bool_],
    band: NDArray[np.int8],
    eligible: NDArray[np.bool_],
    size: int,
    seed: tuple[int, int],
    tally: TargetTally,
    modes: dict[str, Any],
) -> NDArray[np.bool_]:
    """Offline's exact size: the controller's last few rows of error settled on central rows (bands follow)."""
    settled, unsettled = settle_exact(
        keep, keep & (band == Band.CENTRAL_KEPT), eligible & (band == Band.CENTRAL_DROPPED), size, seed
    )
    flipped = settled != keep
    band[flipped & settled] = Band.CENTRAL_KEPT
    band[flipped & ~settled] = Band.CENTRAL_DROPPED
    tally.kept = int(settled.sum())
    modes["target_ratio"] = {**tally.report(), "requested_size": size, "settled_rows": int(flipped.sum())}
    modes["target_ratio"]["unsettled_rows"] = unsettled
    return settled


def _balanced(
    warmup: NDArray,
    f: NDArray,
    config: CurationConfig,
    size: int,
    eligible: NDArray[np.bool_],
    backend: Backend,
    modes: dict[str, Any],
) -> NDArray[np.bool_]:
    """The subset drawn by balanced sampling over hierarchical k-means clusters instead of the bands."""
    hierarchy = hierarchical_kmeans(warmup, config.levels, config.seed, config.kmeans_iterations)
    finest = assign_finest(f, hierarchy, backend)
    keep = balanced_sample(finest, hierarchy, size, config.seed, eligible)
    used = np.bincount(finest[keep], minlength=len(hierarchy.centroids[0]))
    modes["hierarchical"] = {
        **modes["hierarchical"],
        "size": int(keep.sum()),
        "finest_clusters_used": int((used > 0).sum()),
    }
    return keep

"""Offline curation, before training: k-means on a warm-up sample, then band selection over random super-batches."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from .backend import Backend, CpuBackend
from .config import CurationConfig
from .kmeans import init_prototypes
from .selection import Band, select_batch
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

    @property
    def subset_ratio(self) -> float:
        return float(self.keep.mean())

    def band_counts(self) -> dict[str, int]:
        counts = np.bincount(self.band, minlength=len(Band))
        return {b.label: int(counts[b]) for b in Band}


def curate_offline(
    features: ArrayLike,
    config: CurationConfig,
    backend: Backend | None = None,
    progress: Progress | None = None,
    order: NDArray[np.integer] | None = None,
) -> OfflineCuration:
    """Curate fixed embeddings: prototypes from ``warmup_samples`` random rows, one pass of super-batches.

    Prototypes stay fixed: with no model in the loop the embeddings do not drift, so there is nothing to
    follow. Super-batch ``s`` uses sampler seed ``(config.seed, s)``; the last batch may be short.
    ``features`` may be float16 (rows are taken to float32 one super-batch at a time, never all at once).
    ``order`` lists the rows in their canonical order (by the ids they are keyed by; default: as given): the
    warm-up sample and the super-batches are drawn over positions in it, so the outcome does not depend on how
    the rows happen to be stored. ``progress(done, total)`` is called with ``done = 0`` once the prototypes
    exist, then after each batch.
    """
    backend_: Backend = backend or CpuBackend()
    f = as_matrix("features", features)
    n = len(f)
    canonical = np.arange(n) if order is None else np.asarray(order, dtype=np.int64)
    if canonical.shape != (n,) or (order is not None and not np.array_equal(np.sort(canonical), np.arange(n))):
        raise ValueError(f"order must be a permutation of the {n} rows")
    rng = np.random.default_rng(config.seed)
    warmup = canonical[np.sort(rng.choice(n, size=min(n, config.warmup_samples), replace=False))]
    prototypes = init_prototypes(f[warmup], config.k, config.seed, config.kmeans_iterations)
    order = canonical[rng.permutation(n)]

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
        sel = select_batch(f[rows], prototypes, config, seed=(config.seed, step), backend=backend_)
        prototype[rows], distance[rows], band[rows], keep[rows] = (
            sel.prototype,
            sel.distance,
            sel.band,
            sel.keep,
        )
        batch[rows] = step
        if progress is not None:
            progress(step + 1, n_batches)
    return OfflineCuration(prototypes, prototype, distance, band, keep, batch)

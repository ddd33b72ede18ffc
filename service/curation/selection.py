"""CheXficient selection on one super-batch (docs/ENGINE.md), vectorised over rows and prototypes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum

import numpy as np
from numpy.typing import ArrayLike, NDArray

from .backend import Backend, CpuBackend
from .config import CurationConfig
from .groups import GroupIndex, grouped_quantiles, padded_buckets
from .samplers import density_rows, random_rows
from .validate import check_prototypes, float32_rows

#: rows per block of ``assign_rows``
ASSIGN_BLOCK_ROWS = 1 << 16
#: padding rows a Gram bucket may carry before a separate batched product is cheaper (at D ~ 1024)
BUCKET_PADDING_ROWS = 256


class Band(IntEnum):
    OUTLIER = 0  # d > t_out: dropped
    SUPPORT = 1  # t_sup < d <= t_out: kept
    CENTRAL_KEPT = 2  # d <= t_sup and chosen by the central sampler
    CENTRAL_DROPPED = 3  # d <= t_sup and not chosen

    @property
    def label(self) -> str:
        return self.name.lower()


BAND_LABELS: tuple[str, ...] = tuple(b.label for b in Band)


@dataclass(frozen=True)
class Selection:
    """Per-row outcome of ``select_batch``."""

    prototype: NDArray[np.int64]  # c_i
    distance: NDArray[np.float64]  # d_i = ||f_i - p_{c_i}||
    band: NDArray[np.int8]  # Band codes
    keep: NDArray[np.bool_]
    fallback: bool  # True when nothing was selected and the whole batch was kept

    @property
    def band_labels(self) -> NDArray[np.str_]:
        return np.asarray(BAND_LABELS)[self.band]

    def band_counts(self) -> dict[str, int]:
        counts = np.bincount(self.band, minlength=len(Band))
        return {label: int(c) for label, c in zip(BAND_LABELS, counts, strict=True)}


def nearest_prototypes(
    features: NDArray[np.float32],
    sq_norms: NDArray[np.float32],
    prototypes: NDArray[np.float32],
    backend: Backend,
) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
    """c_i = argmin_k ||f_i - p_k|| = argmax_k (f_i.p_k - ||p_k||^2 / 2) (ties: lowest k), and d_i."""
    proto_half_sq = np.vecdot(prototypes, prototypes) / 2
    score = backend.matmul(features, prototypes.T)
    score -= proto_half_sq
    assigned = np.argmax(score, axis=1)
    sq = sq_norms - 2 * score[np.arange(len(score)), assigned]
    return assigned.astype(np.int64), np.sqrt(np.maximum(sq, 0).astype(np.float64))


def assign_rows(features: ArrayLike, prototypes: ArrayLike, backend: Backend | None = None) -> NDArray[np.int64]:
    """c_i = argmin_k ||f_i - p_k|| for any rows and centroids (unit or not; float16 rows in float32 blocks)."""
    rows = np.asarray(features)
    p32 = np.ascontiguousarray(prototypes, dtype=np.float32)
    out = np.empty(len(rows), dtype=np.int64)
    for start in range(0, len(rows), ASSIGN_BLOCK_ROWS):
        f32, sq_norms = float32_rows("features", rows[start : start + ASSIGN_BLOCK_ROWS])
        out[start : start + len(f32)] = nearest_prototypes(f32, sq_norms, p32, backend or CpuBackend())[0]
    return out


def select_batch(
    features: ArrayLike,
    prototypes: ArrayLike,
    config: CurationConfig,
    seed: int | Sequence[int],
    backend: Backend | None = None,
    eligible: NDArray[np.bool_] | None = None,
) -> Selection:
    """Assign each f_i to its nearest p_k, band it by per-prototype quantiles of d, cap central rows.

    ``seed`` (an int or a sequence such as ``(run_seed, epoch, step)``) drives the sampler's randomness.
    ``eligible`` (default: all) marks the rows that may be kept: the others are banded like every row but never
    kept, and do not take central slots (near-duplicates, docs/MODES.md).
    """
    backend_: Backend = backend or CpuBackend()
    f32, sq_norms = float32_rows("features", features)
    p32 = check_prototypes(prototypes, width=f32.shape[1])
    if p32.shape[0] != config.k:
        raise ValueError(f"config.k is {config.k} but {p32.shape[0]} prototypes were given")
    k, m = config.k, config.max_central

    assigned, dist = nearest_prototypes(f32, sq_norms, p32, backend_)
    t_sup, t_out = grouped_quantiles(dist, assigned, k, (config.support_quantile, config.outlier_quantile))
    may_keep = np.ones(len(f32), dtype=bool) if eligible is None else np.asarray(eligible, dtype=bool)
    band = np.full(len(f32), Band.SUPPORT, dtype=np.int8)
    band[dist > t_out[assigned]] = Band.OUTLIER
    band[dist <= t_sup[assigned]] = Band.CENTRAL_DROPPED
    central = (band == Band.CENTRAL_DROPPED) & may_keep

    central_rows = np.flatnonzero(central)
    central_counts = np.bincount(assigned[central_rows], minlength=k)
    band[central & (central_counts[assigned] <= m)] = Band.CENTRAL_KEPT
    crowded = np.flatnonzero(central_counts > m)
    if len(crowded):
        draws = np.random.default_rng(seed).random(k if config.central_sampler == "fps" else len(f32))
        index = GroupIndex.build(central_rows, assigned[central_rows], k)
        if config.central_sampler == "fps":
            layout = index.layout(crowded)
            first = np.floor(draws[crowded] * layout.counts).astype(np.intp)
            band[backend_.farthest_points(f32, sq_norms, layout, m, first)] = Band.CENTRAL_KEPT
        elif config.central_sampler == "random":
            band[random_rows(index.layout(crowded), m, draws)] = Band.CENTRAL_KEPT
        else:
            # Gram blocks cost n_max^2 per group: pad groups of similar size together, not all to the largest.
            for bucket in padded_buckets(central_counts[crowded], BUCKET_PADDING_ROWS):
                layout = index.layout(crowded[bucket])
                band[density_rows(f32, sq_norms, layout, m, config.density_neighbors, backend_)] = Band.CENTRAL_KEPT

    keep = ((band == Band.SUPPORT) | (band == Band.CENTRAL_KEPT)) & may_keep
    # Unreachable with a valid config (each prototype's nearest member is central and m >= 1): the paper's guard.
    # Where near-duplicates were taken out, an empty batch is a legitimate outcome and the guard stays out of it.
    fallback = not keep.any() and bool(may_keep.all())
    if fallback:
        keep[:] = True
    return Selection(prototype=assigned, distance=dist, band=band, keep=keep, fallback=fallback)

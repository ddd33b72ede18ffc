"""Central-band samplers besides FPS (which lives in the backends), vectorised over padded groups.

Each returns the chosen row indices for the groups of a ``GroupLayout`` (every group has more than
``m`` members). Ties are broken towards the lowest row index, so results are deterministic.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from .backend import Backend
from .groups import GroupLayout


def density_rows(
    features: NDArray[np.float32],
    sq_norms: NDArray[np.float32],
    layout: GroupLayout,
    m: int,
    neighbors: int,
    backend: Backend,
) -> NDArray[np.intp]:
    """Per group, the ``m`` members with the largest mean distance to their ``neighbors`` nearest co-members."""
    member_sq = sq_norms[layout.rows]
    members = np.take(features, layout.rows, axis=0)
    gram = backend.matmul(members, members.transpose(0, 2, 1))  # [G, n_max, n_max]
    sq = member_sq[:, :, None] + member_sq[:, None, :] - 2 * gram
    dist = np.sqrt(np.maximum(sq, 0).astype(np.float64))
    n_max = layout.rows.shape[1]
    dist[:, np.arange(n_max), np.arange(n_max)] = np.inf
    dist[~np.broadcast_to(layout.valid[:, None, :], dist.shape)] = np.inf
    k_eff = np.minimum(neighbors, layout.counts - 1)  # groups here have > m >= 1 members, so k_eff >= 1
    nearest = np.sort(dist, axis=2)[:, :, :neighbors]
    in_k = np.arange(nearest.shape[2])[None, None, :] < k_eff[:, None, None]
    score = np.where(in_k, nearest, 0.0).sum(axis=2) / k_eff[:, None]
    score[~layout.valid] = -np.inf
    top = np.argsort(-score, axis=1, kind="stable")[:, :m]
    return np.take_along_axis(layout.rows, top, axis=1).ravel()


def random_rows(layout: GroupLayout, m: int, row_keys: NDArray[np.float64]) -> NDArray[np.intp]:
    """Per group, the ``m`` members with the smallest seeded uniform key (uniform sampling without replacement)."""
    keys = np.where(layout.valid, row_keys[layout.rows], np.inf)
    top = np.argsort(keys, axis=1, kind="stable")[:, :m]
    return np.take_along_axis(layout.rows, top, axis=1).ravel()

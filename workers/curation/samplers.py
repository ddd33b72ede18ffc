"""Central-band samplers, vectorised over all prototypes at once (one padded group per prototype).

Each returns the chosen row indices for the groups of a ``GroupLayout`` (every group has more than
``m`` members). Ties are broken towards the lowest row index, so results are deterministic.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from .backend import Backend
from .groups import GroupLayout


def _gram(members: NDArray[np.float32], backend: Backend) -> NDArray[np.float32]:
    return backend.matmul(members, members.transpose(0, 2, 1))  # [G, n_max, n_max]


def farthest_point_rows(
    features: NDArray[np.float32],
    sq_norms: NDArray[np.float32],
    layout: GroupLayout,
    m: int,
    start_u: NDArray[np.float64],
    backend: Backend,
) -> NDArray[np.intp]:
    """Seeded FPS per group: start at member ``floor(u_k * n_k)``, then repeatedly add argmax_j min_s ||f_j - f_s||."""
    n_groups = len(layout.counts)
    ar = np.arange(n_groups)
    member_sq = sq_norms[layout.rows]
    members = np.take(features, layout.rows, axis=0)  # [G, n_max, D]
    # A device backend computes the Gram blocks once rather than shipping the members every pass; on the
    # CPU m-1 batched matrix-vector passes (G*n*D each) are far cheaper than G*n^2*D for the Gram blocks.
    gram = _gram(members, backend) if backend.prefers_gram else None

    def half_sq_offset(position: NDArray[np.intp]) -> NDArray[np.float32]:
        """||f_j - f_s||^2 / 2 - ||f_j||^2 / 2 = ||f_s||^2 / 2 - f_j.f_s, for s the member at ``position``."""
        if gram is not None:
            dots = gram[ar, position]
        else:
            dots = backend.matmul(members, members[ar, position][:, :, None])[:, :, 0]
        return half_sq[ar, position][:, None] - dots

    # min_s ||f_j - f_s||^2 / 2 = ||f_j||^2 / 2 + min_s offset_js: only the offsets need a running minimum.
    half_sq = member_sq / 2
    min_offset = np.full(layout.rows.shape, np.inf, dtype=np.float32)
    taken = ~layout.valid  # padding is never a candidate
    chosen = np.empty((n_groups, m), dtype=np.intp)
    position = np.floor(start_u * layout.counts).astype(np.intp)
    for t in range(m):
        if t:
            score = np.where(taken, -np.inf, half_sq + min_offset)
            position = np.argmax(score, axis=1)  # first maximum = lowest row: the tie rule
        chosen[:, t] = position
        taken[ar, position] = True
        if t < m - 1:
            np.minimum(min_offset, half_sq_offset(position), out=min_offset)
    return layout.rows[ar[:, None], chosen].ravel()


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
    sq = member_sq[:, :, None] + member_sq[:, None, :] - 2 * _gram(np.take(features, layout.rows, axis=0), backend)
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

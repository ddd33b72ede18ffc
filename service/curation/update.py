"""Sinkhorn-balanced EMA of the prototypes after each curation step (docs/ENGINE.md)."""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

from .backend import Backend, CpuBackend
from .config import CurationConfig
from .validate import as_matrix, check_prototypes


def sinkhorn(scores: NDArray[np.float64], epsilon: float, iterations: int) -> NDArray[np.float64]:
    """Sinkhorn-Knopp on exp(S / eps): ``[n, K]`` transport plan with equal prototype mass, rows summing to 1."""
    # Subtracting the max only rescales exp(S/eps), which the normalisation removes; it prevents overflow.
    q = np.exp((scores - scores.max()) / epsilon).T  # [K, n]
    n_protos, n_rows = q.shape
    q /= q.sum()
    for _ in range(iterations):
        q /= q.sum(axis=1, keepdims=True)
        q /= n_protos
        q /= q.sum(axis=0, keepdims=True)
        q /= n_rows
    return (q * n_rows).T


def update_prototypes(
    prototypes: ArrayLike,
    kept_features: ArrayLike,
    config: CurationConfig,
    backend: Backend | None = None,
) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
    """p_k <- normalize(decay * p_k + (1 - decay) * m_k), m_k the mean of the F rows Sinkhorn assigns to k.

    Returns the new unit prototypes and the usage (rows assigned) of each prototype.
    """
    backend_: Backend = backend or CpuBackend()
    p = check_prototypes(prototypes)
    f = as_matrix("kept_features", kept_features, width=p.shape[1])
    p32 = np.ascontiguousarray(p, dtype=np.float32)
    f32 = np.ascontiguousarray(f, dtype=np.float32)
    scores = backend_.matmul(f32, p32.T).astype(np.float64)  # S = F P^T
    plan = sinkhorn(scores, config.sinkhorn_epsilon, config.sinkhorn_iterations)
    assignment = np.argmax(plan, axis=1)  # hard one-hot w_ik; ties go to the lowest k
    usage = np.bincount(assignment, minlength=len(p32)).astype(np.int64)
    one_hot = np.zeros((len(p32), len(f32)), dtype=np.float32)
    one_hot[assignment, np.arange(len(f32))] = 1.0
    sums = backend_.matmul(one_hot, f32).astype(np.float64)  # sum_i w_ik F_i
    means = sums / (usage[:, None] + 1e-8)
    moved = config.ema_decay * p32.astype(np.float64) + (1.0 - config.ema_decay) * means
    moved /= np.linalg.norm(moved, axis=1, keepdims=True)
    return moved.astype(np.float32), usage

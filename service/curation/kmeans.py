"""Warm-up prototypes: FAISS k-means on the curation features, centroids L2-normalised (docs/ENGINE.md)."""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

from .validate import as_matrix


def faiss_gpu_available() -> bool:
    import faiss

    return hasattr(faiss, "get_num_gpus") and faiss.get_num_gpus() > 0


def kmeans_centroids(
    features: ArrayLike, k: int, seed: int, iterations: int = 20, use_gpu: bool | None = None, redo: int = 1
) -> NDArray[np.float32]:
    """c_k of FAISS k-means (``iterations``, ``seed``, best of ``redo`` starts) over all rows, unnormalised."""
    import faiss

    f = as_matrix("features", features)
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    if k > len(f):
        raise ValueError(f"k={k} prototypes need at least {k} warm-up features, got {len(f)}")
    data = np.ascontiguousarray(f, dtype=np.float32)
    kmeans = faiss.Kmeans(
        data.shape[1],
        k,
        niter=iterations,
        seed=seed,
        nredo=redo,
        gpu=faiss_gpu_available() if use_gpu is None else use_gpu,
        min_points_per_centroid=1,
        max_points_per_centroid=max(256, -(-len(data) // k)),  # train on every row: no silent subsample
        verbose=False,
    )
    kmeans.train(data)
    assert kmeans.centroids is not None  # set by train()
    return np.asarray(kmeans.centroids, dtype=np.float32)


def init_prototypes(
    features: ArrayLike,
    k: int,
    seed: int,
    iterations: int = 20,
    use_gpu: bool | None = None,
) -> NDArray[np.float32]:
    """Prototypes version 1: k-means (``iterations``, ``seed``) over all rows, then p_k = c_k / ||c_k||."""
    centroids = kmeans_centroids(features, k, seed, iterations, use_gpu).astype(np.float64)
    norms = np.linalg.norm(centroids, axis=1, keepdims=True)
    if (norms == 0).any():
        raise ValueError("k-means produced a zero centroid: the features cancel out and cannot be prototypes")
    return (centroids / norms).astype(np.float32)

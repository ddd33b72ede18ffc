"""Balanced prototypes (ssl-data-curation's recipe): hierarchical k-means, then equal shares per cluster.

Level 1 clusters the rows into n_1 centroids; level l + 1 clusters level l's centroids into n_{l+1}. Sampling
splits the budget evenly over the top clusters (a cluster short of its share gives the rest to the others), then
each cluster's share evenly over its children, down to the finest clusters, which give their rows in seeded
random order (docs/MODES.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from .backend import Backend
from .kmeans import kmeans_centroids
from .selection import assign_rows
from .target import water_level

#: k-means starts per level, the best (lowest inertia) kept: one bad start can merge small modes into big ones
KMEANS_STARTS = 10


@dataclass(frozen=True)
class Hierarchy:
    """Centroids of every level (finest first) and, for each level above the finest, the parent of each child."""

    centroids: list[NDArray[np.float32]]
    parents: list[NDArray[np.int64]]  # parents[l][c]: the level l + 1 cluster of level l cluster c

    def clusters_at(self, finest: NDArray[np.int64], level: int) -> NDArray[np.int64]:
        """The level-``level`` cluster of rows whose finest cluster is ``finest``."""
        out = finest
        for parent in self.parents[:level]:
            out = parent[out]
        return out


def hierarchical_kmeans(features: NDArray, levels: tuple[int, ...], seed: int, iterations: int) -> Hierarchy:
    """k-means of the rows into n_1 clusters, then of each level's centroids into the next level's n_{l+1}."""
    points = np.ascontiguousarray(features, dtype=np.float32)
    centroids, parents = [], []
    for depth, n_clusters in enumerate(levels):
        if n_clusters > len(points):
            raise ValueError(f"level {depth + 1} asks for {n_clusters} clusters of {len(points)} points")
        c = kmeans_centroids(points, n_clusters, seed + depth, iterations, redo=KMEANS_STARTS)
        if depth:
            parents.append(assign_rows(points, c))
        centroids.append(c)
        points = c
    return Hierarchy(centroids, parents)


def assign_finest(features: NDArray, hierarchy: Hierarchy, backend: Backend | None = None) -> NDArray[np.int64]:
    """c_i at the finest level (features may be float16)."""
    return assign_rows(features, hierarchy.centroids[0], backend)


def allocate(sizes: NDArray[np.int64], budget: int, rng: np.random.Generator) -> NDArray[np.int64]:
    """a_g = min(n_g, m) for the water level m, plus one for seeded groups still above m until sum a_g = budget."""
    budget = min(budget, int(sizes.sum()))
    m = water_level(sizes, budget)
    alloc = np.minimum(sizes, m)
    room = np.flatnonzero(sizes > m)
    extra = budget - int(alloc.sum())  # < len(room), else m + 1 would also fit
    alloc[rng.choice(room, size=extra, replace=False)] += 1
    return alloc


def balanced_sample(
    finest: NDArray[np.int64],
    hierarchy: Hierarchy,
    size: int,
    seed: int,
    eligible: NDArray[np.bool_] | None = None,
) -> NDArray[np.bool_]:
    """Exactly min(size, #eligible) rows, split evenly over clusters from the top level down."""
    rng = np.random.default_rng(seed)
    may = np.ones(len(finest), dtype=bool) if eligible is None else eligible
    n_levels = len(hierarchy.centroids)
    sizes = [
        np.bincount(hierarchy.clusters_at(finest[may], level), minlength=len(hierarchy.centroids[level]))
        for level in range(n_levels)
    ]
    alloc = allocate(sizes[-1], size, rng)
    for level in range(n_levels - 2, -1, -1):
        parent = hierarchy.parents[level]
        child_alloc = np.zeros(len(parent), dtype=np.int64)
        for p in np.flatnonzero(alloc):
            children = np.flatnonzero(parent == p)
            child_alloc[children] = allocate(sizes[level][children], int(alloc[p]), rng)
        alloc = child_alloc
    # finest level: the first alloc[c] eligible rows of cluster c in a seeded random order
    keys = np.where(may, rng.random(len(finest)), np.inf)
    order = np.lexsort((keys, finest))
    counts = np.bincount(finest, minlength=len(alloc))
    rank = np.empty(len(finest), dtype=np.int64)
    rank[order] = np.arange(len(finest)) - np.repeat(np.cumsum(counts) - counts, counts)
    return may & (rank < alloc[finest])

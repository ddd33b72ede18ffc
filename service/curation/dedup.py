"""Near-duplicate removal (SemDeDup's rule): within a prototype, f_i.f_j >= 1 - eps makes i and j duplicates.

Duplicates link rows into groups (connected components); each group keeps exactly one row, the one with the
lowest priority (offline: its canonical position, i.e. the earliest study). Online, rows of the subset so far
(a bounded memory of the latest kept rows) join the graph already kept, so a group touching them keeps none of
the batch's rows (docs/MODES.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from .backend import Backend, CpuBackend
from .groups import GroupIndex

#: rows per side of one block of the within-prototype Gram matrix (64 MB of float32 scores)
PAIR_BLOCK_ROWS = 4096
#: the same patient id marks a patient; this one marks "unknown", which matches no one
NO_PATIENT = -1


def patient_codes(patient_ids: Sequence[str | None]) -> NDArray[np.int64]:
    """Integer codes of patient ids, equal ids equal codes; None or "" is ``NO_PATIENT``."""
    named = np.asarray([p or "" for p in patient_ids], dtype=str)
    _, codes = np.unique(named, return_inverse=True)
    return np.where(named == "", NO_PATIENT, codes).astype(np.int64)


@dataclass(frozen=True)
class DuplicatePairs:
    """Pairs i < j of one prototype with their cosine s_ij = f_i.f_j, sorted by i then j."""

    i: NDArray[np.int64]
    j: NDArray[np.int64]
    similarity: NDArray[np.float32]

    def at(self, epsilon: float) -> DuplicatePairs:
        """The pairs that count at a smaller (or equal) ``epsilon``: s_ij >= 1 - eps."""
        hit = self.similarity >= np.float32(1.0 - epsilon)
        return DuplicatePairs(self.i[hit], self.j[hit], self.similarity[hit])


def duplicate_pairs(
    features: NDArray[np.floating],
    prototype: NDArray[np.int64],
    epsilon: float,
    patient: NDArray[np.int64] | None = None,
    backend: Backend | None = None,
) -> DuplicatePairs:
    """All i < j with c_i = c_j and f_i.f_j >= 1 - eps (and, given ``patient``, the same known patient)."""
    # unit rows expected; each prototype's Gram matrix is computed in blocks of PAIR_BLOCK_ROWS a side
    backend_: Backend = backend or CpuBackend()
    f = features  # float16 stays float16: blocks are taken to float32 one at a time
    labels = np.asarray(prototype, dtype=np.int64)
    threshold = np.float32(1.0 - epsilon)
    n_groups = int(labels.max(initial=-1)) + 1
    index = GroupIndex.build(np.arange(len(f)), labels, n_groups)
    found: list[tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.float32]]] = []
    for g in np.flatnonzero(index.counts >= 2):
        members = np.sort(index.rows[index.starts[g] : index.starts[g] + index.counts[g]])
        for a in range(0, len(members), PAIR_BLOCK_ROWS):
            rows_a = members[a : a + PAIR_BLOCK_ROWS]
            for b in range(a, len(members), PAIR_BLOCK_ROWS):
                rows_b = members[b : b + PAIR_BLOCK_ROWS]
                block_a = np.asarray(f[rows_a], dtype=np.float32)
                block_b = np.ascontiguousarray(np.asarray(f[rows_b], dtype=np.float32).T)
                sim = backend_.matmul(block_a, block_b)
                hit = sim >= threshold
                if a == b:
                    hit &= np.triu(np.ones_like(hit), k=1)
                ia, jb = np.nonzero(hit)
                found.append((rows_a[ia], rows_b[jb], sim[ia, jb]))
    i, j, s = (np.concatenate(parts) for parts in zip(*found, strict=True)) if found else _no_pairs()
    if patient is not None:
        same = (patient[i] == patient[j]) & (patient[i] != NO_PATIENT)
        i, j, s = i[same], j[same], s[same]
    order = np.lexsort((j, i))
    return DuplicatePairs(i[order].astype(np.int64), j[order].astype(np.int64), s[order].astype(np.float32))


def _no_pairs() -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.float32]]:
    return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float32)


def duplicate_groups(n: int, pairs: DuplicatePairs) -> NDArray[np.int64]:
    """g_i: the connected component of row i in the duplicate graph (rows without pairs are groups of one)."""
    graph = coo_matrix((np.ones(len(pairs.i), dtype=np.int8), (pairs.i, pairs.j)), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    return labels.astype(np.int64)


def one_per_group(groups: NDArray[np.int64], priority: NDArray[np.integer]) -> NDArray[np.bool_]:
    """True for the row of lowest priority in each group (ties: the lowest row): exactly one per group."""
    order = np.lexsort((np.arange(len(groups)), priority, groups))
    first = np.ones(len(order), dtype=bool)
    first[1:] = groups[order][1:] != groups[order][:-1]
    keep = np.zeros(len(groups), dtype=bool)
    keep[order[first]] = True
    return keep


def dedup_keep(
    features: NDArray[np.floating],
    prototype: NDArray[np.int64],
    epsilon: float,
    priority: NDArray[np.integer] | None = None,
    patient: NDArray[np.int64] | None = None,
    backend: Backend | None = None,
) -> NDArray[np.bool_]:
    """Offline rule: True for the one row each duplicate group keeps (lowest ``priority``, default the row index)."""
    n = len(features)
    pairs = duplicate_pairs(features, prototype, epsilon, patient, backend)
    rank = np.arange(n) if priority is None else np.asarray(priority)
    return one_per_group(duplicate_groups(n, pairs), rank)


def dedup_against_memory(
    features: NDArray[np.float32],
    prototype: NDArray[np.int64],
    memory: NDArray[np.float32],
    memory_prototype: NDArray[np.int64],
    epsilon: float,
    patient: NDArray[np.int64] | None = None,
    memory_patient: NDArray[np.int64] | None = None,
    backend: Backend | None = None,
) -> NDArray[np.bool_]:
    """Online rule: one eligible batch row per new group, none in a group with a row of the subset so far."""
    n_mem = len(memory)
    both = np.concatenate([memory, features]).astype(np.float32, copy=False) if n_mem else features
    labels = np.concatenate([memory_prototype, prototype]) if n_mem else prototype
    patients = None
    if patient is not None:
        known = memory_patient if memory_patient is not None else np.full(n_mem, NO_PATIENT, dtype=np.int64)
        patients = np.concatenate([known, patient]) if n_mem else patient
    pairs = duplicate_pairs(both, labels, epsilon, patients, backend)
    groups = duplicate_groups(len(both), pairs)
    keep = one_per_group(groups, np.arange(len(both)))  # memory rows come first: a group with one keeps it
    return keep[n_mem:] & ~np.isin(groups[n_mem:], groups[:n_mem])


@dataclass(frozen=True)
class SweepPoint:
    """What one eps would do: duplicate pairs, rows removed, groups with more than one row, borderline examples."""

    epsilon: float
    pairs: int
    removed: int
    groups: int
    examples: list[tuple[int, int, float]]  # (i, j, s_ij) of the least similar pairs that still count


def epsilon_sweep(
    features: NDArray[np.floating],
    prototype: NDArray[np.int64],
    epsilons: list[float],
    patient: NDArray[np.int64] | None = None,
    examples: int = 3,
    backend: Backend | None = None,
) -> list[SweepPoint]:
    """For each eps: the pairs with s_ij >= 1 - eps and the rows the offline rule would remove (n - #groups)."""
    n = len(features)
    widest = duplicate_pairs(features, prototype, max(epsilons), patient, backend)
    points = []
    for eps in sorted(epsilons):
        pairs = widest.at(eps)
        groups = duplicate_groups(n, pairs)
        sizes = np.bincount(groups)
        border = np.argsort(pairs.similarity, kind="stable")[:examples]
        shown = [(int(pairs.i[b]), int(pairs.j[b]), float(pairs.similarity[b])) for b in border]
        points.append(SweepPoint(eps, len(pairs.i), n - len(sizes), int((sizes > 1).sum()), shown))
    return points

"""A plain per-prototype loop implementing the selection and the update rules
(docs/ENGINE.md) literally, in float64, for checking the engine.

It shares no code with the engine (``service.curation``); only the documented random stream is mirrored
(FPS starts: ``rng.random(K)``, member ``floor(u_k * n_k)``; random sampler: ``rng.random(B)`` row keys).
"""

from __future__ import annotations

import numpy as np

OUTLIER, SUPPORT, CENTRAL_KEPT, CENTRAL_DROPPED = 0, 1, 2, 3


def reference_select(features, prototypes, *, q_sup, q_out, max_central, sampler, neighbors, seed):
    f = np.asarray(features, dtype=np.float64)
    p = np.asarray(prototypes, dtype=np.float64)
    n_rows, k = len(f), len(p)
    dist_all = np.array([[np.linalg.norm(f[i] - p[j]) for j in range(k)] for i in range(n_rows)])
    assigned = np.argmin(dist_all, axis=1)
    dist = dist_all[np.arange(n_rows), assigned]
    band = np.full(n_rows, -1)
    rng = np.random.default_rng(seed)
    draws = None
    for proto in range(k):
        members = [i for i in range(n_rows) if assigned[i] == proto]
        if not members:
            continue
        d = dist[members]
        t_out = np.quantile(d, q_out)
        t_sup = np.quantile(d, q_sup)
        central = []
        for i in members:
            if dist[i] > t_out:
                band[i] = OUTLIER
            elif dist[i] > t_sup:
                band[i] = SUPPORT
            else:
                central.append(i)
                band[i] = CENTRAL_DROPPED
        if len(central) <= max_central:
            chosen = central
        else:
            if draws is None:  # the engine draws once, for all prototypes, when the first one is crowded
                draws = rng.random(k) if sampler == "fps" else rng.random(n_rows)
            chosen = _sample(f, central, max_central, sampler, neighbors, draws, proto)
        for i in chosen:
            band[i] = CENTRAL_KEPT
    keep = (band == SUPPORT) | (band == CENTRAL_KEPT)
    if not keep.any():
        keep[:] = True
    return assigned, dist, band, keep


def _sample(f, central, m, sampler, neighbors, draws, proto):
    if sampler == "fps":
        return reference_fps(f[central], m, int(np.floor(draws[proto] * len(central))), central)
    if sampler == "random":
        return sorted(central, key=lambda i: (draws[i], i))[:m]
    scores = []
    for i in central:
        others = sorted(np.linalg.norm(f[i] - f[j]) for j in central if j != i)
        scores.append(np.mean(others[: min(neighbors, len(others))]))
    ranked = sorted(range(len(central)), key=lambda a: (-scores[a], central[a]))
    return [central[a] for a in ranked[:m]]


def reference_fps(points, m, start, ids):
    """Farthest-point sampling: a Python loop over picks, ties to the lowest index."""
    chosen = [start]
    while len(chosen) < m:
        best, best_d = None, -1.0
        for a in range(len(points)):
            if a in chosen:
                continue
            d = min(np.linalg.norm(points[a] - points[c]) for c in chosen)
            if d > best_d:
                best, best_d = a, d
        chosen.append(best)
    return [ids[a] for a in chosen]


def reference_update(prototypes, kept, *, decay, epsilon, iterations):
    """The Sinkhorn-balanced EMA update with an explicit per-prototype loop for the means."""
    p = np.asarray(prototypes, dtype=np.float64)
    f = np.asarray(kept, dtype=np.float64)
    q = np.exp(f @ p.T / epsilon).T
    q /= q.sum()
    k, n = q.shape
    for _ in range(iterations):
        q /= q.sum(axis=1, keepdims=True) * k
        q /= q.sum(axis=0, keepdims=True) * n
    assignment = np.argmax(q.T * n, axis=1)
    new = []
    usage = []
    for proto in range(k):
        rows = f[assignment == proto]
        usage.append(len(rows))
        mean = rows.sum(axis=0) / (len(rows) + 1e-8)
        moved = decay * p[proto] + (1 - decay) * mean
        new.append(moved / np.linalg.norm(moved))
    return np.array(new), np.array(usage)

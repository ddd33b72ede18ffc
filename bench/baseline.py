"""The straightforward implementation the engine is measured against (budget P1).

A per-prototype Python loop in torch, as the authors' release does it: ``torch.cdist`` to the prototypes,
``torch.quantile`` per prototype, and a Python farthest-point loop over each crowded central band; the
prototype update loops over prototypes for the means. Same semantics and the same FPS starts as the engine.
"""

from __future__ import annotations

import numpy as np
import torch


def loop_select(features: torch.Tensor, prototypes: torch.Tensor, starts_u: np.ndarray,
                q_sup: float = 0.85, q_out: float = 0.95, max_central: int = 10) -> torch.Tensor:
    dist, assigned = torch.cdist(features, prototypes).min(dim=1)
    keep = torch.zeros(len(features), dtype=torch.bool)
    for k in range(prototypes.shape[0]):
        idx = torch.nonzero(assigned == k).flatten()
        if len(idx) == 0:
            continue
        d = dist[idx]
        t_out, t_sup = torch.quantile(d, q_out), torch.quantile(d, q_sup)
        keep[idx[(d > t_sup) & (d <= t_out)]] = True
        central = idx[d <= t_sup]
        if len(central) <= max_central:
            keep[central] = True
            continue
        points = features[central]
        pick = int(np.floor(starts_u[k] * len(central)))
        chosen = [pick]
        min_d = torch.norm(points - points[pick], dim=1)
        min_d[pick] = -1
        for _ in range(max_central - 1):
            pick = int(torch.argmax(min_d))
            chosen.append(pick)
            min_d = torch.minimum(min_d, torch.norm(points - points[pick], dim=1))
            min_d[chosen] = -1
        keep[central[chosen]] = True
    return keep


def loop_update(prototypes: torch.Tensor, kept: torch.Tensor, decay: float = 0.9,
                epsilon: float = 0.5, iterations: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    q = torch.exp(kept @ prototypes.T / epsilon).T
    q /= q.sum()
    k, n = q.shape
    for _ in range(iterations):
        q /= q.sum(dim=1, keepdim=True) * k
        q /= q.sum(dim=0, keepdim=True) * n
    assignment = torch.argmax(q, dim=0)
    new = prototypes.clone()
    usage = torch.zeros(k, dtype=torch.long)
    for proto in range(k):
        rows = kept[assignment == proto]
        usage[proto] = len(rows)
        mean = rows.sum(dim=0) / (len(rows) + 1e-8)
        new[proto] = decay * prototypes[proto] + (1 - decay) * mean
    return new / new.norm(dim=1, keepdim=True), usage

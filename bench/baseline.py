"""The straightforward implementation the engine is measured against (budget P1).

It has the structure of the authors' release (``CheXficient._select_samples``): ``torch.cdist`` to the
prototypes, one loop over prototypes taking ``torch.quantile`` of the masked distances for the bands, a
second loop capping each crowded central band with a Python farthest-point loop; the prototype update
loops over prototypes for the weighted means. Written here from that description, with the engine's FPS
start (``floor(u_k * n_k)``) so the keep masks can be compared. It runs on the device of its tensors.
"""

from __future__ import annotations

import numpy as np
import torch


def loop_select(
    features: torch.Tensor,
    prototypes: torch.Tensor,
    starts_u: np.ndarray,
    q_sup: float = 0.85,
    q_out: float = 0.95,
    max_central: int = 10,
) -> torch.Tensor:
    min_dist, cluster = torch.cdist(features, prototypes).min(dim=1)
    outlier = torch.zeros_like(min_dist, dtype=torch.bool)
    support = torch.zeros_like(min_dist, dtype=torch.bool)
    central = torch.zeros_like(min_dist, dtype=torch.bool)
    for k in range(prototypes.shape[0]):
        mask = cluster == k
        if mask.sum() == 0:
            continue
        t_out = torch.quantile(min_dist[mask], q_out)
        t_sup = torch.quantile(min_dist[mask], q_sup)
        outlier[mask] = min_dist[mask] > t_out
        support[mask] = (min_dist[mask] > t_sup) & (min_dist[mask] <= t_out)
        central[mask] = min_dist[mask] <= t_sup
    kept_central = torch.zeros_like(central)
    for k in range(prototypes.shape[0]):
        idx = ((cluster == k) & central).nonzero(as_tuple=True)[0]
        if idx.numel() == 0:
            continue
        if idx.numel() <= max_central:
            kept_central[idx] = True
            continue
        chosen = farthest_point_sampling(features[idx], max_central, int(np.floor(starts_u[k] * idx.numel())))
        kept_central[idx[chosen]] = True
    return support | kept_central


def farthest_point_sampling(x: torch.Tensor, n_samples: int, start: int) -> torch.Tensor:
    selected = [start]
    dists = torch.full((x.shape[0],), float("inf"), device=x.device)
    for _ in range(1, n_samples):
        dists = torch.minimum(dists, torch.norm(x - x[selected[-1]].unsqueeze(0), dim=1))
        selected.append(int(torch.argmax(dists).item()))
    return torch.tensor(selected, device=x.device)


def loop_update(
    prototypes: torch.Tensor,
    kept: torch.Tensor,
    decay: float = 0.9,
    epsilon: float = 0.5,
    iterations: int = 3,
) -> tuple[torch.Tensor, torch.Tensor]:
    q = torch.exp(kept @ prototypes.T / epsilon).T
    q /= q.sum()
    k, n = q.shape
    for _ in range(iterations):
        q /= q.sum(dim=1, keepdim=True) * k
        q /= q.sum(dim=0, keepdim=True) * n
    weights = torch.nn.functional.one_hot(torch.argmax(q, dim=0), k).float()
    new = prototypes.clone()
    for proto in range(k):
        w = weights[:, proto].unsqueeze(1)
        mean = (w * kept).sum(dim=0) / (w.sum() + 1e-8)
        new[proto] = decay * prototypes[proto] + (1 - decay) * mean
    return new / new.norm(dim=1, keepdim=True), weights.sum(0)

"""A cheap stand-in for training on a curated subset: linear image and report adapters, trained CLIP-style.

The synthetic embeddings have no images or reports to train the tiny model on, but each row is an image half u and
a report half v drawn around per-finding centres (independent directions for u and v). Two linear maps
W_u, W_v (half -> ``width``) trained with the symmetric InfoNCE loss on a subset's (u, v) pairs learn to bring a
finding's images next to its reports; rare findings with few pairs, and mismatched pairs, are what a subset
changes. Zero-shot: a test image scores each finding by cos(W_u u, W_v t_c), with t_c the mean report half of
that finding in a separate prompt set (the same for every arm). Every arm trains the same number of steps.
"""

from __future__ import annotations

import numpy as np
import torch
from numpy.typing import NDArray
from sklearn.metrics import roc_auc_score

from service.synth.embeddings import SyntheticEmbeddings


def halves(features: NDArray) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """u / ||u|| and v / ||v|| back from f = normalize(concat(u / ||u||, v / ||v||))."""
    f = np.asarray(features, dtype=np.float32)
    half = f.shape[1] // 2
    u, v = f[:, :half], f[:, half:]
    return u / np.linalg.norm(u, axis=1, keepdims=True), v / np.linalg.norm(v, axis=1, keepdims=True)


def train_adapters(
    u: NDArray[np.float32], v: NDArray[np.float32], seed: int, steps: int, width: int = 64, batch: int = 256
) -> tuple[torch.nn.Linear, torch.nn.Linear]:
    """W_u, W_v by Adam on the symmetric InfoNCE loss over random batches of the pairs (temperature 0.07)."""
    torch.set_num_threads(1)  # tiny products: one thread is ~10x faster than two on the shared 2-core box
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    wu, wv = torch.nn.Linear(u.shape[1], width, bias=False), torch.nn.Linear(v.shape[1], width, bias=False)
    opt = torch.optim.Adam([*wu.parameters(), *wv.parameters()], lr=3e-3)
    tu, tv = torch.from_numpy(u), torch.from_numpy(v)
    for _ in range(steps):
        idx = torch.randperm(len(tu), generator=gen)[:batch]
        a = torch.nn.functional.normalize(wu(tu[idx]), dim=1)
        b = torch.nn.functional.normalize(wv(tv[idx]), dim=1)
        logits = a @ b.T / 0.07
        target = torch.arange(len(idx))
        loss = torch.nn.functional.cross_entropy(logits, target) + torch.nn.functional.cross_entropy(logits.T, target)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return wu, wv


def zero_shot_auc(
    train: SyntheticEmbeddings,
    keep: NDArray[np.bool_],
    test: SyntheticEmbeddings,
    prompts: SyntheticEmbeddings,
    rare: int,
    seed: int,
    steps: int = 400,
) -> dict[str, float]:
    """Macro AUC over the findings with test positives, and the mean over the ``rare`` rarest (by training share)."""
    u, v = halves(train.features[keep])
    wu, wv = train_adapters(u, v, seed, steps)
    tu, _ = halves(test.features)
    _, pv = halves(prompts.features)
    n_findings = len(train.names)
    text = np.stack([pv[prompts.finding == c].mean(axis=0) for c in range(n_findings)]).astype(np.float32)
    with torch.no_grad():
        img = torch.nn.functional.normalize(wu(torch.from_numpy(tu)), dim=1)
        txt = torch.nn.functional.normalize(wv(torch.from_numpy(text)), dim=1)
        scores = (img @ txt.T).numpy()
    aucs = {
        c: float(roc_auc_score(test.finding == c, scores[:, c]))
        for c in range(n_findings)
        if 0 < (test.finding == c).sum() < len(test.finding)
    }
    rarest = [c for c in np.argsort(train.prevalence, kind="stable")[:rare] if c in aucs]
    return {"macro_auc": float(np.mean(list(aucs.values()))), "rare_auc": float(np.mean([aucs[c] for c in rarest]))}

"""A seeded long-tailed, redundant and slightly noisy embedding set: what curation is supposed to fix.

Each sample belongs to one finding; finding prevalence falls geometrically from ~40 % to ~0.15 %. Image
and report embeddings are drawn around per-finding centres that share a common component; a share of rows
are near-duplicate follow-up studies of an earlier row, and a few percent are mismatched pairs (the report
of another finding).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from ..curation import curation_features

FINDINGS = (
    "no finding",
    "support devices",
    "pleural effusion",
    "cardiomegaly",
    "atelectasis",
    "consolidation",
    "edema",
    "nodule",
    "pneumothorax",
    "fracture",
    "mass",
    "pneumomediastinum",
)


@dataclass(frozen=True)
class SyntheticEmbeddings:
    features: NDArray[np.float32]  # f = normalize(concat(u, v)), [n, 2 * half_dim]
    finding: NDArray[np.int64]  # index into ``names``
    duplicate_of: NDArray[np.int64]  # earlier row this one is a follow-up of, or -1
    noisy: NDArray[np.bool_]  # report swapped for another finding's
    names: tuple[str, ...]

    @property
    def prevalence(self) -> NDArray[np.float64]:
        return np.bincount(self.finding, minlength=len(self.names)) / len(self.finding)


def finding_prevalence(n_findings: int, head: float = 0.4) -> NDArray[np.float64]:
    """Geometric prevalence with ratio r chosen so the most common finding has share ``head``."""
    ratios = np.linspace(0.3, 0.99, 2000)
    heads = (1 - ratios) / (1 - ratios**n_findings)
    r = ratios[np.argmin(np.abs(heads - head))]
    p = r ** np.arange(n_findings)
    return p / p.sum()


def _unit(x: NDArray) -> NDArray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def long_tailed_embeddings(
    n: int,
    dim: int = 1024,
    seed: int = 0,
    duplicate_rate: float = 0.3,
    noise_rate: float = 0.03,
    spread: float = 0.9,
    finding_offset: float = 0.5,
    centre_seed: int | None = None,
) -> SyntheticEmbeddings:
    """``n`` rows of width ``dim`` (image and report halves of ``dim // 2`` each).

    ``centre_seed`` draws the finding centres apart from the rows: chunks with different ``seed`` and one
    ``centre_seed`` are parts of one large set (near-duplicates then stay within their chunk). Without it
    everything comes from ``seed``, as before.
    """
    if n < 1 or dim < 2 or dim % 2:
        raise ValueError(f"need n >= 1 and an even dim >= 2, got n={n}, dim={dim}")
    if not (0 <= duplicate_rate < 1 and 0 <= noise_rate < 1):
        raise ValueError("duplicate_rate and noise_rate must be in [0, 1)")
    rng = np.random.default_rng(seed)
    half = dim // 2
    names = FINDINGS
    k = len(names)
    # Every chest film (and report) shares most of its content: finding centres are a common centre plus an
    # offset of norm ``finding_offset``, not unrelated directions, so findings neighbour each other.
    centre_rng = rng if centre_seed is None else np.random.default_rng(centre_seed)
    common_u, common_v = _unit(centre_rng.standard_normal((2, half)))
    centre_u = _unit(common_u + finding_offset * _unit(centre_rng.standard_normal((k, half))))
    centre_v = _unit(common_v + finding_offset * _unit(centre_rng.standard_normal((k, half))))
    finding = rng.choice(k, size=n, p=finding_prevalence(k))
    # spread / sqrt(half) per coordinate puts members at distance ~spread from their centre
    scale = spread / np.sqrt(half)
    u = centre_u[finding] + scale * rng.standard_normal((n, half))
    v = centre_v[finding] + scale * rng.standard_normal((n, half))

    duplicate_of = np.full(n, -1, dtype=np.int64)
    follow_up = np.flatnonzero(rng.random(n) < duplicate_rate)
    follow_up = follow_up[follow_up > 0]
    base = (rng.random(len(follow_up)) * follow_up).astype(np.int64)  # an earlier study
    base = np.where(duplicate_of[base] >= 0, duplicate_of[base], base)
    duplicate_of[follow_up] = base
    finding[follow_up] = finding[base]
    jitter = 0.05 * scale
    u[follow_up] = u[base] + jitter * rng.standard_normal((len(follow_up), half))
    v[follow_up] = v[base] + jitter * rng.standard_normal((len(follow_up), half))

    noisy = rng.random(n) < noise_rate
    other = (finding[noisy] + rng.integers(1, k, noisy.sum())) % k
    v[noisy] = centre_v[other] + scale * rng.standard_normal((int(noisy.sum()), half))
    return SyntheticEmbeddings(curation_features(u, v), finding.astype(np.int64), duplicate_of, noisy, names)

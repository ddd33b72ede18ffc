"""Random test batches on a dyadic grid, so float32 and float64 arithmetic agree exactly.

Feature entries are multiples of 1/8 in [-1, 1] and prototypes are unit vectors whose entries are
+-1/2^j on 4^j coordinates; with D <= 64 every dot product, squared norm and distance^2 is a multiple of
1/64 well inside float32's 24-bit mantissa. Engine and reference then take identical decisions, and the
coarse grid makes exact ties in distance (the cases that break naive code) common rather than rare.
"""

from __future__ import annotations

import numpy as np


def dyadic_features(rng: np.random.Generator, n: int, dim: int, levels: int = 8) -> np.ndarray:
    return (rng.integers(-levels, levels + 1, size=(n, dim)) / levels).astype(np.float32)


def dyadic_prototypes(rng: np.random.Generator, k: int, dim: int) -> np.ndarray:
    protos = np.zeros((k, dim), dtype=np.float32)
    for row in protos:
        j = int(rng.integers(0, 4))
        while 4**j > dim:
            j -= 1
        coords = rng.choice(dim, size=4**j, replace=False)
        row[coords] = rng.choice([-1.0, 1.0], size=4**j) / 2**j
    return protos


def clustered_dyadic_batch(rng: np.random.Generator, n: int, dim: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Features drawn around the prototypes (so groups are populated unevenly), still on the grid."""
    protos = dyadic_prototypes(rng, k, dim)
    owner = rng.integers(0, k, size=n)
    noise = rng.integers(-3, 4, size=(n, dim)) / 8
    feats = np.clip(np.round(protos[owner] * 8) / 8 + noise * (rng.random((n, 1)) < 0.8), -1, 1)
    return feats.astype(np.float32), protos

"""Curation features f = normalize(concat(u, v)) from image and text embeddings, or from a stored concat."""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

from .validate import as_matrix


def l2_normalize(name: str, x: NDArray) -> NDArray[np.float32]:
    norms = np.linalg.norm(x.astype(np.float64), axis=1, keepdims=True)
    zero = np.flatnonzero(norms[:, 0] == 0)
    if len(zero):
        raise ValueError(f"{name} rows {zero[:10].tolist()} have zero norm and cannot be normalised")
    return (x / norms).astype(np.float32)


def curation_features(image_emb: ArrayLike, text_emb: ArrayLike) -> NDArray[np.float32]:
    """f_i = normalize(concat(u_i / ||u_i||, v_i / ||v_i||)), shape ``[B, D_u + D_v]``."""
    u = as_matrix("image_emb", image_emb)
    v = as_matrix("text_emb", text_emb)
    if len(u) != len(v):
        raise ValueError(f"image_emb has {len(u)} rows but text_emb has {len(v)}")
    joint = np.concatenate([l2_normalize("image_emb", u), l2_normalize("text_emb", v)], axis=1)
    return l2_normalize("joint features", joint)


def unit_rows(x: NDArray, out: NDArray[np.float32] | None = None) -> NDArray[np.float32]:
    """f_i = x_i / ||x_i|| in float32, for an already concatenated [u, v] (in place with ``out=x``)."""
    x32 = np.asarray(x, dtype=np.float32)
    return np.divide(x32, np.linalg.norm(x32, axis=1, keepdims=True), out=out)


#: rows per block of ``stored_unit_rows``
STORED_BLOCK_ROWS = 1 << 14


def stored_unit_rows(x: ArrayLike) -> NDArray[np.float16]:
    """f_i = x_i / ||x_i|| as offline curation sees stored embeddings: x rounded to float16 (the storage type),
    normalised in float32, kept as float16 (docs/DATA.md, "float16 storage")."""
    arr = as_matrix("embeddings", x)
    out = np.empty(arr.shape, dtype=np.float16)
    for start in range(0, len(arr), STORED_BLOCK_ROWS):
        block = arr[start : start + STORED_BLOCK_ROWS].astype(np.float16).astype(np.float32)
        out[start : start + len(block)] = unit_rows(block, out=block)
    return out

"""Reading embedding uploads: ``.npy`` (one manifest) and ``.npz`` (bulk), validated before anything is stored."""

from __future__ import annotations

import io
import zipfile
from typing import IO

import numpy as np
from numpy.typing import NDArray

from .errors import ApiError

FLOAT_DTYPES = (np.dtype(np.float16), np.dtype(np.float32))


def _nonfinite_rows(arr: NDArray) -> list[int]:
    return np.flatnonzero(~np.isfinite(arr).all(axis=1)).tolist()


def check_embeddings(arr: NDArray, rows: int | None, width: int | None, what: str) -> NDArray:
    """A finite ``[rows, width]`` float16/float32 matrix with no zero rows, or a 422 naming the problem."""
    if arr.dtype not in FLOAT_DTYPES:
        raise ApiError(422, "bad_dtype", f"{what} must be float16 or float32, got {arr.dtype}")
    if arr.ndim != 2:
        raise ApiError(422, "bad_shape", f"{what} must be 2-D [rows, width], got shape {list(arr.shape)}")
    if rows is not None and arr.shape[0] != rows:
        raise ApiError(422, "bad_shape", f"{what} has {arr.shape[0]} rows, the manifest has {rows} samples")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ApiError(422, "bad_shape", f"{what} is empty: shape {list(arr.shape)}")
    if width is not None and arr.shape[1] != width:
        raise ApiError(422, "bad_width", f"{what} has width {arr.shape[1]}, this run's embeddings have width {width}")
    bad = _nonfinite_rows(arr)
    if bad:
        raise ApiError(422, "non_finite", f"{what} rows {bad[:10]} contain NaN or Inf", rows=bad[:100])
    zero = np.flatnonzero(~np.any(arr != 0, axis=1)).tolist()
    if zero:
        raise ApiError(422, "zero_rows", f"{what} rows {zero[:10]} are all zeros and cannot be normalised")
    return arr


def read_npy(body: bytes) -> NDArray:
    try:
        arr = np.load(io.BytesIO(body), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise ApiError(400, "bad_npy", f"body is not a readable .npy array ({exc})") from exc
    if not isinstance(arr, np.ndarray):
        raise ApiError(400, "bad_npy", "body is an .npz archive; post a single .npy array")
    return arr


def read_npz(file: IO[bytes]) -> tuple[NDArray, NDArray]:
    """``sample_id`` (int64, unique) and ``embedding`` from a bulk archive."""
    try:
        with np.load(file, allow_pickle=False) as data:
            names = set(data.files)
            if not {"sample_id", "embedding"} <= names:
                raise ApiError(422, "missing_arrays", f"the .npz needs sample_id and embedding, found {sorted(names)}")
            ids, emb = data["sample_id"], data["embedding"]
    except ApiError:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise ApiError(400, "bad_npz", f"body is not a readable .npz archive ({exc})") from exc
    if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
        raise ApiError(422, "bad_ids", f"sample_id must be a 1-D integer array, got {ids.dtype} {list(ids.shape)}")
    uniq, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        raise ApiError(422, "duplicate_ids", f"duplicate sample ids {uniq[counts > 1][:10].tolist()}")
    check_embeddings(emb, len(ids), None, "embedding")
    return ids.astype(np.int64), emb


def unit_rows(arr: NDArray) -> NDArray[np.float32]:
    """f = x / ||x|| per row, in float32 (the curation feature of a posted concat(u, v))."""
    x = arr.astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)

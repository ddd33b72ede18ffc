"""Input checks shared by the engine: each raises ``ValueError`` naming the problem."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

PROTOTYPE_NORM_TOLERANCE = 1e-3


def _row_list(rows: NDArray[np.intp], limit: int = 10) -> str:
    shown = ", ".join(str(int(r)) for r in rows[:limit])
    return f"[{shown}{', ...' if len(rows) > limit else ''}] ({len(rows)} in all)"


def _check_shape(name: str, array: object, width: int | None) -> NDArray:
    arr = np.asarray(array)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array [rows, width], got rank {arr.ndim} with shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(f"{name} must have a float dtype, got {arr.dtype}")
    if arr.shape[0] == 0:
        raise ValueError(f"{name} is empty: at least one row is needed")
    if arr.shape[1] == 0:
        raise ValueError(f"{name} has width 0")
    if width is not None and arr.shape[1] != width:
        raise ValueError(f"{name} has width {arr.shape[1]}, expected {width}")
    return arr


def float32_rows(name: str, array: object, width: int | None = None) -> tuple[NDArray[np.float32], NDArray]:
    """``array`` as a C-contiguous finite float32 matrix, with its squared row norms ||x_i||^2."""
    arr = np.ascontiguousarray(_check_shape(name, array, width), dtype=np.float32)
    sq_norms = np.vecdot(arr, arr)
    # A finite squared norm proves the whole row finite, at a fraction of an element-wise isfinite pass.
    if not np.isfinite(sq_norms).all():
        bad = np.flatnonzero(~np.isfinite(arr).all(axis=1))
        if len(bad):
            raise ValueError(f"{name} rows {_row_list(bad)} contain NaN or Inf")
    return arr, sq_norms


#: rows per block of the finiteness scan in ``as_matrix``
FINITE_SCAN_ROWS = 1 << 14


def as_matrix(name: str, array: object, width: int | None = None) -> NDArray:
    """``array`` as a finite non-empty float matrix (dtype kept), or raise naming rank, width or bad rows."""
    arr = _check_shape(name, array, width)
    # Scanned in row blocks: one isfinite over a whole offline set would allocate n x D bools (1.3 GB at
    # 1.2 M x 1024), half the size of the float16 matrix it checks.
    bad = np.concatenate(
        [
            start + np.flatnonzero(~np.isfinite(arr[start : start + FINITE_SCAN_ROWS]).all(axis=1))
            for start in range(0, len(arr), FINITE_SCAN_ROWS)
        ]
    )
    if len(bad):
        raise ValueError(f"{name} rows {_row_list(bad)} contain NaN or Inf")
    return arr


def check_prototypes(prototypes: object, width: int | None = None) -> NDArray[np.float32]:
    """Prototypes must be finite unit vectors p_k (within ``PROTOTYPE_NORM_TOLERANCE``); returned as float32."""
    protos, sq_norms = float32_rows("prototypes", prototypes, width)
    norms = np.sqrt(sq_norms.astype(np.float64))
    off = np.flatnonzero(np.abs(norms - 1.0) > PROTOTYPE_NORM_TOLERANCE)
    if len(off):
        raise ValueError(
            f"prototypes {_row_list(off)} are not L2-normalised (norms {np.round(norms[off[:5]], 4).tolist()})"
        )
    return protos

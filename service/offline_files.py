"""Files around offline curation: the bulk ``.npz`` embedding format (keyed by sample_id or external_id)."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

EXPORT_SUFFIXES = (".jsonl", ".csv")


def check_export_path(path: Path) -> None:
    """Fail before any work when the export would be unwritable or of an unknown format."""
    if path.suffix not in EXPORT_SUFFIXES:
        raise ValueError(f"export file must end in {' or '.join(EXPORT_SUFFIXES)}, got {path.name!r}")
    if not path.parent.is_dir():
        raise ValueError(f"export folder {str(path.parent)!r} does not exist")


class EmbeddingFileError(ValueError):
    """The embedding file is unreadable or does not follow the ``sample_id`` / ``embedding`` format."""


def load_embeddings(path: Path) -> tuple[str, NDArray, NDArray[np.floating]]:
    """``(key, keys, embedding)`` from an ``.npz``: ``sample_id`` (int64) or ``external_id`` (strings), unique, and
    ``embedding`` (float16/32, ``[n, D]``); ``key`` names which key the file uses."""
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files if name in ("sample_id", "external_id", "embedding")}
            found = sorted(data.files)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise EmbeddingFileError(f"{path}: not a readable .npz file ({exc})") from exc
    keys = [k for k in ("sample_id", "external_id") if k in arrays]
    if len(keys) != 1 or "embedding" not in arrays:
        raise EmbeddingFileError(
            f"{path}: missing array(s): needs one of sample_id or external_id, and embedding; found {found}"
        )
    key = keys[0]
    ids, emb = arrays[key], arrays["embedding"]
    kind_ok = np.issubdtype(ids.dtype, np.integer) if key == "sample_id" else ids.dtype.kind == "U"
    if ids.ndim != 1 or not kind_ok:
        wanted = "integer" if key == "sample_id" else "unicode string"
        raise EmbeddingFileError(f"{path}: {key} must be a 1-D {wanted} array, got {ids.dtype} {ids.shape}")
    if emb.ndim != 2 or emb.dtype not in (np.float16, np.float32):
        raise EmbeddingFileError(f"{path}: embedding must be a 2-D float16/float32 array, got {emb.dtype} {emb.shape}")
    if len(ids) != len(emb):
        raise EmbeddingFileError(f"{path}: {len(ids)} {key.replace('_', ' ')}s but {len(emb)} embedding rows")
    unique, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        raise EmbeddingFileError(f"{path}: duplicate {key.replace('_', ' ')}s {unique[counts > 1][:10].tolist()}")
    return key, ids.astype(np.int64) if key == "sample_id" else ids, emb


def save_embeddings(path: Path, ids: NDArray, embedding: NDArray, key: str = "sample_id", **extra: NDArray) -> None:
    """The bulk format: ``sample_id`` (int64) or ``external_id`` (strings), and ``embedding``."""
    keys = ids.astype(np.int64) if key == "sample_id" else np.asarray(ids, dtype=str)
    arrays: dict[str, Any] = {key: keys, "embedding": embedding, **extra}
    np.savez(path, **arrays)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()

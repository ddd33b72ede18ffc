"""Files around offline curation: the bulk ``.npz`` embedding format and subset exports."""

from __future__ import annotations

import csv
import hashlib
import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .curation import BAND_LABELS, CurationConfig, OfflineCuration

EXPORT_SUFFIXES = (".jsonl", ".csv")


def check_export_path(path: Path) -> None:
    """Fail before any work when the export would be unwritable or of an unknown format."""
    if path.suffix not in EXPORT_SUFFIXES:
        raise ValueError(f"export file must end in {' or '.join(EXPORT_SUFFIXES)}, got {path.name!r}")
    if not path.parent.is_dir():
        raise ValueError(f"export folder {str(path.parent)!r} does not exist")


class EmbeddingFileError(ValueError):
    """The embedding file is unreadable or does not follow the ``sample_id`` / ``embedding`` format."""


def load_embeddings(path: Path) -> tuple[NDArray[np.int64], NDArray[np.floating]]:
    """Read ``sample_id`` (int64, unique) and ``embedding`` (float16/32, ``[n, D]``) from an ``.npz``."""
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files if name in ("sample_id", "embedding")}
            found = sorted(data.files)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise EmbeddingFileError(f"{path}: not a readable .npz file ({exc})") from exc
    missing = {"sample_id", "embedding"} - set(arrays)
    if missing:
        raise EmbeddingFileError(f"{path}: missing array(s) {sorted(missing)}; found {found}")
    ids, emb = arrays["sample_id"], arrays["embedding"]
    if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
        raise EmbeddingFileError(f"{path}: sample_id must be a 1-D integer array, got {ids.dtype} {ids.shape}")
    if emb.ndim != 2 or emb.dtype not in (np.float16, np.float32):
        raise EmbeddingFileError(f"{path}: embedding must be a 2-D float16/float32 array, got {emb.dtype} {emb.shape}")
    if len(ids) != len(emb):
        raise EmbeddingFileError(f"{path}: {len(ids)} sample ids but {len(emb)} embedding rows")
    unique, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        raise EmbeddingFileError(f"{path}: duplicate sample ids {unique[counts > 1][:10].tolist()}")
    return ids.astype(np.int64), emb


def save_embeddings(path: Path, ids: NDArray[np.int64], embedding: NDArray, **extra: NDArray) -> None:
    arrays: dict[str, Any] = {"sample_id": ids.astype(np.int64), "embedding": embedding, **extra}
    np.savez(path, **arrays)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def export_subset(
    path: Path, ids: NDArray[np.int64], result: OfflineCuration, config: CurationConfig, source: Path
) -> dict[str, Any]:
    """Write kept rows as JSONL or CSV (by suffix) and a ``.provenance.json`` beside them; return provenance."""
    check_export_path(path)
    kept = np.flatnonzero(result.keep)
    provenance = {
        "mode": "offline",
        "source": str(source),
        "source_sha256": file_sha256(source),
        "config": config.model_dump(),
        "prototypes": result.prototypes.tolist(),
        "rows": int(len(ids)),
        "subset_size": int(len(kept)),
        "subset_ratio": result.subset_ratio,
        "band_counts": result.band_counts(),
    }
    fields = ("sample_id", "prototype", "distance", "band", "batch")
    rows = (
        (
            int(ids[i]),
            int(result.prototype[i]),
            float(result.distance[i]),
            BAND_LABELS[result.band[i]],
            int(result.batch[i]),
        )
        for i in kept
    )
    if path.suffix == ".csv":
        with path.open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(fields)
            writer.writerows(rows)
    else:
        with path.open("w") as fh:
            fh.writelines(json.dumps(dict(zip(fields, row, strict=True))) + "\n" for row in rows)
    path.with_name(path.name + ".provenance.json").write_text(json.dumps(provenance, indent=2))
    return provenance

"""The embedding map: a 2-D PCA projection of a run's stored embeddings, with the prototypes marked.

At most ``MAP_POINTS`` rows are drawn (a seeded sample of the stored ids when the run holds more), read as unit
rows f_i, centred on their mean and projected on the two leading right singular vectors; the latest prototypes
p_k go through the same projection. Each point carries its latest band and prototype and its first label, so the
page colours by any of them. The answer is kept as a JSON file named after the rows it was made from (the same
key the neighbour index uses: rows, latest step, write fingerprint), so it is made once per state of the rows.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from ..errors import ApiError
from ..jobs.neighbours import current_key, database_namespace
from ..models import Run, Sample
from ..runs.prototypes import version_vectors
from ..stats import edge_version
from ..storage.embedding_reader import read_embeddings, stored_ids
from .sample import latest_decisions

#: most points drawn on the map
MAP_POINTS = 5000

Progress = Callable[[str], None]


def map_path(sessions: sessionmaker[Session], run_id: int, cache_dir: Path) -> Path:
    key = current_key(sessions, run_id)
    return cache_dir / "maps" / key.filename(database_namespace(sessions)).replace(".faiss", ".map.json")


def cached_map(sessions: sessionmaker[Session], run_id: int, cache_dir: Path) -> dict[str, Any] | None:
    """The map of the run's current rows when it was made already (never computes)."""
    path = map_path(sessions, run_id, cache_dir)
    if not path.is_file():
        return None
    try:
        answer: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # a torn or foreign file: made again
    return answer


def pca_2d(rows: NDArray[np.float32]) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """``(mean, components [2, D])`` of the rows (fewer components when the rows span less)."""
    mean = rows.mean(axis=0, dtype=np.float64)
    _, _, vt = np.linalg.svd(rows - mean, full_matrices=False)
    return mean, vt[:2]


def make_map(
    sessions: sessionmaker[Session], run_id: int, cache_dir: Path, progress: Progress | None = None
) -> dict[str, Any]:
    """The run's map: from the cache, or computed, written to the cache and returned."""
    found = cached_map(sessions, run_id, cache_dir)
    if found is not None:
        return found
    say = progress or (lambda _: None)
    path = map_path(sessions, run_id, cache_dir)
    ids = stored_ids(sessions, run_id)
    if len(ids) == 0:
        raise ApiError(409, "no_embeddings", f"run {run_id} has no stored embeddings to draw")
    drawn = ids
    if len(ids) > MAP_POINTS:
        drawn = np.sort(np.random.default_rng([run_id, 14]).choice(ids, size=MAP_POINTS, replace=False))
    say(f"reading {len(drawn)} of {len(ids)} embeddings")
    meta, rows = read_embeddings(sessions, run_id, drawn)
    say("projecting")
    mean, components = pca_2d(rows)
    xy = (rows - mean) @ components.T
    with sessions() as session:
        run = session.get(Run, run_id)
        if run is None:
            raise ApiError(404, "unknown_run", f"run {run_id} does not exist")
        sample_ids = [int(i) for i in meta.sample_ids]
        decisions = latest_decisions(session, run_id, sample_ids)
        labels = _first_labels(session, sample_ids)
        prototypes = _prototypes(session, run, mean, components)
    ys = xy[:, 1] if xy.shape[1] > 1 else np.zeros(len(xy))
    points = [
        {
            "id": sid,
            "x": round(float(x), 5),
            "y": round(float(y), 5),
            "band": decisions[sid].band if sid in decisions else None,
            "prototype": decisions[sid].prototype if sid in decisions else None,
            "label": labels.get(sid),
        }
        for sid, x, y in zip(sample_ids, xy[:, 0].tolist(), ys.tolist(), strict=True)
    ]
    answer = {
        "run_id": run_id,
        "method": "pca",
        "rows": int(len(ids)),
        "shown": len(points),
        "sampled": len(points) < len(ids),
        "points": points,
        "prototypes": prototypes,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(json.dumps(answer))
    os.replace(tmp, path)
    for old in path.parent.glob(path.name.split("-n")[0] + "-n*.map.json"):
        if old != path:
            old.unlink(missing_ok=True)  # an older state of this run's rows is never asked for again
    return answer


def _first_labels(session: Session, sample_ids: list[int]) -> dict[int, str]:
    out: dict[int, str] = {}
    for start in range(0, len(sample_ids), 1000):
        chunk = sample_ids[start : start + 1000]
        for sid, labels in session.execute(select(Sample.id, Sample.labels).where(Sample.id.in_(chunk))):
            if labels:
                out[int(sid)] = str(labels[0])
    return out


def _prototypes(
    session: Session, run: Run, mean: NDArray[np.float64], components: NDArray[np.float64]
) -> list[dict[str, Any]]:
    """The latest prototypes p_k projected like the rows (none when their width differs from the rows')."""
    latest = edge_version(session, run, newest=True)
    if latest is None or latest.dim != len(mean):
        return []
    vectors = version_vectors(latest)
    xy = (vectors - mean) @ components.T
    return [
        {"id": k, "x": round(float(p[0]), 5), "y": round(float(p[1]), 5) if len(p) > 1 else 0.0}
        for k, p in enumerate(xy.tolist())
    ]

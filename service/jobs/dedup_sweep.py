"""What near-duplicate removal would do to a run's stored embeddings, per ε, before the run commits to one."""

from __future__ import annotations

from typing import Any

import numpy as np
from sqlalchemy.orm import Session, sessionmaker

from ..curation import Backend, epsilon_sweep, offline_assignment
from ..errors import ApiError
from ..runs.access import load_run, run_config
from .offline import key_order, patients, read_unit_features, stored_rows


def sweep_run(
    sessions: sessionmaker[Session],
    run_id: int,
    epsilons: list[float],
    same_patient: bool,
    examples: int,
    backend: Backend | None = None,
) -> dict[str, Any]:
    """Per ε: duplicate pairs, rows removed, groups and the least similar pairs that count, under the prototypes
    offline curation would make for the run (its config and seed), over the rows it would read. Writes nothing."""
    with sessions() as session:
        run = load_run(session, run_id)
        config = run_config(run)
        rows, id_key = stored_rows(session, run, config)
    ids, features = read_unit_features(sessions, rows)
    order = key_order(sessions, rows, ids) if id_key == "external_id" else None
    try:
        _, assigned, _ = offline_assignment(features, config, order, backend)
    except ValueError as exc:
        raise ApiError(422, "cannot_curate", f"run {run_id}: {exc}") from exc
    codes = patients(sessions, rows, ids) if same_patient else None
    points = epsilon_sweep(features, assigned, epsilons, codes, examples, backend)
    return {
        "run_id": run_id,
        "rows": len(ids),
        "same_patient": same_patient,
        "sweep": [
            {
                "epsilon": p.epsilon,
                "pairs": p.pairs,
                "removed": p.removed,
                "groups": p.groups,
                "examples": [_pair(ids, i, j, s) for i, j, s in p.examples],
            }
            for p in points
        ],
    }


def _pair(ids: np.ndarray, i: int, j: int, similarity: float) -> dict[str, Any]:
    return {"sample_id": int(ids[i]), "with": int(ids[j]), "cosine": round(similarity, 6)}

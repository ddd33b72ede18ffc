"""Decision rows, appended in bulk: one per sample and curation step (online) or per stored row (offline)."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray
from sqlalchemy import insert
from sqlalchemy.orm import Session

from ..db import is_postgres
from ..models import Decision
from .pgcopy import copy_in, encode_rows

DECISION_COLUMNS = (
    "run_id",
    "sample_id",
    "epoch",
    "step",
    "manifest_id",
    "prototype",
    "distance",
    "band",
    "kept",
    "prototype_version",
)
DECISION_COPY = f"COPY decisions ({', '.join(DECISION_COLUMNS)}) FROM STDIN (FORMAT binary)"


def insert_decisions(
    session: Session,
    run_id: int,
    sample_ids: NDArray[np.int64],
    epoch: int,
    step: int | NDArray[np.int64],
    manifest_id: str,
    prototype: NDArray[np.integer],
    distance: NDArray[np.floating],
    band: NDArray[np.integer],
    kept: NDArray[np.bool_],
    prototype_version: int,
) -> None:
    """Append decision rows from column arrays (``step`` per row, or one step for all)."""
    sample_ids = np.asarray(sample_ids, dtype=np.int64)
    if not len(sample_ids):
        return
    steps = np.broadcast_to(np.asarray(step, dtype=np.int64), sample_ids.shape)
    if is_postgres(session):
        mid = manifest_id.encode()
        layout = [
            ("run", ">i8", run_id),
            ("sid", ">i8", sample_ids),
            ("epoch", ">i4", epoch),
            ("step", ">i4", steps),
            ("mid", f"S{len(mid)}", mid),
            ("proto", ">i2", prototype),
            ("dist", ">f8", distance),
            ("band", ">i2", band),
            ("kept", "u1", kept),
            ("pv", ">i4", prototype_version),
        ]  # DECISION_COLUMNS, as binary COPY
        copy_in(session, DECISION_COPY, encode_rows(layout, len(sample_ids)))
        return
    columns = zip(
        sample_ids.tolist(),
        steps.tolist(),
        prototype.tolist(),
        distance.tolist(),
        band.tolist(),
        kept.tolist(),
        strict=True,
    )
    session.execute(
        insert(Decision),
        [
            dict(
                zip(DECISION_COLUMNS, (run_id, sid, epoch, s, manifest_id, p, d, b, k, prototype_version), strict=True)
            )
            for sid, s, p, d, b, k in columns
        ],
    )

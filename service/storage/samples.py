"""Sample ids checked against a dataset in bulk."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray
from sqlalchemy import select
from sqlalchemy.orm import Session

from ..db import IDS_PER_STATEMENT, is_postgres
from ..models import Sample


def foreign_ids(session: Session, dataset_id: int, sample_ids: NDArray[np.int64]) -> list[int]:
    """The ids that are not samples of ``dataset_id`` (array-parameter queries on Postgres)."""
    ids = sample_ids.tolist()
    if is_postgres(session):
        sql = session.connection().exec_driver_sql
        where = "FROM samples WHERE id = ANY(CAST(%(ids)s AS bigint[])) AND dataset_id = %(d)s"
        if sql(f"SELECT count(*) {where}", {"ids": ids, "d": dataset_id}).scalar_one() == len(ids):
            return []  # the common case, answered without sending the ids back
        known = {r[0] for r in sql(f"SELECT id {where}", {"ids": ids, "d": dataset_id})}
    else:
        known = set()
        for start in range(0, len(ids), IDS_PER_STATEMENT):
            chunk = ids[start : start + IDS_PER_STATEMENT]
            known.update(
                session.scalars(select(Sample.id).where(Sample.id.in_(chunk), Sample.dataset_id == dataset_id))
            )
    return [i for i in ids if i not in known]

"""The one writer of stored embeddings: the latest float16 vector per (run, sample), replaced in bulk."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from ..db import is_postgres
from ..models import Embedding
from .pgcopy import copy_in, encode_rows

EMBEDDING_COPY = "COPY embeddings (run_id, sample_id, dim, vector, step) FROM STDIN (FORMAT binary)"


def embedding_copy_payload(run_id: int, sample_ids: NDArray[np.int64], f16: NDArray[np.float16], step: int) -> bytes:
    """Rows (run_id, sample_id, dim, vector, step) as binary COPY; the vector is the row's little-endian float16."""
    dim = int(f16.shape[1])
    vectors = np.ascontiguousarray(f16, dtype="<f2").view(f"V{2 * dim}").ravel()
    columns = [("run", ">i8", run_id), ("sid", ">i8", sample_ids), ("dim", ">i4", dim)]
    return encode_rows([*columns, ("vec", f"V{2 * dim}", vectors), ("step", ">i4", step)], len(sample_ids))


def upsert_embeddings(
    session: Session, run_id: int, sample_ids: NDArray[np.int64], vectors: NDArray, step: int
) -> None:
    """Store (or replace) the latest float16 embedding of each sample in the run."""
    f16 = np.ascontiguousarray(vectors, dtype=np.float16)
    if is_postgres(session):
        # Replacing rows is a delete of the ones present plus one COPY: several times faster than staging the
        # batch in a temp table and upserting it, and the same outcome (the latest embedding per sample).
        # A join against the id list, not ``= ANY(...)``: with no statistics yet (a fresh table, before autovacuum
        # analyses it) the planner was seen scanning every row of the run for the ANY form, ~35x slower with the
        # vectors stored inline (migration 0003); the join is planned as one primary-key probe per id.
        session.connection().exec_driver_sql(
            "DELETE FROM embeddings e USING unnest(CAST(%(ids)s AS bigint[])) AS u(id) "
            "WHERE e.run_id = %(run)s AND e.sample_id = u.id",
            {"run": run_id, "ids": sample_ids.tolist()},
        )
        copy_in(session, EMBEDDING_COPY, embedding_copy_payload(run_id, sample_ids, f16, step))
        return
    stmt = sqlite_insert(Embedding)
    stmt = stmt.on_conflict_do_update(
        index_elements=["run_id", "sample_id"],
        set_={"dim": stmt.excluded.dim, "vector": stmt.excluded.vector, "step": stmt.excluded.step},
    )
    dim = int(f16.shape[1])
    session.execute(
        stmt,
        [
            {"run_id": run_id, "sample_id": int(s), "dim": dim, "vector": row.tobytes(), "step": step}
            for s, row in zip(sample_ids.tolist(), f16, strict=True)
        ],
    )

"""Bulk row writes: psycopg binary COPY on Postgres (into a temp table, then one upsert), plain inserts on SQLite."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray
from sqlalchemy import insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from .models import Decision, Embedding

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


def is_postgres(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


def copy_rows(session: Session, statement: str, types: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    raw = session.connection().connection.dbapi_connection
    assert raw is not None
    with raw.cursor() as cur, cur.copy(statement) as copy:  # type: ignore[attr-defined]
        copy.set_types(list(types))
        for row in rows:
            copy.write_row(row)


def upsert_embeddings(
    session: Session, run_id: int, sample_ids: NDArray[np.int64], vectors: NDArray, step: int
) -> None:
    """Store (or replace) the latest float16 embedding of each sample in the run."""
    f16 = np.ascontiguousarray(vectors, dtype=np.float16)
    dim = int(f16.shape[1])
    if is_postgres(session):
        raw_sql = session.connection().exec_driver_sql
        raw_sql("CREATE TEMP TABLE IF NOT EXISTS _emb_in (sample_id bigint, vector bytea) ON COMMIT DELETE ROWS")
        copy_rows(
            session,
            "COPY _emb_in (sample_id, vector) FROM STDIN (FORMAT binary)",
            ("int8", "bytea"),
            zip(sample_ids.tolist(), (row.tobytes() for row in f16), strict=True),
        )
        raw_sql(
            "INSERT INTO embeddings (run_id, sample_id, dim, vector, step) "
            f"SELECT {int(run_id)}, sample_id, {dim}, vector, {int(step)} FROM _emb_in "
            "ON CONFLICT (run_id, sample_id) DO UPDATE SET dim = EXCLUDED.dim, vector = EXCLUDED.vector, "
            "step = EXCLUDED.step"
        )
        raw_sql("TRUNCATE _emb_in")
        return
    stmt = sqlite_insert(Embedding)
    stmt = stmt.on_conflict_do_update(
        index_elements=["run_id", "sample_id"],
        set_={"dim": stmt.excluded.dim, "vector": stmt.excluded.vector, "step": stmt.excluded.step},
    )
    session.execute(
        stmt,
        [
            {"run_id": run_id, "sample_id": int(s), "dim": dim, "vector": row.tobytes(), "step": step}
            for s, row in zip(sample_ids.tolist(), f16, strict=True)
        ],
    )


def insert_decisions(session: Session, rows: list[tuple[Any, ...]]) -> None:
    """Append decision rows (tuples in ``DECISION_COLUMNS`` order)."""
    if not rows:
        return
    if is_postgres(session):
        copy_rows(
            session,
            f"COPY decisions ({', '.join(DECISION_COLUMNS)}) FROM STDIN (FORMAT binary)",
            ("int8", "int8", "int4", "int4", "varchar", "int2", "float8", "int2", "bool", "int4"),
            rows,
        )
        return
    session.execute(insert(Decision), [dict(zip(DECISION_COLUMNS, row, strict=True)) for row in rows])

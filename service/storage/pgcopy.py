"""Bulk row writes: psycopg binary COPY on Postgres (into a temp table, then one upsert), plain inserts on SQLite."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray
from sqlalchemy import insert, select
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from ..models import Decision, Embedding, Sample

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


_PGCOPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + b"\x00" * 8  # signature, flags, header-extension length
_PGCOPY_TRAILER = b"\xff\xff"


def embedding_copy_payload(run_id: int, sample_ids: NDArray[np.int64], f16: NDArray[np.float16], step: int) -> bytes:
    """Rows (run_id, sample_id, dim, vector, step) in PostgreSQL's binary COPY format, built with numpy.

    Per-row ``write_row`` calls cost ~10 us each in Python; one structured array writes a million rows in
    a fraction of a second, so the database, not the formatting, bounds the ingest rate.
    """
    dim = int(f16.shape[1])
    layout = np.dtype(
        [
            ("fields", ">i2"),
            ("l_run", ">i4"),
            ("run", ">i8"),
            ("l_sid", ">i4"),
            ("sid", ">i8"),
            ("l_dim", ">i4"),
            ("dim", ">i4"),
            ("l_vec", ">i4"),
            ("vec", f"V{2 * dim}"),
            ("l_step", ">i4"),
            ("step", ">i4"),
        ]
    )
    rows = np.empty(len(sample_ids), dtype=layout)
    rows["fields"], rows["run"], rows["sid"], rows["dim"], rows["step"] = 5, run_id, sample_ids, dim, step
    rows["l_run"], rows["l_sid"], rows["l_dim"], rows["l_vec"], rows["l_step"] = 8, 8, 4, 2 * dim, 4
    rows["vec"] = np.ascontiguousarray(f16, dtype="<f2").view(f"V{2 * dim}").ravel()
    return _PGCOPY_HEADER + rows.tobytes() + _PGCOPY_TRAILER


DECISION_COPY = f"COPY decisions ({', '.join(DECISION_COLUMNS)}) FROM STDIN (FORMAT binary)"


def decision_copy_payload(
    run_id: int,
    sample_ids: NDArray[np.int64],
    epoch: int,
    step: NDArray[np.int64],
    manifest_id: str,
    prototype: NDArray[np.integer],
    distance: NDArray[np.floating],
    band: NDArray[np.integer],
    kept: NDArray[np.bool_],
    prototype_version: int,
) -> bytes:
    """Decision rows in ``DECISION_COLUMNS`` order as binary COPY, built with numpy (see ``embedding_copy_payload``).

    For whole-dataset writes (offline curation: a million rows); per-step writes go through ``insert_decisions``.
    """
    mid = manifest_id.encode()
    layout = np.dtype(
        [
            ("fields", ">i2"),
            ("l_run", ">i4"),
            ("run", ">i8"),
            ("l_sid", ">i4"),
            ("sid", ">i8"),
            ("l_epoch", ">i4"),
            ("epoch", ">i4"),
            ("l_step", ">i4"),
            ("step", ">i4"),
            ("l_mid", ">i4"),
            ("mid", f"S{len(mid)}"),
            ("l_proto", ">i4"),
            ("proto", ">i2"),
            ("l_dist", ">i4"),
            ("dist", ">f8"),
            ("l_band", ">i4"),
            ("band", ">i2"),
            ("l_kept", ">i4"),
            ("kept", "u1"),
            ("l_pv", ">i4"),
            ("pv", ">i4"),
        ]
    )
    rows = np.empty(len(sample_ids), dtype=layout)
    rows["fields"], rows["run"], rows["sid"], rows["epoch"], rows["step"] = 10, run_id, sample_ids, epoch, step
    rows["mid"], rows["proto"], rows["dist"], rows["band"] = mid, prototype, distance, band
    rows["kept"], rows["pv"] = kept, prototype_version
    rows["l_run"], rows["l_sid"], rows["l_epoch"], rows["l_step"], rows["l_mid"] = 8, 8, 4, 4, len(mid)
    rows["l_proto"], rows["l_dist"], rows["l_band"], rows["l_kept"], rows["l_pv"] = 2, 8, 2, 1, 4
    return _PGCOPY_HEADER + rows.tobytes() + _PGCOPY_TRAILER


def copy_payload(session: Session, statement: str, payload: bytes, chunk: int = 8 << 20) -> None:
    raw = session.connection().connection.dbapi_connection
    assert raw is not None
    with raw.cursor() as cur, cur.copy(statement) as copy:  # type: ignore[attr-defined]
        view = memoryview(payload)
        for start in range(0, len(view), chunk):
            copy.write(view[start : start + chunk])


EMBEDDING_COPY = "COPY {table} (run_id, sample_id, dim, vector, step) FROM STDIN (FORMAT binary)"


def upsert_embeddings(
    session: Session, run_id: int, sample_ids: NDArray[np.int64], vectors: NDArray, step: int
) -> None:
    """Store (or replace) the latest float16 embedding of each sample in the run."""
    f16 = np.ascontiguousarray(vectors, dtype=np.float16)
    if is_postgres(session):
        sql = session.connection().exec_driver_sql
        payload = embedding_copy_payload(run_id, sample_ids, f16, step)
        # Replacing rows is a delete of the ones present plus one COPY: several times faster than staging the
        # batch in a temp table and upserting it, and the same outcome (the latest embedding per sample).
        # a join against the id list, not ``= ANY(...)``: with no statistics yet (a fresh table, before autovacuum
        # analyses it) the planner was seen scanning every row of the run for the ANY form, ~35x slower since
        # the vectors are stored inline (migration 0003); the join is planned as one primary-key probe per id
        sql(
            "DELETE FROM embeddings e USING unnest(CAST(%(ids)s AS bigint[])) AS u(id) "
            "WHERE e.run_id = %(run)s AND e.sample_id = u.id",
            {"run": run_id, "ids": sample_ids.tolist()},
        )
        copy_payload(session, EMBEDDING_COPY.format(table="embeddings"), payload)
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


def foreign_ids(session: Session, dataset_id: int, sample_ids: NDArray[np.int64]) -> list[int]:
    """The ids that are not samples of ``dataset_id`` (one array-parameter query on Postgres)."""
    ids = sample_ids.tolist()
    if is_postgres(session):
        sql = session.connection().exec_driver_sql
        count = sql(
            "SELECT count(*) FROM samples WHERE id = ANY(CAST(%(ids)s AS bigint[])) AND dataset_id = %(d)s",
            {"ids": ids, "d": dataset_id},
        ).scalar_one()
        if count == len(ids):
            return []
        known = {
            r[0]
            for r in sql(
                "SELECT id FROM samples WHERE id = ANY(CAST(%(ids)s AS bigint[])) AND dataset_id = %(d)s",
                {"ids": ids, "d": dataset_id},
            )
        }
    else:
        known = set()
        for start in range(0, len(ids), 500):  # SQLite's bound-parameter limit
            chunk = ids[start : start + 500]
            known.update(
                session.scalars(select(Sample.id).where(Sample.id.in_(chunk), Sample.dataset_id == dataset_id))
            )
    return [i for i in ids if i not in known]


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
        payload = decision_copy_payload(
            run_id, sample_ids, epoch, steps, manifest_id, prototype, distance, band, kept, prototype_version
        )
        copy_payload(session, DECISION_COPY, payload)
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

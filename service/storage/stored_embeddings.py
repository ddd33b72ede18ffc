"""A run's stored embeddings as one float16 matrix of unit rows, streamed out of the database in chunks.

On Postgres the rows come through ``COPY (SELECT ...) TO STDOUT (FORMAT binary)`` and are parsed with one
numpy record dtype per chunk: no Python object per row, so 1.2 M rows x 2 KB read at the speed of the
server. Memory is the float16 result plus one chunk (raw bytes and a float32 copy for the normalisation).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
from numpy.typing import NDArray
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service.errors import ApiError
from service.models import Embedding
from service.uploads import unit_rows

#: rows per chunk: a few MB of raw COPY data and a float32 copy of the same rows
CHUNK_ROWS = 8192

_SIGNATURE = b"PGCOPY\n\xff\r\n\x00"
_TRAILER = b"\xff\xff"

Chunk = tuple[NDArray[np.int64], NDArray[np.float16]]


def _row_dtype(dim: int) -> np.dtype:
    """One binary COPY row of (sample_id bigint, vector bytea holding little-endian float16)."""
    return np.dtype([("fields", ">i2"), ("l_sid", ">i4"), ("sid", ">i8"), ("l_vec", ">i4"), ("vec", "<f2", (dim,))])


def _strip_header(data: bytes) -> bytes:
    if not data.startswith(_SIGNATURE):
        raise ValueError("COPY output does not start with the PGCOPY signature")
    extension = int.from_bytes(data[15:19], "big")
    return data[19 + extension :]


def _parse(data: bytes, row: np.dtype, dim: int) -> Chunk:
    rows = np.frombuffer(data, dtype=row)
    if not ((rows["fields"] == 2).all() and (rows["l_sid"] == 8).all() and (rows["l_vec"] == 2 * dim).all()):
        raise ValueError("unexpected row layout in COPY output (a NULL or resized vector?)")
    return rows["sid"].astype(np.int64), rows["vec"]


def _postgres_chunks(session: Session, run_id: int, dim: int, chunk_rows: int) -> Iterator[Chunk]:
    raw = session.connection().connection.dbapi_connection
    assert raw is not None
    row = _row_dtype(dim)
    want = chunk_rows * row.itemsize
    # ORDER BY walks the (run_id, sample_id) primary key: rows arrive sorted without a sort of 2.5 GB
    query = (
        f"COPY (SELECT sample_id, vector FROM embeddings WHERE run_id = {int(run_id)} ORDER BY sample_id) "
        "TO STDOUT (FORMAT binary)"
    )
    parts: list[bytes] = []
    size, header_seen = 0, False
    with raw.cursor() as cur, cur.copy(query) as copy:  # type: ignore[attr-defined]
        for block in copy:  # libpq hands over one row (or the header / trailer) per block
            parts.append(bytes(block))
            size += len(block)
            if size < want:
                continue
            data = b"".join(parts)
            if not header_seen:
                data, header_seen = _strip_header(data), True
            whole = len(data) - len(data) % row.itemsize  # the trailer (2 bytes) never completes a row
            yield _parse(data[:whole], row, dim)
            parts, size = [data[whole:]], len(data) - whole
    data = b"".join(parts)
    if not header_seen:
        data = _strip_header(data)
    if not data.endswith(_TRAILER) or (len(data) - len(_TRAILER)) % row.itemsize:
        raise ValueError("COPY output ends with a partial row")
    if len(data) > len(_TRAILER):
        yield _parse(data[: -len(_TRAILER)], row, dim)


def _orm_chunks(session: Session, run_id: int, dim: int, chunk_rows: int) -> Iterator[Chunk]:
    """Any other database (the embedded SQLite default): rows through the ORM, ``chunk_rows`` at a time."""
    stmt = (
        select(Embedding.sample_id, Embedding.vector)
        .where(Embedding.run_id == run_id)
        .order_by(Embedding.sample_id)
        .execution_options(yield_per=chunk_rows)
    )
    for part in session.execute(stmt).partitions():
        ids = np.fromiter((r[0] for r in part), dtype=np.int64, count=len(part))
        vectors = np.frombuffer(b"".join(r[1] for r in part), dtype="<f2").reshape(len(part), dim)
        yield ids, vectors


def read_unit_features(
    session: Session,
    run_id: int,
    progress: Callable[[int, int], None] | None = None,
    chunk_rows: int = CHUNK_ROWS,
) -> tuple[NDArray[np.int64], NDArray[np.float16]]:
    """Sorted sample ids and their embeddings as unit rows f = x / ||x|| (float16), one consistent snapshot.

    Unit rows, as the online path posts them to the engine (``service.arrays.unit_rows``): the stored
    vector is whatever the encoder produced, the curation feature is its direction. Kept in float16 (the
    stored precision) so the whole set costs 2 bytes per value; the engine widens one super-batch at a time.
    """
    postgres = session.get_bind().dialect.name == "postgresql"
    if postgres:  # the row count, the width check and the COPY must see the same rows
        session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
    n, dim, max_dim = session.execute(
        select(func.count(), func.min(Embedding.dim), func.max(Embedding.dim)).where(Embedding.run_id == run_id)
    ).one()
    if not n:
        raise ApiError(409, "no_embeddings", f"run {run_id} has no stored embeddings to curate")
    if dim != max_dim:
        raise ApiError(409, "mixed_widths", f"run {run_id} stores embeddings of widths {dim} to {max_dim}")
    ids = np.empty(n, dtype=np.int64)
    features = np.empty((n, dim), dtype=np.float16)
    if progress is not None:
        progress(0, n)
    chunks = _postgres_chunks if postgres else _orm_chunks
    filled = 0
    for chunk_ids, vectors in chunks(session, run_id, dim, chunk_rows):
        end = filled + len(chunk_ids)
        if end > n:
            raise ValueError(f"run {run_id}: more embedding rows than the snapshot counted ({n})")
        with np.errstate(invalid="ignore", divide="ignore"):
            unit = unit_rows(vectors)
        zero = ~np.isfinite(unit).all(axis=1)
        if zero.any():  # the upload rejects zero rows; a row written some other way may still be one
            raise ApiError(
                422, "zero_rows", f"samples {chunk_ids[zero][:10].tolist()} have all-zero or non-finite embeddings"
            )
        ids[filled:end], features[filled:end] = chunk_ids, unit
        filled = end
        if progress is not None:
            progress(filled, n)
    if filled != n or (np.diff(ids) <= 0).any():
        raise ValueError(f"run {run_id}: read {filled} of {n} embedding rows, or out of sample order")
    return ids, features

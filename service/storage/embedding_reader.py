"""A run's stored embeddings as float32 unit rows, read as fast as the database can hand them over.

Why not the ORM, or psycopg's ``Copy`` iterator: a 1024-wide float16 vector is 2 KB (kept inline in the heap
since migration 0003, where Postgres would otherwise move it to TOAST), and the server side of a read costs
~2-4 us a row; psycopg's generator-based ``Copy`` adds ~10 us a row in Python. Here the binary
``COPY ... TO STDOUT`` is drained at the libpq level (one slice assignment per row into a preallocated buffer),
each chunk is parsed with numpy views (no Python object per row), and the sample-id range is split over
``parts`` connections that import one exported snapshot, so every part sees the same rows while the server
reads on several cores. The conversion float16 -> float32 -> unit rows runs chunk by chunk (libpq keeps
receiving into its socket buffer meanwhile).

Callers decide where the rows go through a ``Sink``: a preallocated matrix (``read_embeddings``) or, for
the neighbour index, a FAISS index fed chunk by chunk (no second copy of the whole set).
"""

from __future__ import annotations

import importlib
import os
import select
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray
from psycopg import pq
from sqlalchemy import Engine, func
from sqlalchemy import select as sa_select
from sqlalchemy.orm import Session, sessionmaker

from service.errors import ApiError
from service.models import Embedding

#: rows converted per chunk: 4096 x 1024 float32 is 16 MB, small enough to stay cache-friendly
CHUNK_ROWS = 4096
#: below this many rows a part is not worth its own connection
MIN_PART_ROWS = 20_000
#: connections a read is split over: the server reads on one core per connection
DEFAULT_PARTS = max(1, min(4, os.cpu_count() or 1))

_SIGNATURE = b"PGCOPY\n\xff\r\n\x00"
_TRAILER = b"\xff\xff"
# one binary COPY row of (sample_id bigint, vector bytea): field count, length + int8, length + bytes
_ID_AT, _VEC_AT = 6, 18
_ROW_HEAD = (2).to_bytes(2, "big") + (8).to_bytes(4, "big")


@dataclass(frozen=True)
class EmbeddingSet:
    """What one consistent read saw: the key a cache of anything derived from these rows needs."""

    run_id: int
    rows: int
    dim: int
    max_step: int
    #: changes whenever a row is (re)written, even at the same step (Postgres: sum of row xmins; else 0)
    fingerprint: int
    sample_ids: NDArray[np.int64]  # ascending


class Sink(Protocol):
    """Where rows ``start .. start + count`` (in ascending sample-id order) are written, then handed over."""

    def buffer(self, start: int, count: int) -> NDArray[np.float32]: ...

    def commit(self, start: int, ids: NDArray[np.int64], rows: NDArray[np.float32]) -> None: ...


class ArraySink:
    """Rows straight into one preallocated ``[n, dim]`` float32 matrix."""

    def __init__(self, rows: int, dim: int) -> None:
        self.features = np.empty((rows, dim), dtype=np.float32)
        # Fault the pages in now, before the COPY streams: first-touch faults taken while the server is
        # reading (and the page cache growing) cost up to 10x more on this VM (0.1 s here vs 0.7-2 s there).
        self.features.fill(0)

    def buffer(self, start: int, count: int) -> NDArray[np.float32]:
        return self.features[start : start + count]

    def commit(self, start: int, ids: NDArray[np.int64], rows: NDArray[np.float32]) -> None:
        pass


def engine_of(sessions: sessionmaker[Session]) -> Engine:
    bind = sessions.kw.get("bind")
    if not isinstance(bind, Engine):
        raise TypeError("the session factory must be bound to an Engine")
    return bind


def stored_ids(sessions: sessionmaker[Session], run_id: int) -> NDArray[np.int64]:
    """The run's sample ids that have an embedding, ascending (ids only: no vector is sent)."""
    engine = engine_of(sessions)
    if engine.dialect.name == "postgresql":
        with _raw(engine) as conn:
            return _ids_blob(conn, _where(run_id, None))
    with sessions() as session:
        rows = session.scalars(
            sa_select(Embedding.sample_id).where(Embedding.run_id == run_id).order_by(Embedding.sample_id)
        )
        return np.fromiter(rows, dtype=np.int64)


def read_embeddings(
    sessions: sessionmaker[Session],
    run_id: int,
    sample_ids: NDArray[np.int64] | None = None,
    parts: int = DEFAULT_PARTS,
) -> tuple[EmbeddingSet, NDArray[np.float32]]:
    """The run's embeddings (or those of ``sample_ids``) as unit rows f = x / ||x||, in sample-id order."""
    holder: dict[str, ArraySink] = {}

    def make(meta: EmbeddingSet) -> ArraySink:
        holder["sink"] = ArraySink(meta.rows, meta.dim)
        return holder["sink"]

    meta = scan_embeddings(sessions, run_id, make, sample_ids, parts)
    return meta, holder["sink"].features


def scan_embeddings(
    sessions: sessionmaker[Session],
    run_id: int,
    make_sink: Callable[[EmbeddingSet], Sink],
    sample_ids: NDArray[np.int64] | None = None,
    parts: int = DEFAULT_PARTS,
    chunk_rows: int = CHUNK_ROWS,
) -> EmbeddingSet:
    """Stream the rows into ``make_sink(meta)``; raise ApiError 409 for no rows or mixed widths, 422 for
    zero / non-finite rows. ``make_sink`` is called once, after the snapshot is taken and counted."""
    engine = engine_of(sessions)
    if engine.dialect.name != "postgresql":
        return _orm_scan(sessions, run_id, make_sink, sample_ids, chunk_rows)
    with _raw(engine) as main:
        main.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        where = _where(run_id, sample_ids)
        meta = _postgres_meta(main, run_id, where)
        sink = make_sink(meta)
        ranges = _split(meta.rows, max(1, min(parts, meta.rows // MIN_PART_ROWS)))
        snapshot: str = main.execute("SELECT pg_export_snapshot()").fetchone()[0] if len(ranges) > 1 else ""
        with ThreadPoolExecutor(max_workers=max(1, len(ranges) - 1)) as pool:
            futures = [
                pool.submit(_read_part_in_snapshot, engine, snapshot, run_id, where, meta, lo, hi, sink, chunk_rows)
                for lo, hi in ranges[1:]
            ]
            lo, hi = ranges[0]
            _copy_part(main, _part_query(run_id, where, meta, lo, hi), meta, lo, hi, sink, chunk_rows)
            for future in futures:  # the exporting transaction stays open until every importer is done
                future.result()
        main.execute("ROLLBACK")
    return meta


@contextmanager
def _raw(engine: Engine) -> Iterator[Any]:
    """A pooled psycopg connection in autocommit (we send BEGIN / ROLLBACK ourselves); dropped on error,
    since a connection left in the middle of a COPY cannot go back to the pool."""
    proxied = engine.raw_connection()
    conn = proxied.dbapi_connection
    assert conn is not None
    try:
        conn.autocommit = True
        yield conn
        conn.autocommit = False
    except BaseException:
        proxied.invalidate()
        raise
    finally:
        proxied.close()


def _where(run_id: int, sample_ids: NDArray[np.int64] | None) -> str:
    # COPY takes no bind parameters: everything inlined is an int formatted by us, never caller text
    clause = f"run_id = {int(run_id)}"
    if sample_ids is not None:
        listed = ",".join(str(int(i)) for i in np.asarray(sample_ids, dtype=np.int64).tolist())
        clause += f" AND sample_id = ANY('{{{listed}}}'::bigint[])"
    return clause


def _postgres_meta(conn: Any, run_id: int, where: str) -> EmbeddingSet:
    n, dim, max_dim, max_step, fingerprint = conn.execute(
        "SELECT count(*), min(dim), max(dim), coalesce(max(step), 0), coalesce(sum(xmin::text::bigint), 0) "
        f"FROM embeddings WHERE {where}"
    ).fetchone()
    _check_widths(run_id, n, dim, max_dim)
    ids = _ids_blob(conn, where)
    if len(ids) != n:
        raise ValueError(f"run {run_id}: {len(ids)} ids but {n} rows in one snapshot")
    return EmbeddingSet(run_id, int(n), int(dim), int(max_step), int(fingerprint), ids)


def _ids_blob(conn: Any, where: str) -> NDArray[np.int64]:
    """The ids in one bytea (8 bytes each): 1.2 M ids arrive as ~10 MB, not 1.2 M Python ints."""
    blob = (
        conn.cursor(binary=True)
        .execute(f"SELECT string_agg(int8send(sample_id), ''::bytea ORDER BY sample_id) FROM embeddings WHERE {where}")
        .fetchone()[0]
    )
    return np.frombuffer(blob or b"", dtype=">i8").astype(np.int64)


def _check_widths(run_id: int, n: int, dim: int | None, max_dim: int | None) -> None:
    if not n:
        raise ApiError(409, "no_embeddings", f"run {run_id} has no stored embeddings")
    if dim != max_dim:
        raise ApiError(409, "mixed_widths", f"run {run_id} stores embeddings of widths {dim} to {max_dim}")


def _split(n: int, parts: int) -> list[tuple[int, int]]:
    edges = np.linspace(0, n, parts + 1).astype(int)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:], strict=True) if b > a]


def _part_query(run_id: int, where: str, meta: EmbeddingSet, lo: int, hi: int) -> str:
    first, last = int(meta.sample_ids[lo]), int(meta.sample_ids[hi - 1])
    # ORDER BY follows the (run_id, sample_id) primary key, so rows land in the positions the ids say
    return (
        f"COPY (SELECT sample_id, vector FROM embeddings WHERE {where} AND sample_id BETWEEN {first} AND {last} "
        "ORDER BY sample_id) TO STDOUT (FORMAT binary)"
    )


def _read_part_in_snapshot(
    engine: Engine,
    snapshot: str,
    run_id: int,
    where: str,
    meta: EmbeddingSet,
    lo: int,
    hi: int,
    sink: Sink,
    chunk_rows: int,
) -> None:
    with _raw(engine) as conn:
        conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        conn.execute(f"SET TRANSACTION SNAPSHOT '{snapshot}'")  # snapshot ids are server-made: [0-9A-F-]
        _copy_part(conn, _part_query(run_id, where, meta, lo, hi), meta, lo, hi, sink, chunk_rows)
        conn.execute("ROLLBACK")


def _copy_part(conn: Any, query: str, meta: EmbeddingSet, lo: int, hi: int, sink: Sink, chunk_rows: int) -> None:
    """Drain one COPY into ``sink`` rows ``lo .. hi``; libpq hands over one row per message.

    Conversion runs inline between chunks: on 2 cores a helper thread with double buffering measured no
    faster (the read is CPU-bound: server backends, this loop and the conversion share the cores).
    """
    pg = conn.pgconn
    record = _VEC_AT + 2 * meta.dim
    capacity = chunk_rows * record
    buf = np.empty(capacity + record + len(_SIGNATURE) + 64, dtype=np.uint8)
    view = memoryview(buf)  # type: ignore[arg-type]
    pg.send_query(query.encode())
    result = pg.get_result()
    if result is None or result.status != pq.ExecStatus.COPY_OUT:
        raise RuntimeError(f"COPY did not start: {result.error_message.decode() if result else 'no result'}")
    poller = select.poll()
    poller.register(pg.socket, select.POLLIN)
    fill, position, first = 0, lo, True
    while True:
        size, data = pg.get_copy_data(1)  # non-blocking: waiting happens in poll(), without the GIL
        if size == 0:
            poller.poll()
            pg.consume_input()
            continue
        if size < 0:
            break
        if first:
            data, first = _strip_header(bytes(data)), False
            size = len(data)
        if fill + size > capacity:  # convert the whole rows, keep a partial one for the next chunk
            whole = fill - fill % record
            position = _flush(buf[:whole], meta, position, sink)
            buf[: fill - whole] = buf[whole:fill]
            fill -= whole
            if fill + size > len(buf):
                buf = np.concatenate([buf[:fill], np.empty(size, dtype=np.uint8)])
                view = memoryview(buf)  # type: ignore[arg-type]
        view[fill : fill + size] = data
        fill += size
    _finish(pg)
    if fill < len(_TRAILER) or bytes(buf[fill - len(_TRAILER) : fill]) != _TRAILER:
        raise ValueError("COPY output does not end with the binary trailer")
    fill -= len(_TRAILER)
    if fill % record:
        raise ValueError("COPY output ends with a partial row")
    position = _flush(buf[:fill], meta, position, sink)
    if position != hi:
        raise ValueError(f"run {meta.run_id}: read rows {lo}..{position}, the snapshot holds {lo}..{hi}")


def _strip_header(data: bytes) -> bytes:
    if not data.startswith(_SIGNATURE):
        raise ValueError("COPY output does not start with the PGCOPY signature")
    extension = int.from_bytes(data[15:19], "big")
    return data[19 + extension :]


def _finish(pg: Any) -> None:
    result = pg.get_result()
    if result is None or result.status != pq.ExecStatus.COMMAND_OK:
        raise RuntimeError(f"COPY failed: {result.error_message.decode() if result else 'no result'}")
    while pg.get_result() is not None:
        pass


def _flush(raw: NDArray[np.uint8], meta: EmbeddingSet, position: int, sink: Sink) -> int:
    """Parse whole rows with views, check them, write unit rows into the sink; return the next position."""
    dim, record = meta.dim, _VEC_AT + 2 * meta.dim
    count = len(raw) // record
    if count == 0:
        return position
    rows = raw.reshape(count, record)
    head = np.frombuffer(_ROW_HEAD, dtype=np.uint8)  # 2 fields, then the id's length (8)
    width = np.frombuffer((2 * dim).to_bytes(4, "big"), dtype=np.uint8)
    if not ((rows[:, :_ID_AT] == head).all() and (rows[:, 14:_VEC_AT] == width).all()):
        raise ValueError("unexpected row layout in COPY output (a NULL or a vector of another width)")
    ids = rows[:, _ID_AT:14].copy().view(">i8").ravel().astype(np.int64)
    if not np.array_equal(ids, meta.sample_ids[position : position + count]):
        raise ValueError(f"run {meta.run_id}: rows out of sample-id order or not in the snapshot")
    out = sink.buffer(position, count)
    _widen(out, rows[:, _VEC_AT:].view("<f2"))
    _normalise(out, ids)
    sink.commit(position, ids, out)
    return position + count


def _widen(out: NDArray[np.float32], half: NDArray[np.float16]) -> None:
    """float16 -> float32 straight from the COPY buffer. torch's F16C cast is ~4x numpy's table-driven one
    (0.13 s vs 0.6 s per 200k x 1024 on this box); numpy when torch is absent."""
    torch = _torch()
    if torch is None:
        out[...] = half
    else:
        torch.from_numpy(out).copy_(torch.from_numpy(half))


@cache
def _torch() -> Any:
    try:
        return importlib.import_module("torch")
    except ImportError:  # the service runs without torch too
        return None


def _normalise(rows: NDArray[np.float32], ids: NDArray[np.int64]) -> None:
    """In place: f = x / ||x||; a zero or non-finite row cannot be a direction."""
    sq = np.einsum("ij,ij->i", rows, rows)
    bad = ~(np.isfinite(sq) & (sq > 0))
    if bad.any():  # the upload refuses such rows; one written some other way must not poison the index
        raise ApiError(422, "zero_rows", f"samples {ids[bad][:10].tolist()} have all-zero or non-finite embeddings")
    rows *= (1.0 / np.sqrt(sq))[:, None]


def _orm_scan(
    sessions: sessionmaker[Session],
    run_id: int,
    make_sink: Callable[[EmbeddingSet], Sink],
    sample_ids: NDArray[np.int64] | None,
    chunk_rows: int,
) -> EmbeddingSet:
    """Any other database (the embedded SQLite default): the ORM, ``chunk_rows`` at a time, one transaction."""
    cond = [Embedding.run_id == run_id]
    if sample_ids is not None:
        cond.append(Embedding.sample_id.in_([int(i) for i in sample_ids]))
    with sessions() as session:
        n, dim, max_dim, max_step = session.execute(
            sa_select(func.count(), func.min(Embedding.dim), func.max(Embedding.dim), func.max(Embedding.step)).where(
                *cond
            )
        ).one()
        _check_widths(run_id, n, dim, max_dim)
        ids = np.fromiter(
            session.scalars(sa_select(Embedding.sample_id).where(*cond).order_by(Embedding.sample_id)), np.int64
        )
        meta = EmbeddingSet(run_id, int(n), int(dim), int(max_step or 0), 0, ids)
        sink = make_sink(meta)
        stmt = (
            sa_select(Embedding.sample_id, Embedding.vector)
            .where(*cond)
            .order_by(Embedding.sample_id)
            .execution_options(yield_per=chunk_rows)
        )
        position = 0
        for part in session.execute(stmt).partitions():
            chunk_ids = np.fromiter((r[0] for r in part), dtype=np.int64, count=len(part))
            out = sink.buffer(position, len(part))
            out[...] = np.frombuffer(b"".join(r[1] for r in part), dtype="<f2").reshape(len(part), dim)
            _normalise(out, chunk_ids)
            sink.commit(position, chunk_ids, out)
            position += len(part)
    return meta

"""The one reader of stored embeddings: a run's rows as unit feature rows f = x / ||x||, in sample-id order.

Every consumer reads through here: the prototype k-means (warm-up, repair, refresh), offline curation and the
neighbour index. The rows are a run's own (``embeddings``: posted per manifest, or uploaded in bulk) or a named
embedding set's (``set_embeddings``: one encoder's embeddings of a dataset, read by many offline runs); ``Rows``
says which, and a plain run id stands for that run's. Rows go into a ``Sink``: a float32 matrix (``ArraySink``),
a float16 one (``HalfSink``, half the memory for a whole-dataset read), or the FAISS index fed chunk by chunk (no
second copy of the set).

The source is a session factory or a session. A session factory reads in a snapshot of its own (REPEATABLE READ),
and on Postgres may split the sample-id range over ``parts`` connections that import that one exported snapshot,
so the server reads on several cores. A session reads in its own transaction, on its connection: it sees what that
transaction wrote (the warm-up's last embeddings, stored in the request that then runs the k-means).

On Postgres the rows come through ``COPY (SELECT sample_id, vector ...) TO STDOUT (FORMAT binary)``, drained at the
libpq level (one slice assignment per row into a preallocated buffer, where psycopg's generator-based ``Copy``
would run Python code per row) and parsed chunk by chunk with the record layout of ``pgcopy`` (no Python object
per row); float16 is widened to float32 and normalised a chunk at a time. On SQLite the ORM reads in chunks.

Refusals: a read with no rows or rows of several widths is refused before any vector is read (``check``); rows
that are not finite or all zeros (stored before the upload checks existed) are refused after the read, all of
them named (``BadRows``).
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import select
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray
from psycopg import pq
from sqlalchemy import Engine, false, func
from sqlalchemy import select as sa_select
from sqlalchemy.orm import Session, sessionmaker

from ..curation import unit_rows
from ..db import IDS_PER_STATEMENT, engine_of, is_postgres
from ..errors import ApiError
from ..models import Embedding, SetEmbedding
from .pgcopy import TRAILER, row_layout, strip_header

#: rows converted per chunk: 4096 x 1024 float32 is 16 MB, small enough to stay cache-friendly
CHUNK_ROWS = 4096
#: below this many rows a part is not worth its own connection
MIN_PART_ROWS = 20_000
#: connections a read is split over: the server reads on one core per connection
DEFAULT_PARTS = max(1, min(4, os.cpu_count() or 1))

#: a session factory (the read takes its own snapshot) or a session (the read joins its transaction)
Source = sessionmaker[Session] | Session
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class Rows:
    """Whose stored rows a read covers: a run's own embeddings, or a named embedding set's."""

    model: type[Embedding] | type[SetEmbedding]
    key: str  # the owner's column
    owner: int
    what: str  # how messages name the owner

    @property
    def table(self) -> str:
        return str(self.model.__tablename__)

    @property
    def step_sql(self) -> str:
        return "step" if self.model is Embedding else "0"  # a set's rows have no step


def run_rows(run_id: int) -> Rows:
    return Rows(Embedding, "run_id", int(run_id), f"run {run_id}")


def set_rows(set_id: int) -> Rows:
    return Rows(SetEmbedding, "set_id", int(set_id), f"embedding set {set_id}")


def _rows(owner: int | Rows) -> Rows:
    return owner if isinstance(owner, Rows) else run_rows(owner)


@dataclass(frozen=True)
class EmbeddingSet:
    """What one consistent read saw: the key a cache of anything derived from these rows needs."""

    run_id: int  # the owner: the run (or the named set) whose rows these are
    rows: int
    dim: int  # the narrowest width stored (``max_dim`` when the read is allowed)
    max_dim: int
    max_step: int
    #: changes whenever a row is (re)written, even at the same step (Postgres: sum of row xmins; else 0)
    fingerprint: int
    sample_ids: NDArray[np.int64]  # ascending
    what: str = ""  # how messages name the owner ("run 3", "embedding set 2")

    @property
    def owner(self) -> str:
        return self.what or f"run {self.run_id}"


#: called with the set once it is counted, before any vector is read; raises to refuse the read
Check = Callable[[EmbeddingSet], None]


def half_rows(vectors: Sequence[bytes], dim: int) -> NDArray[np.float16]:
    """Stored ``vector`` column values (little-endian float16, ``dim`` each) as one ``[n, dim]`` array."""
    return np.frombuffer(b"".join(vectors), dtype="<f2").reshape(len(vectors), dim)


def refuse_unreadable(meta: EmbeddingSet) -> None:
    """409 when there is nothing to read, or the rows are of several widths."""
    if not meta.rows:
        raise ApiError(409, "no_embeddings", f"{meta.owner} has no stored embeddings")
    if meta.dim != meta.max_dim:
        raise ApiError(409, "mixed_widths", f"{meta.owner} stores embeddings of widths {meta.dim} to {meta.max_dim}")


class BadRows(ApiError):
    """422: stored rows that are all zeros or not finite, so no direction; ``sample_ids`` names every one."""

    def __init__(self, sample_ids: list[int]) -> None:
        super().__init__(422, "zero_rows", f"samples {sample_ids[:10]} have all-zero or non-finite embeddings")
        self.sample_ids = sample_ids


class Sink(Protocol):
    """Where rows ``start .. start + count`` (in ascending sample-id order) are written, then handed over."""

    def buffer(self, start: int, count: int) -> NDArray[np.float32]: ...

    def commit(self, start: int, ids: NDArray[np.int64], rows: NDArray[np.float32]) -> None: ...


class ArraySink:
    """Rows straight into one preallocated ``[n, dim]`` float32 matrix."""

    def __init__(self, rows: int, dim: int) -> None:
        self.features = np.empty((rows, dim), dtype=np.float32)
        # Fault the pages in now, before the COPY streams: first touches taken while the server is reading (and
        # the page cache grows) were measured several times slower.
        self.features.fill(0)

    def buffer(self, start: int, count: int) -> NDArray[np.float32]:
        return self.features[start : start + count]

    def commit(self, start: int, ids: NDArray[np.int64], rows: NDArray[np.float32]) -> None:
        pass


class HalfSink:
    """Rows into one ``[n, dim]`` float16 matrix (the stored precision: 2 bytes a value for a whole dataset),
    each chunk normalised in a float32 scratch of the reading thread first."""

    def __init__(self, rows: int, dim: int) -> None:
        self.features = np.empty((rows, dim), dtype=np.float16)
        self.scratch = threading.local()

    def buffer(self, start: int, count: int) -> NDArray[np.float32]:
        rows = getattr(self.scratch, "rows", None)
        if rows is None or len(rows) < count:
            rows = self.scratch.rows = np.empty((count, self.features.shape[1]), dtype=np.float32)
        return rows[:count]

    def commit(self, start: int, ids: NDArray[np.int64], rows: NDArray[np.float32]) -> None:
        self.features[start : start + len(rows)] = rows


def read_embeddings(
    source: Source,
    run_id: int | Rows,
    sample_ids: NDArray[np.int64] | None = None,
    parts: int = DEFAULT_PARTS,
    half: bool = False,
    check: Check = refuse_unreadable,
    progress: Progress | None = None,
    chunk_rows: int = CHUNK_ROWS,
) -> tuple[EmbeddingSet, NDArray[np.floating]]:
    """The run's (or a set's) embeddings (or those of ``sample_ids``) as unit rows, float32 (float16 with
    ``half``)."""
    holder: list[ArraySink | HalfSink] = []

    def make(meta: EmbeddingSet) -> Sink:
        holder.append((HalfSink if half else ArraySink)(meta.rows, meta.dim))
        return holder[0]

    meta = scan_embeddings(source, run_id, make, sample_ids, parts, check, progress, chunk_rows)
    return meta, holder[0].features


def scan_embeddings(
    source: Source,
    run_id: int | Rows,
    make_sink: Callable[[EmbeddingSet], Sink],
    sample_ids: NDArray[np.int64] | None = None,
    parts: int = DEFAULT_PARTS,
    check: Check = refuse_unreadable,
    progress: Progress | None = None,
    chunk_rows: int = CHUNK_ROWS,
) -> EmbeddingSet:
    """Stream the rows into ``make_sink(meta)`` (called once, after ``check`` let the counted set through);
    ``progress(rows done, rows)`` after each chunk. Raises ``BadRows`` after the read if any row was unusable."""
    rows = _rows(run_id)
    engine = None if isinstance(source, Session) else engine_of(source)
    if not is_postgres(source if isinstance(source, Session) else engine_of(source)):
        return _orm_scan(source, rows, make_sink, sample_ids, check, progress, chunk_rows)
    with _connection(source) as main:
        where = _where(rows, sample_ids)
        meta = _postgres_meta(main, rows, where, check)
        target = _Target(make_sink(meta), meta, progress)
        ranges = _split(meta.rows, 1 if engine is None else max(1, min(parts, meta.rows // MIN_PART_ROWS)))
        snapshot: str = main.execute("SELECT pg_export_snapshot()").fetchone()[0] if len(ranges) > 1 else ""
        with ThreadPoolExecutor(max_workers=max(1, len(ranges) - 1)) as pool:
            futures = [
                pool.submit(_read_part_in_snapshot, engine, snapshot, rows.table, where, lo, hi, target, chunk_rows)
                for lo, hi in ranges[1:]
                if engine is not None
            ]
            lo, hi = ranges[0]
            _copy_part(main, _part_query(rows.table, where, meta, lo, hi), lo, hi, target, chunk_rows)
            for future in futures:  # the exporting transaction stays open until every importer is done
                future.result()
    target.finish()
    return meta


class _Target:
    """The sink of one read, with what every part shares: the set, progress, and the unusable rows found."""

    def __init__(self, sink: Sink, meta: EmbeddingSet, progress: Progress | None) -> None:
        self.sink, self.meta, self.progress = sink, meta, progress
        self.lock = threading.Lock()
        self.done = 0
        self.bad: list[NDArray[np.int64]] = []
        if progress is not None:
            progress(0, meta.rows)

    def put(self, position: int, ids: NDArray[np.int64], half: NDArray[np.float16]) -> None:
        """Check, widen and normalise one chunk of rows in sample-id order starting at ``position``."""
        if not np.array_equal(ids, self.meta.sample_ids[position : position + len(ids)]):
            raise ValueError(f"{self.meta.owner}: rows out of sample-id order or not in the snapshot")
        out = self.sink.buffer(position, len(ids))
        _widen(out, half)
        with np.errstate(invalid="ignore", divide="ignore"):
            unit_rows(out, out=out)
        bad = ~np.isfinite(out).all(axis=1)
        with self.lock:
            if bad.any():  # the upload refuses such rows; one written some other way must not poison the reader
                self.bad.append(ids[bad])
            elif not self.bad:
                self.sink.commit(position, ids, out)
            self.done += len(ids)
            if self.progress is not None:
                self.progress(self.done, self.meta.rows)

    def finish(self) -> None:
        if self.bad:
            raise BadRows(sorted(np.concatenate(self.bad).tolist()))
        if self.done != self.meta.rows:
            raise ValueError(f"{self.meta.owner}: read {self.done} of the {self.meta.rows} rows in the snapshot")


def stored_ids(sessions: sessionmaker[Session], run_id: int | Rows) -> NDArray[np.int64]:
    """The run's (or set's) sample ids that have an embedding, ascending (ids only: no vector is sent)."""
    rows = _rows(run_id)
    engine = engine_of(sessions)
    if is_postgres(engine):
        with _connection(sessions) as conn:
            return _ids_blob(conn, rows.table, _where(rows, None))
    with sessions() as session:
        model = rows.model
        ids = session.scalars(
            sa_select(model.sample_id).where(getattr(model, rows.key) == rows.owner).order_by(model.sample_id)
        )
        return np.fromiter(ids, dtype=np.int64)


@contextmanager
def _connection(source: Source) -> Iterator[Any]:
    """The psycopg connection to read on: the session's own, in its transaction; or a pooled one in a read-only
    REPEATABLE READ transaction of its own (dropped on error: a connection left in the middle of a COPY cannot
    go back to the pool)."""
    if isinstance(source, Session):
        raw = source.connection().connection.dbapi_connection
        assert raw is not None
        yield raw
        return
    with _raw(engine_of(source)) as conn:
        conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        yield conn
        conn.execute("ROLLBACK")


@contextmanager
def _raw(engine: Engine) -> Iterator[Any]:
    """A pooled psycopg connection in autocommit (we send BEGIN / ROLLBACK ourselves)."""
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


def _where(rows: Rows, sample_ids: NDArray[np.int64] | None) -> str:
    # COPY takes no bind parameters: everything inlined is an int formatted here (or a column name of ``Rows``),
    # never caller text
    clause = f"{rows.key} = {int(rows.owner)}"
    if sample_ids is not None:
        listed = ",".join(str(int(i)) for i in np.asarray(sample_ids, dtype=np.int64).tolist())
        clause += f" AND sample_id = ANY('{{{listed}}}'::bigint[])"
    return clause


def _postgres_meta(conn: Any, rows: Rows, where: str, check: Check) -> EmbeddingSet:
    n, dim, max_dim, max_step, fingerprint = conn.execute(
        f"SELECT count(*), min(dim), max(dim), coalesce(max({rows.step_sql}), 0), "
        f"coalesce(sum(xmin::text::bigint), 0) FROM {rows.table} WHERE {where}"
    ).fetchone()
    empty = np.empty(0, dtype=np.int64)
    counted = EmbeddingSet(
        rows.owner, int(n), int(dim or 0), int(max_dim or 0), int(max_step), int(fingerprint), empty, rows.what
    )
    check(counted)
    ids = _ids_blob(conn, rows.table, where)
    if len(ids) != n:
        raise ValueError(f"{rows.what}: {len(ids)} ids but {n} rows in one snapshot")
    return dataclasses.replace(counted, sample_ids=ids)


def _ids_blob(conn: Any, table: str, where: str) -> NDArray[np.int64]:
    """The ids in one bytea (8 bytes each): 1.2 M ids arrive as ~10 MB, not 1.2 M Python ints."""
    blob = (
        conn.cursor(binary=True)
        .execute(f"SELECT string_agg(int8send(sample_id), ''::bytea ORDER BY sample_id) FROM {table} WHERE {where}")
        .fetchone()[0]
    )
    return np.frombuffer(blob or b"", dtype=">i8").astype(np.int64)


def _split(n: int, parts: int) -> list[tuple[int, int]]:
    edges = np.linspace(0, n, parts + 1).astype(int)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:], strict=True) if b > a] or [(0, 0)]


def _part_query(table: str, where: str, meta: EmbeddingSet, lo: int, hi: int) -> str:
    if hi <= lo:
        return f"COPY (SELECT sample_id, vector FROM {table} WHERE false) TO STDOUT (FORMAT binary)"
    first, last = int(meta.sample_ids[lo]), int(meta.sample_ids[hi - 1])
    # ORDER BY follows the (run_id, sample_id) primary key, so rows land in the positions the ids say
    return (
        f"COPY (SELECT sample_id, vector FROM {table} WHERE {where} AND sample_id BETWEEN {first} AND {last} "
        "ORDER BY sample_id) TO STDOUT (FORMAT binary)"
    )


def _read_part_in_snapshot(
    engine: Engine, snapshot: str, table: str, where: str, lo: int, hi: int, target: _Target, chunk_rows: int
) -> None:
    with _raw(engine) as conn:
        conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        conn.execute(f"SET TRANSACTION SNAPSHOT '{snapshot}'")  # snapshot ids are server-made: [0-9A-F-]
        _copy_part(conn, _part_query(table, where, target.meta, lo, hi), lo, hi, target, chunk_rows)
        conn.execute("ROLLBACK")


def _row_layout(dim: int) -> np.dtype:
    """A COPY row of (sample_id bigint, vector bytea of ``dim`` little-endian float16)."""
    return row_layout([("sid", ">i8"), ("vec", f"({dim},)<f2")])


def _copy_part(conn: Any, query: str, lo: int, hi: int, target: _Target, chunk_rows: int) -> None:
    """Drain one COPY into rows ``lo .. hi`` of the target; libpq hands over one row per message.

    Conversion runs inline between chunks: a helper thread with double buffering was no faster where cores are few
    (the read is CPU-bound: server backends, this loop and the conversion share them; docs/BENCHMARKS.md, P4).
    """
    layout = _row_layout(target.meta.dim)
    record = layout.itemsize
    capacity = chunk_rows * record
    buf = np.empty(capacity + record + 64, dtype=np.uint8)
    view = memoryview(buf)  # type: ignore[arg-type]
    pg = conn.pgconn
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
            data, first = strip_header(bytes(data)), False
            size = len(data)
        if fill + size > capacity:  # convert the whole rows, keep a partial one for the next chunk
            whole = fill - fill % record
            position = _flush(buf[:whole], layout, position, target)
            buf[: fill - whole] = buf[whole:fill]
            fill -= whole
            if fill + size > len(buf):
                buf = np.concatenate([buf[:fill], np.empty(size, dtype=np.uint8)])
                view = memoryview(buf)  # type: ignore[arg-type]
        view[fill : fill + size] = data
        fill += size
    _finish(pg)
    if fill < len(TRAILER) or bytes(buf[fill - len(TRAILER) : fill]) != TRAILER:
        raise ValueError("COPY output does not end with the binary trailer")
    fill -= len(TRAILER)
    if fill % record:
        raise ValueError("COPY output ends with a partial row")
    position = _flush(buf[:fill], layout, position, target)
    if position != hi:
        raise ValueError(f"{target.meta.owner}: read rows {lo}..{position}, the snapshot holds {lo}..{hi}")


def _finish(pg: Any) -> None:
    result = pg.get_result()
    if result is None or result.status != pq.ExecStatus.COMMAND_OK:
        raise RuntimeError(f"COPY failed: {result.error_message.decode() if result else 'no result'}")
    while pg.get_result() is not None:
        pass


def _flush(raw: NDArray[np.uint8], layout: np.dtype, position: int, target: _Target) -> int:
    """Parse whole rows in place and hand them to the target; return the next position."""
    if not len(raw):
        return position
    rows = raw.view(layout)
    dim = target.meta.dim
    if not ((rows["fields"] == 2).all() and (rows["l_sid"] == 8).all() and (rows["l_vec"] == 2 * dim).all()):
        raise ValueError("unexpected row layout in COPY output (a NULL or a vector of another width)")
    target.put(position, rows["sid"].astype(np.int64), rows["vec"])
    return position + len(rows)


def _widen(out: NDArray[np.float32], half: NDArray[np.float16]) -> None:
    """float16 -> float32 straight from the COPY buffer: torch's F16C cast is several times faster than numpy's
    table-driven one; numpy when torch is absent."""
    torch = _torch()
    if torch is None or not half.flags.writeable:  # torch wraps writable arrays only (the ORM's are bytes)
        out[...] = half
    else:
        torch.from_numpy(out).copy_(torch.from_numpy(half))


@cache
def _torch() -> Any:
    try:
        return importlib.import_module("torch")
    except ImportError:  # the service runs without torch too
        return None


def _orm_scan(
    source: Source,
    rows: Rows,
    make_sink: Callable[[EmbeddingSet], Sink],
    sample_ids: NDArray[np.int64] | None,
    check: Check,
    progress: Progress | None,
    chunk_rows: int,
) -> EmbeddingSet:
    """Any other database (the embedded SQLite default): the ORM, ``chunk_rows`` at a time, one transaction."""
    model, run_id = rows.model, rows.owner
    owned = getattr(model, rows.key) == run_id
    step = func.max(Embedding.step) if model is Embedding else func.max(0)
    if sample_ids is None:
        conditions = [[owned]]
    else:
        wanted = np.unique(np.asarray(sample_ids, dtype=np.int64)).tolist()
        conditions = [
            [owned, model.sample_id.in_(wanted[i : i + IDS_PER_STATEMENT])]
            for i in range(0, len(wanted), IDS_PER_STATEMENT)
        ] or [[owned, false()]]
    with _orm_session(source) as session:
        counts = [
            session.execute(sa_select(func.count(), func.min(model.dim), func.max(model.dim), step).where(*where)).one()
            for where in conditions
        ]
        widths = [w for _, low, high, _ in counts for w in (low, high) if w is not None]
        steps = [s for *_, s in counts if s is not None]
        empty = np.empty(0, dtype=np.int64)
        n = sum(c[0] for c in counts)
        counted = EmbeddingSet(
            run_id, n, min(widths, default=0), max(widths, default=0), max(steps, default=0), 0, empty, rows.what
        )
        check(counted)
        ids = [
            np.fromiter(session.scalars(sa_select(model.sample_id).where(*w).order_by(model.sample_id)), np.int64)
            for w in conditions
        ]
        meta = dataclasses.replace(counted, sample_ids=np.concatenate(ids))
        target = _Target(make_sink(meta), meta, progress)
        position = 0
        for where in conditions:
            stmt = (
                sa_select(model.sample_id, model.vector)
                .where(*where)
                .order_by(model.sample_id)
                .execution_options(yield_per=chunk_rows)
            )
            for part in session.execute(stmt).partitions():
                chunk_ids = np.fromiter((r[0] for r in part), dtype=np.int64, count=len(part))
                half = half_rows([r[1] for r in part], meta.dim)
                target.put(position, chunk_ids, half)
                position += len(part)
    target.finish()
    return meta


@contextmanager
def _orm_session(source: Source) -> Iterator[Session]:
    if isinstance(source, Session):
        yield source
        return
    with source() as session:
        yield session

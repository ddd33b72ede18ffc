"""Nearest neighbours of a sample among a run's stored embeddings (cosine), to audit a curation decision.

The index holds the run's unit rows f = x / ||x||, so inner product = cosine similarity.

Index choice: ``IndexFlatIP`` (exact) up to ``FLAT_MAX_ROWS`` rows. A query is one pass over n x D
float32 (1 M x 1024 = 4 GB), which is fine for an admin audit and needs no
training, so it is exact and rebuilds in the time of a read. Beyond that (or with ``kind="ivf"``)
``IndexIVFFlat`` over ~4 sqrt(n) inverted lists, trained on a seeded sample: a query scans ``nprobe``
lists instead of all rows, at the price of approximate answers. Both sit in an ``IndexIDMap2``, so
search answers sample ids and ``reconstruct(sample_id)`` gives a sample's own vector back.

An index is identified by ``IndexKey`` (run, rows, max step, write fingerprint) taken in the same
snapshot as the rows it holds: any new, deleted or re-uploaded embedding gives a new key. The
``NeighbourIndexCache`` keeps the latest index per run in memory and writes it to
``<directory>/<database>-run<id>-<key>.faiss``, so a restarted worker reads the file instead of the
whole table. Builds are plain functions of a session factory and a run id (a worker task can call them).
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import faiss
import numpy as np
from numpy.typing import NDArray
from sqlalchemy import BigInteger, Text, cast, func, literal_column, select
from sqlalchemy.orm import Session, sessionmaker

from ..db import engine_of, is_postgres
from ..models import Embedding
from ..storage.embedding_reader import DEFAULT_PARTS, EmbeddingSet, read_embeddings, scan_embeddings

log = logging.getLogger(__name__)

IndexKind = Literal["auto", "flat", "ivf"]
#: above this many rows ``kind="auto"`` builds an IVF index (a flat one would pass 4 GB at D=1024)
FLAT_MAX_ROWS = 1_000_000
#: training points per inverted list for IVF (FAISS warns below 39)
IVF_POINTS_PER_LIST = 64
#: ``xmin::text::bigint``: the transaction that wrote the row, summed into the same fingerprint the reader takes
_XMIN = cast(cast(literal_column("embeddings.xmin"), Text), BigInteger)


@dataclass(frozen=True)
class IndexKey:
    run_id: int
    rows: int
    max_step: int
    fingerprint: int  # changes when any row is rewritten, e.g. a re-upload at the same step

    @classmethod
    def of(cls, meta: EmbeddingSet) -> IndexKey:
        return cls(meta.run_id, meta.rows, meta.max_step, meta.fingerprint)

    def filename(self, namespace: str) -> str:
        return f"{namespace}-run{self.run_id}-n{self.rows}-s{self.max_step}-f{self.fingerprint}.faiss"


@dataclass(frozen=True)
class IndexState:
    key: IndexKey
    index: Any  # faiss.IndexIDMap2 over IndexFlatIP or IndexIVFFlat
    sample_ids: NDArray[np.int64]  # ascending: the rows the index holds
    kind: Literal["flat", "ivf"]

    @property
    def dim(self) -> int:
        return int(self.index.d)

    def __contains__(self, sample_id: int) -> bool:
        at = int(np.searchsorted(self.sample_ids, sample_id))
        return at < len(self.sample_ids) and int(self.sample_ids[at]) == sample_id


def neighbours(state: IndexState, sample_id: int, k: int) -> list[tuple[int, float]]:
    """The ``k`` samples most similar to ``sample_id`` (cosine, best first), the sample itself left out.

    Raises KeyError when the sample has no row in the index.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    if sample_id not in state:
        raise KeyError(sample_id)
    query = np.asarray(state.index.reconstruct(int(sample_id)), dtype=np.float32).reshape(1, -1)
    # one extra hit for the sample itself; when more than k others tie with it at similarity 1 it may not
    # come back at all, and the first k others are then the right answer anyway
    scores, ids = state.index.search(query, min(k + 1, len(state.sample_ids)))
    hits = [(int(i), float(s)) for s, i in zip(scores[0], ids[0], strict=True) if i >= 0 and i != sample_id]
    return hits[:k]


def build_index(
    sessions: sessionmaker[Session],
    run_id: int,
    kind: IndexKind = "auto",
    nlist: int | None = None,
    nprobe: int | None = None,
    seed: int = 0,
    parts: int = DEFAULT_PARTS,
) -> IndexState:
    """Read the run's embeddings (chunk by chunk, straight into the index) and index them."""
    holder: dict[str, Any] = {}

    def make(meta: EmbeddingSet) -> _IndexSink:
        chosen = ("ivf" if meta.rows > FLAT_MAX_ROWS else "flat") if kind == "auto" else kind
        if chosen == "flat":
            index = faiss.IndexIDMap2(faiss.IndexFlatIP(meta.dim))
        else:
            index = _trained_ivf(sessions, run_id, meta, nlist, nprobe, seed, parts)
        holder.update(index=index, kind=chosen)
        return _IndexSink(index, meta.dim)

    meta = scan_embeddings(sessions, run_id, make, parts=parts)
    return IndexState(IndexKey.of(meta), holder["index"], meta.sample_ids, holder["kind"])


class _IndexSink:
    """Chunks into the index: each reader thread converts into its own scratch rows, adds take turns."""

    def __init__(self, index: Any, dim: int) -> None:
        self.index, self.dim = index, dim
        self.lock = threading.Lock()
        self.scratch = threading.local()

    def buffer(self, start: int, count: int) -> NDArray[np.float32]:
        rows = getattr(self.scratch, "rows", None)
        if rows is None or len(rows) < count:
            rows = self.scratch.rows = np.empty((count, self.dim), dtype=np.float32)
        return rows[:count]

    def commit(self, start: int, ids: NDArray[np.int64], rows: NDArray[np.float32]) -> None:
        with self.lock:
            self.index.add_with_ids(rows, ids)


def _trained_ivf(
    sessions: sessionmaker[Session],
    run_id: int,
    meta: EmbeddingSet,
    nlist: int | None,
    nprobe: int | None,
    seed: int,
    parts: int,
) -> Any:
    lists = nlist or max(1, min(int(4 * np.sqrt(meta.rows)), meta.rows // IVF_POINTS_PER_LIST))
    ivf = faiss.IndexIVFFlat(faiss.IndexFlatIP(meta.dim), meta.dim, lists, faiss.METRIC_INNER_PRODUCT)
    want = min(meta.rows, lists * IVF_POINTS_PER_LIST)
    sample = np.sort(np.random.default_rng([seed, 2]).choice(meta.sample_ids, size=want, replace=False))
    # Another snapshot than the scan's: a row written in between only changes which points train the
    # coarse quantizer, never which rows the index holds.
    _, train = read_embeddings(sessions, run_id, sample, parts)
    ivf.cp.seed = seed
    ivf.train(train)
    ivf.nprobe = nprobe or max(1, lists // 16)
    ivf.make_direct_map()  # reconstruct(sample_id) needs the row -> list map
    return faiss.IndexIDMap2(ivf)


def current_key(sessions: sessionmaker[Session], run_id: int) -> IndexKey:
    """The key the run's embeddings have now, from the heap alone (no vector is read)."""
    fingerprint = func.sum(_XMIN) if is_postgres(engine_of(sessions)) else func.sum(0)
    with sessions() as session:
        count, step, written = session.execute(
            select(func.count(), func.max(Embedding.step), fingerprint).where(Embedding.run_id == run_id)
        ).one()
    return IndexKey(run_id, int(count), int(step or 0), int(written or 0))


def save_index(state: IndexState, path: Path) -> None:
    """Write atomically (temp file + rename): a crash mid-write never leaves a file a reader would trust."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    faiss.write_index(state.index, str(tmp))
    os.replace(tmp, path)


def load_index(path: Path, key: IndexKey) -> IndexState:
    index: Any = faiss.read_index(str(path))
    ids = np.sort(faiss.vector_to_array(index.id_map).astype(np.int64))
    if len(ids) != key.rows:
        raise ValueError(f"{path}: holds {len(ids)} rows, its name says {key.rows}")
    inner = faiss.downcast_index(index.index)
    return IndexState(key, index, ids, "ivf" if isinstance(inner, faiss.IndexIVF) else "flat")


def database_namespace(sessions: sessionmaker[Session]) -> str:
    """Files of different databases (or test databases reusing run ids) never share a name."""
    url = engine_of(sessions).url.render_as_string(hide_password=True)
    return hashlib.sha256(url.encode()).hexdigest()[:12]


class NeighbourIndexCache:
    """The latest index of up to ``max_runs`` runs in memory (least recently used dropped first), and of
    every run on disk under ``directory`` (None: memory only). One build per run at a time."""

    def __init__(self, directory: Path | None, max_runs: int = 4, kind: IndexKind = "auto") -> None:
        self.directory, self.max_runs, self.kind = directory, max_runs, kind
        self._states: OrderedDict[tuple[str, int], IndexState] = OrderedDict()
        self._locks: dict[tuple[str, int], threading.Lock] = {}
        self._guard = threading.Lock()

    def cached(self, sessions: sessionmaker[Session], run_id: int) -> tuple[IndexKey, IndexState | None]:
        """The run's current key, and its index when one is in memory or on disk (never builds)."""
        namespace = database_namespace(sessions)
        key = current_key(sessions, run_id)
        state = self._remembered((namespace, run_id), key) or self._from_file(namespace, key)
        if state is not None:
            self._remember((namespace, run_id), state)
        return key, state

    def get(self, sessions: sessionmaker[Session], run_id: int) -> IndexState:
        namespace = database_namespace(sessions)
        slot = (namespace, run_id)
        with self._guard:
            run_lock = self._locks.setdefault(slot, threading.Lock())
        with run_lock:
            key = current_key(sessions, run_id)
            state = self._remembered(slot, key)
            if state is None:
                state = self._from_file(namespace, key) or self._build(sessions, namespace, run_id)
                self._remember(slot, state)
            return state

    def _remembered(self, slot: tuple[str, int], key: IndexKey) -> IndexState | None:
        with self._guard:
            state = self._states.get(slot)
            if state is None or state.key != key:
                return None
            self._states.move_to_end(slot)
            return state

    def _remember(self, slot: tuple[str, int], state: IndexState) -> None:
        with self._guard:
            self._states[slot] = state
            self._states.move_to_end(slot)
            while len(self._states) > self.max_runs:
                self._states.popitem(last=False)

    def _from_file(self, namespace: str, key: IndexKey) -> IndexState | None:
        if self.directory is None:
            return None
        path = self.directory / key.filename(namespace)
        if not path.is_file():
            return None
        try:
            return load_index(path, key)
        except (RuntimeError, ValueError, AttributeError) as exc:  # unreadable or truncated: rebuild it
            log.warning("neighbour index %s unreadable (%s); rebuilding", path, exc)
            return None

    def _build(self, sessions: sessionmaker[Session], namespace: str, run_id: int) -> IndexState:
        state = build_index(sessions, run_id, self.kind)
        if self.directory is not None:
            save_index(state, self.directory / state.key.filename(namespace))
            for old in self.directory.glob(f"{namespace}-run{run_id}-*.faiss"):
                if old.name != state.key.filename(namespace):
                    old.unlink(missing_ok=True)  # an older key of this run is never asked for again
        return state

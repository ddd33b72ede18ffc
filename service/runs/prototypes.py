"""A run's prototype versions: the current one (cached per process), and new ones from k-means over stored embeddings.

``refresh_prototypes`` is the one k-means from stored rows: read them (``storage.embedding_reader``) -> unit rows ->
the engine's ``init_prototypes`` (FAISS, fixed seed, every row a training point, unit centroids) -> the run's next
``PrototypeVersion``. The warm-up (in the request that ends it, or on a worker) and an admin's repair run it over
the rows their step names; the EMA versions of curation steps are stored by ``store_version`` too.

Given a session (which holds the run lock) everything happens in its transaction. Given a session factory (a
worker) the rows are read in a snapshot of their own and the k-means runs outside any transaction, which can take
minutes on a large set and must not hold the run lock; the version is then stored under the lock if ``claim``
still agrees, so versions only move forward and a concurrent curation step sees the old or the new prototypes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from sqlalchemy.orm import Session, sessionmaker

from ..curation import CurationConfig, check_prototypes, init_prototypes
from ..errors import ApiError, StepFailure
from ..models import PrototypeVersion, Run
from ..storage.embedding_reader import (
    DEFAULT_PARTS,
    BadRows,
    Check,
    EmbeddingSet,
    Source,
    read_embeddings,
    refuse_unreadable,
    stored_ids,
)
from .access import load_run, lock_run

#: (run, version) -> prototypes, so a worker loads a version from the database only when it changed
PrototypeCache = dict[tuple[int, int], NDArray[np.float32]]


@dataclass(frozen=True)
class RefreshResult:
    run_id: int
    version: int
    k: int
    dim: int
    rows: int  # training points used
    read_seconds: float  # database -> float32 unit rows
    kmeans_seconds: float
    store_seconds: float


def version_vectors(version: PrototypeVersion) -> NDArray[np.float32]:
    """A stored version's prototypes p_k as ``[K, D]`` float32 (a read-only view of its bytes)."""
    return np.frombuffer(version.vectors, dtype=np.float32).reshape(version.k, version.dim)


def current_prototypes(session: Session, run: Run, cache: PrototypeCache | None = None) -> NDArray[np.float32]:
    key = (run.id, run.prototype_version)
    if cache is not None and key in cache:
        return cache[key]
    version = session.get(PrototypeVersion, key)
    if version is None:
        raise StepFailure(409, "no_prototypes", f"run {run.id} has no prototypes yet (phase {run.phase})")
    protos = version_vectors(version)
    try:
        check_prototypes(protos)
    except ValueError as exc:  # e.g. written by an older release from unchecked embeddings
        raise StepFailure(409, "bad_prototypes", f"run {run.id}'s prototype version {version.version}: {exc}") from exc
    remember(cache, run.id, run.prototype_version, protos)
    return protos


def remember(cache: PrototypeCache | None, run_id: int, version: int, protos: NDArray[np.float32]) -> None:
    if cache is None:
        return
    for key in [key for key in cache if key[0] == run_id]:
        del cache[key]  # versions only move forward: an older one is never asked for again
    cache[(run_id, version)] = protos


def store_version(session: Session, run: Run, protos: NDArray[np.float32], usage: list[int] | None = None) -> int:
    """The run's next prototype version (usage: kept rows per prototype of the update that made it, zeros for
    k-means); the caller holds the run lock and commits."""
    version = run.prototype_version + 1
    k = int(protos.shape[0])
    session.add(
        PrototypeVersion(
            run_id=run.id,
            version=version,
            k=k,
            dim=int(protos.shape[1]),
            vectors=np.ascontiguousarray(protos, dtype=np.float32).tobytes(),
            usage=[0] * k if usage is None else usage,
            step=run.step,
        )
    )
    run.prototype_version = version
    return version


def training_sample(
    sessions: sessionmaker[Session], run_id: int, sample_rows: int | None, seed: int
) -> NDArray[np.int64] | None:
    """``sample_rows`` of the run's embedded samples, a seeded uniform draw (None: all of them).

    Drawn from the ids alone, so only the chosen vectors are read: a 100 k refresh of a 1.2 M run reads
    100 k rows. The stream ``[seed, 1]`` keeps the draw independent of the k-means seed's own stream.
    """
    if sample_rows is None:
        return None
    if sample_rows < 1:
        raise ValueError(f"sample_rows must be at least 1, got {sample_rows}")
    ids = stored_ids(sessions, run_id)
    if sample_rows >= len(ids):
        return None
    return np.sort(np.random.default_rng([seed, 1]).choice(ids, size=sample_rows, replace=False))


def enough_rows(k: int) -> Check:
    """Refuse what the reader refuses, and fewer rows than prototypes (409 ``too_few_embeddings``)."""

    def check(meta: EmbeddingSet) -> None:
        refuse_unreadable(meta)
        if meta.rows < k:
            raise ApiError(
                409, "too_few_embeddings", f"run {meta.run_id} stores {meta.rows} embeddings; k={k} needs more"
            )

    return check


def refresh_prototypes(
    source: Source,
    run_id: int,
    k: int,
    seed: int,
    iterations: int = 20,
    sample_rows: int | None = None,
    parts: int = DEFAULT_PARTS,
    sample_ids: NDArray[np.int64] | None = None,
    check: Check | None = None,
    claim: Callable[[Run], bool] | None = None,
) -> RefreshResult | None:
    """k-means over the run's stored embeddings (those of ``sample_ids``, or a seeded draw of ``sample_rows``, or
    all); the centroids become the run's next prototype version. None when ``claim(run)``, asked under the run
    lock before storing, says no.

    Raises ApiError 404 (unknown run), what ``check`` raises (by default 409 ``no_embeddings`` / ``mixed_widths``
    / ``too_few_embeddings``), ``BadRows`` (422 ``zero_rows``); ValueError for a bad ``k`` / ``sample_rows``.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    start = time.perf_counter()
    if isinstance(source, Session):
        run = load_run(source, run_id)
        features = _read(source, run_id, sample_ids, parts, check or enough_rows(k))
    else:
        with source() as session:
            load_run(session, run_id)
        if sample_ids is None:
            sample_ids = training_sample(source, run_id, sample_rows, seed)
        features = _read(source, run_id, sample_ids, parts, check or enough_rows(k))
    read_done = time.perf_counter()
    rows, dim = features.shape
    prototypes = init_prototypes(features, k, seed, iterations)
    del features  # the training set can be GBs: gone before the write
    kmeans_done = time.perf_counter()
    if isinstance(source, Session):
        version: int | None = store_version(source, run, prototypes) if claim is None or claim(run) else None
    else:
        version = _store(source, run_id, prototypes, claim)
    if version is None:
        return None
    return RefreshResult(
        run_id=run_id,
        version=version,
        k=k,
        dim=dim,
        rows=rows,
        read_seconds=read_done - start,
        kmeans_seconds=kmeans_done - read_done,
        store_seconds=time.perf_counter() - kmeans_done,
    )


def _read(
    source: Source, run_id: int, sample_ids: NDArray[np.int64] | None, parts: int, check: Check
) -> NDArray[np.float32]:
    _, features = read_embeddings(source, run_id, sample_ids, parts, check=check)
    return features.astype(np.float32, copy=False)


def _store(
    sessions: sessionmaker[Session], run_id: int, prototypes: NDArray[np.float32], claim: Callable[[Run], bool] | None
) -> int | None:
    with sessions() as session:
        run = lock_run(session, run_id)  # serialised with curation steps, which move the version too
        if claim is not None and not claim(run):
            session.rollback()
            return None
        version = store_version(session, run, prototypes)
        session.commit()
        return version


def step_refusals(what: str, k: int) -> Check:
    """A run step's k-means (warm-up, repair) refuses its rows as StepFailures: the run's own data stops it."""

    def check(meta: EmbeddingSet) -> None:
        if meta.rows < k:
            raise StepFailure(409, "warmup_too_small", f"{what}: {meta.rows} stored embeddings; k={k} needs more")
        if meta.dim != meta.max_dim:
            raise StepFailure(409, "mixed_widths", f"{what}: stored embeddings of several widths")

    return check


def step_kmeans(
    source: Source,
    run: Run | int,
    config: CurationConfig,
    sample_ids: NDArray[np.int64],
    what: str,
    claim: Callable[[Run], bool] | None = None,
) -> RefreshResult | None:
    """``refresh_prototypes`` for a step of the run over ``sample_ids``, with the run's config; unusable rows stop
    the run naming them (409 ``bad_stored_embeddings``), so an admin can exclude them."""
    run_id = run if isinstance(run, int) else run.id
    try:
        return refresh_prototypes(
            source,
            run_id,
            config.k,
            config.seed,
            config.kmeans_iterations,
            sample_ids=sample_ids,
            check=step_refusals(what, config.k),
            claim=claim,
        )
    except BadRows as exc:
        ids = exc.sample_ids
        raise StepFailure(
            409,
            "bad_stored_embeddings",
            f"{what}: samples {ids[:10]} have stored embeddings that are not finite or all zeros; exclude them",
            sample_ids=ids[:100],
        ) from exc

"""Prototype refresh from a run's stored embeddings: the worker path behind budget P4 (SPEC §5).

read the stored rows (fast binary COPY, ``embedding_reader``) -> unit rows -> the warm-up k-means of
SPEC §2.1 (``workers.curation.init_prototypes``: FAISS, fixed seed, every row a training point, centroids
L2-normalised) -> one new ``PrototypeVersion`` row, committed with the run's ``prototype_version`` under
the run row lock, so versions only move forward and a concurrent curation step sees either the old or the
new prototypes, never half of a write.

A plain function of a session factory and a run id, so a Celery task (or a test, or the bench) calls it
as is. The k-means runs outside any transaction: it can take minutes and must not hold the run lock.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from sqlalchemy.orm import Session, sessionmaker

from service.curation import init_prototypes
from service.errors import ApiError
from service.models import PrototypeVersion, Run
from service.runs.schedule import lock_run

from ..storage.embedding_reader import DEFAULT_PARTS, read_embeddings, stored_ids


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


def refresh_prototypes(
    sessions: sessionmaker[Session],
    run_id: int,
    k: int,
    seed: int,
    iterations: int = 20,
    sample_rows: int | None = None,
    parts: int = DEFAULT_PARTS,
) -> RefreshResult:
    """k-means over the run's stored embeddings; store the centroids as the run's next prototype version.

    Raises ApiError 404 (unknown run), 409 ``no_embeddings`` / ``mixed_widths`` / ``too_few_embeddings``,
    422 ``zero_rows``; ValueError for a bad ``k`` / ``sample_rows``.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    with sessions() as session:
        if session.get(Run, run_id) is None:
            raise ApiError(404, "unknown_run", f"run {run_id} does not exist")
    start = time.perf_counter()
    meta, features = read_embeddings(sessions, run_id, training_sample(sessions, run_id, sample_rows, seed), parts)
    if meta.rows < k:
        raise ApiError(409, "too_few_embeddings", f"run {run_id} stores {meta.rows} embeddings; k={k} needs more")
    read_done = time.perf_counter()
    prototypes = init_prototypes(features, k, seed, iterations)
    del features  # the training set can be GBs: gone before the write
    kmeans_done = time.perf_counter()
    version = _store(sessions, run_id, prototypes)
    return RefreshResult(
        run_id=run_id,
        version=version,
        k=k,
        dim=meta.dim,
        rows=meta.rows,
        read_seconds=read_done - start,
        kmeans_seconds=kmeans_done - read_done,
        store_seconds=time.perf_counter() - kmeans_done,
    )


def _store(sessions: sessionmaker[Session], run_id: int, prototypes: NDArray[np.float32]) -> int:
    with sessions() as session:
        run = lock_run(session, run_id)  # serialised with curation steps, which move the version too
        version = run.prototype_version + 1
        session.add(
            PrototypeVersion(
                run_id=run_id,
                version=version,
                k=int(prototypes.shape[0]),
                dim=int(prototypes.shape[1]),
                vectors=np.ascontiguousarray(prototypes, dtype=np.float32).tobytes(),
                usage=[0] * int(prototypes.shape[0]),  # as at warm-up: usage counts the updates that follow
                step=run.step,
            )
        )
        run.prototype_version = version
        session.commit()
        return version

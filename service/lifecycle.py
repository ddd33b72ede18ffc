"""The run schedule (warmup -> curation -> subset -> done) and the two compute steps, run in-process.

Epoch 0 is the warm-up pass over ``warmup_samples`` random accepted samples; epochs 1..curation_epochs
curate every accepted sample; the remaining epochs up to ``epochs`` train on the curated subset.
Callers hold the run row lock (``lock_run``), so phase changes and prototype versions are serialised.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from numpy.typing import NDArray
from sqlalchemy import select
from sqlalchemy.orm import Session

from workers.curation import BAND_LABELS, Backend, CurationConfig, init_prototypes, select_batch, update_prototypes

from .arrays import unit_rows
from .bulk import insert_decisions
from .errors import ApiError
from .leasing import epoch_open, materialise_epoch
from .models import Decision, Embedding, EpochItem, Manifest, PrototypeVersion, Run, Sample


def lock_run(session: Session, run_id: int) -> Run:
    connection = session.connection()
    if connection.dialect.name == "sqlite":
        # SQLite ignores FOR UPDATE, and pysqlite opens its transaction only at the first write: two requests of
        # one run (a trainer's lease and its background ack) could both read the old epoch and both advance it.
        # Taking the database write lock before reading the run serialises them as the row lock does on Postgres.
        dbapi = connection.connection.dbapi_connection
        if not getattr(dbapi, "in_transaction", True):
            connection.exec_driver_sql("BEGIN IMMEDIATE")
    run = session.scalar(select(Run).where(Run.id == run_id).with_for_update())
    if run is None:
        raise ApiError(404, "unknown_run", f"run {run_id} does not exist")
    return run


def run_config(run: Run) -> CurationConfig:
    return CurationConfig.model_validate(run.config)


def accepted_samples(session: Session, dataset_id: int) -> NDArray[np.int64]:
    ids = session.scalars(select(Sample.id).where(Sample.dataset_id == dataset_id, Sample.status == "accepted"))
    return np.fromiter(ids, dtype=np.int64)


def start(session: Session, run: Run) -> None:
    """Materialise the warm-up epoch: a seeded random sample of the accepted samples."""
    config = run_config(run)
    pool = np.sort(accepted_samples(session, run.dataset_id))
    if len(pool) < config.k:
        raise ApiError(422, "too_few_samples", f"the dataset has {len(pool)} accepted samples; k={config.k} needs more")
    size = min(config.warmup_samples, len(pool))
    warmup = np.random.default_rng([run.seed, 0]).choice(pool, size=size, replace=False)
    materialise_epoch(session, run.id, run.seed, 0, warmup)


def subset_ids(session: Session, run: Run) -> NDArray[np.int64]:
    """Union of kept samples over the curation epochs (SPEC §2.4)."""
    kept = session.scalars(
        select(Decision.sample_id).where(Decision.run_id == run.id, Decision.kept.is_(True)).distinct()
    )
    return np.fromiter(kept, dtype=np.int64)


#: (run, version) -> prototypes, so a worker loads a version from the database only when it changed
PrototypeCache = dict[tuple[int, int], NDArray[np.float32]]


def advance_if_epoch_done(session: Session, run: Run, defer_init: Callable[[Run], None] | None = None) -> None:
    """Move to the next epoch (or phase) once every row of the current epoch is done.

    After warm-up the prototypes are initialised by k-means: inline, or, with ``defer_init``, by a worker
    task that calls this again once version 1 exists.
    """
    while run.phase != "done" and not epoch_open(session, run.id, run.epoch):
        config = run_config(run)
        if run.phase == "warmup" and run.prototype_version == 0:
            if defer_init is not None:
                defer_init(run)
                return
            init_warmup_prototypes(session, run)
        next_epoch = run.epoch + 1
        if next_epoch <= config.curation_epochs:
            run.phase, pool = "curation", accepted_samples(session, run.dataset_id)
        elif next_epoch <= config.epochs:
            run.phase = "subset"
            pool = subset_ids(session, run) if config.curation_epochs else accepted_samples(session, run.dataset_id)
        else:
            run.phase = "done"
            break
        run.epoch = next_epoch
        materialise_epoch(session, run.id, run.seed, next_epoch, pool)


def init_warmup_prototypes(session: Session, run: Run) -> None:
    """Prototypes version 1: k-means over the warm-up epoch's stored embeddings."""
    config = run_config(run)
    rows = session.execute(
        select(Embedding.dim, Embedding.vector)
        .join(EpochItem, (EpochItem.sample_id == Embedding.sample_id) & (EpochItem.run_id == Embedding.run_id))
        .where(Embedding.run_id == run.id, EpochItem.epoch == 0)
        .order_by(Embedding.sample_id)
    ).all()
    if len(rows) < config.k:
        raise ApiError(409, "warmup_too_small", f"warm-up produced {len(rows)} embeddings; k={config.k} needs more")
    features = unit_rows(np.stack([np.frombuffer(v, dtype=np.float16) for _, v in rows]))
    protos = init_prototypes(features, config.k, config.seed, config.kmeans_iterations)
    session.add(
        PrototypeVersion(
            run_id=run.id,
            version=1,
            k=config.k,
            dim=protos.shape[1],
            vectors=protos.tobytes(),
            usage=[0] * config.k,
            step=0,
        )
    )
    run.prototype_version = 1


def current_prototypes(session: Session, run: Run, cache: PrototypeCache | None = None) -> NDArray[np.float32]:
    key = (run.id, run.prototype_version)
    if cache is not None and key in cache:
        return cache[key]
    version = session.get(PrototypeVersion, key)
    if version is None:
        raise ApiError(409, "no_prototypes", f"run {run.id} has no prototypes yet (phase {run.phase})")
    protos = np.frombuffer(version.vectors, dtype=np.float32).reshape(version.k, version.dim)
    _remember(cache, run.id, run.prototype_version, protos)
    return protos


def _remember(cache: PrototypeCache | None, run_id: int, version: int, protos: NDArray[np.float32]) -> None:
    if cache is None:
        return
    for key in [key for key in cache if key[0] == run_id]:
        del cache[key]  # versions only move forward: an older one is never asked for again
    cache[(run_id, version)] = protos


def curate_step(
    session: Session,
    run: Run,
    manifest: Manifest,
    embeddings: NDArray,
    cache: PrototypeCache | None = None,
    backend: Backend | None = None,
) -> dict[str, Any]:
    """Select on the manifest's super-batch, apply the Sinkhorn EMA, persist decisions and the new version."""
    config = run_config(run)
    protos = current_prototypes(session, run, cache)
    if embeddings.shape[1] != protos.shape[1]:
        raise ApiError(422, "bad_width", f"embeddings have width {embeddings.shape[1]}, prototypes {protos.shape[1]}")
    features = unit_rows(embeddings)
    selection = select_batch(features, protos, config, seed=(run.seed, manifest.epoch, manifest.step), backend=backend)
    moved, usage = update_prototypes(protos, features[selection.keep], config, backend)
    used, new = run.prototype_version, run.prototype_version + 1
    run.step += 1
    session.add(
        PrototypeVersion(
            run_id=run.id,
            version=new,
            k=config.k,
            dim=moved.shape[1],
            vectors=moved.tobytes(),
            usage=usage.tolist(),
            step=run.step,
        )
    )
    run.prototype_version = new
    _remember(cache, run.id, new, moved)
    insert_decisions(
        session,
        run.id,
        np.asarray(manifest.sample_ids, dtype=np.int64),
        manifest.epoch,
        run.step,
        manifest.id,
        selection.prototype,
        selection.distance,
        selection.band,
        selection.keep,
        used,
    )
    return {
        "manifest_id": manifest.id,
        "phase": "curation",
        "epoch": manifest.epoch,
        "step": manifest.step,
        "prototype_version": used,
        "new_prototype_version": new,
        "keep": selection.keep.tolist(),
        "bands": [BAND_LABELS[b] for b in selection.band],
        "prototypes": selection.prototype.tolist(),
        "distances": selection.distance.tolist(),
        "kept": int(selection.keep.sum()),
    }

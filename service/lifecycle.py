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
from sqlalchemy import Select, select
from sqlalchemy.orm import Session, object_session

from workers.curation import (
    BAND_LABELS,
    Backend,
    CurationConfig,
    check_prototypes,
    init_prototypes,
    select_batch,
    update_prototypes,
)

from .arrays import float16_problems, unit_rows
from .bulk import insert_decisions
from .errors import ApiError, StepFailure
from .failures import STEP_INIT, clear_failure, is_infrastructure, record_failure, stopped
from .leasing import epoch_open, materialise_epoch
from .models import Decision, Embedding, EpochItem, Manifest, PrototypeVersion, Run, RunExclusion, Sample

#: what brings the prototypes of a run out of warm-up: k-means here (embedded) or a worker task asked for
InitPrototypes = Callable[[Run], None]


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


def in_pool(run: Run) -> list[Any]:
    """The samples a run hands out: accepted in its dataset and not left out of this run."""
    left_out = select(RunExclusion.sample_id).where(RunExclusion.run_id == run.id)
    return [Sample.dataset_id == run.dataset_id, Sample.status == "accepted", Sample.id.not_in(left_out)]


def run_pool(session: Session, run: Run) -> NDArray[np.int64]:
    ids = session.scalars(select(Sample.id).where(*in_pool(run)))
    return np.fromiter(ids, dtype=np.int64)


def start(session: Session, run: Run) -> None:
    """Materialise the warm-up epoch: a seeded random sample of the accepted samples."""
    config = run_config(run)
    pool = np.sort(run_pool(session, run))
    if len(pool) < config.k:
        raise ApiError(422, "too_few_samples", f"the dataset has {len(pool)} accepted samples; k={config.k} needs more")
    size = min(config.warmup_samples, len(pool))
    warmup = np.random.default_rng([run.seed, 0]).choice(pool, size=size, replace=False)
    materialise_epoch(session, run.id, run.seed, 0, warmup)


def subset_ids(session: Session, run: Run) -> NDArray[np.int64]:
    """Union of kept samples over the curation epochs (SPEC §2.4), less any left out since."""
    kept = select(Decision.sample_id).where(Decision.run_id == run.id, Decision.kept.is_(True))
    ids = session.scalars(select(Sample.id).where(Sample.id.in_(kept), *in_pool(run)))
    return np.fromiter(ids, dtype=np.int64)


#: (run, version) -> prototypes, so a worker loads a version from the database only when it changed
PrototypeCache = dict[tuple[int, int], NDArray[np.float32]]


def advance_if_epoch_done(session: Session, run: Run, init: InitPrototypes) -> None:
    """Move to the next epoch (or phase) once every row of the current epoch is done.

    After warm-up the prototypes come from ``init``: k-means here (``init_or_record``), or a worker task asked
    for (which calls this again once version 1 exists). A stopped run stays where it is.
    """
    while run.phase != "done" and not epoch_open(session, run.id, run.epoch):
        config = run_config(run)
        if run.phase == "warmup" and run.prototype_version == 0:
            if stopped(run):
                return
            init(run)
            if run.prototype_version == 0:
                return
        next_epoch = run.epoch + 1
        if next_epoch <= config.curation_epochs:
            run.phase, pool = "curation", run_pool(session, run)
        elif next_epoch <= config.epochs:
            run.phase = "subset"
            pool = subset_ids(session, run) if config.curation_epochs else run_pool(session, run)
        else:
            run.phase = "done"
            break
        run.epoch = next_epoch
        materialise_epoch(session, run.id, run.seed, next_epoch, pool)


def init_or_record(run: Run, limit: int) -> None:
    """The warm-up k-means in the caller's transaction; a failure is noted on the run (``service.failures``)
    instead of failing the request or task that ran it, so what triggered it (a trainer's last warm-up post, a
    lease) still succeeds and the run shows why it does not move on."""
    session = object_session(run)
    assert session is not None
    try:
        with session.begin_nested():
            init_warmup_prototypes(session, run)
    except Exception as exc:
        if is_infrastructure(exc):
            raise
        record_failure(run, STEP_INIT, exc, limit)
    else:
        clear_failure(run)


def _stored_features(session: Session, run: Run, samples: Select[Any] | list[int], what: str) -> NDArray[np.float32]:
    """Unit rows of the run's stored embeddings of ``samples`` (a query of ids, or ids), in sample order;
    StepFailure when there are fewer than k, or some are unusable (stored before float16 range checks), naming
    those samples."""
    config = run_config(run)
    rows: list[Any] = []
    chunks = [samples] if isinstance(samples, Select) else [samples[i : i + 1000] for i in range(0, len(samples), 1000)]
    for chunk in chunks:  # id lists in chunks: drivers bound the parameters of one statement
        rows += session.execute(
            select(Embedding.sample_id, Embedding.dim, Embedding.vector).where(
                Embedding.run_id == run.id, Embedding.sample_id.in_(chunk)
            )
        ).all()
    rows.sort(key=lambda row: row[0])
    if len(rows) < config.k:
        raise StepFailure(409, "warmup_too_small", f"{what}: {len(rows)} stored embeddings; k={config.k} needs more")
    if len({dim for _, dim, _ in rows}) > 1:
        raise StepFailure(409, "mixed_widths", f"{what}: stored embeddings of several widths")
    vectors = np.stack([np.frombuffer(v, dtype=np.float16) for _, _, v in rows])
    nonfinite, zero = float16_problems(vectors)
    bad = np.union1d(nonfinite, zero)
    if len(bad):
        ids = [rows[i][0] for i in bad.tolist()]
        raise StepFailure(
            409,
            "bad_stored_embeddings",
            f"{what}: samples {ids[:10]} have stored embeddings that are not finite or all zeros; exclude them",
            sample_ids=ids[:100],
        )
    return unit_rows(vectors)


def _store_version(session: Session, run: Run, protos: NDArray[np.float32]) -> None:
    version = run.prototype_version + 1
    session.add(
        PrototypeVersion(
            run_id=run.id,
            version=version,
            k=int(protos.shape[0]),
            dim=int(protos.shape[1]),
            vectors=np.ascontiguousarray(protos, dtype=np.float32).tobytes(),
            usage=[0] * int(protos.shape[0]),
            step=run.step,
        )
    )
    run.prototype_version = version


def init_warmup_prototypes(session: Session, run: Run) -> None:
    """Prototypes version 1: k-means over the warm-up epoch's stored embeddings."""
    config = run_config(run)
    warmup = select(EpochItem.sample_id).where(EpochItem.run_id == run.id, EpochItem.epoch == 0)
    features = _stored_features(session, run, warmup, "warm-up")
    _store_version(session, run, init_prototypes(features, config.k, config.seed, config.kmeans_iterations))


def reinit_prototypes(session: Session, run: Run) -> None:
    """A new prototype version from k-means over ``warmup_samples`` of the run's stored embeddings (a seeded
    draw): an admin's repair when the current prototypes are unusable."""
    config = run_config(run)
    ids = np.fromiter(session.scalars(select(Embedding.sample_id).where(Embedding.run_id == run.id)), dtype=np.int64)
    rng = np.random.default_rng([config.seed, run.prototype_version, 3])
    chosen = rng.choice(ids, size=min(len(ids), config.warmup_samples), replace=False) if len(ids) else ids
    features = _stored_features(session, run, sorted(chosen.tolist()), "prototype re-initialisation")
    _store_version(session, run, init_prototypes(features, config.k, config.seed, config.kmeans_iterations))


def current_prototypes(session: Session, run: Run, cache: PrototypeCache | None = None) -> NDArray[np.float32]:
    key = (run.id, run.prototype_version)
    if cache is not None and key in cache:
        return cache[key]
    version = session.get(PrototypeVersion, key)
    if version is None:
        raise StepFailure(409, "no_prototypes", f"run {run.id} has no prototypes yet (phase {run.phase})")
    protos = np.frombuffer(version.vectors, dtype=np.float32).reshape(version.k, version.dim)
    try:
        check_prototypes(protos)
    except ValueError as exc:  # e.g. written by an older release from unchecked embeddings
        raise StepFailure(409, "bad_prototypes", f"run {run.id}'s prototype version {version.version}: {exc}") from exc
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

"""Offline curation of a run's stored embeddings: read, curate, write decisions, mark the run done.

The curation itself is the engine's ``curate_offline``, called on the run's features: the stored vectors as unit
rows (float16, the stored precision, so a whole dataset costs 2 bytes a value), in sample-id order, taken in the
order of the key they were uploaded by (``chexcurate curate`` does the same for a file: docs/DATA.md). The rows are
the run's own embeddings, or the named embedding set it references (stored once, read by every run of a sweep).
Given those features and the seed, the job and the in-memory engine keep exactly the same rows; the job adds only
I/O around it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session, sessionmaker

from ..curation import Backend, CurationConfig, OfflineCuration, curate_offline, patient_codes
from ..errors import ApiError, unknown_run
from ..models import Decision, NamedSet, PrototypeVersion, Run, Sample
from ..runs.access import run_config
from ..storage.decisions import insert_decisions
from ..storage.embedding_reader import (
    CHUNK_ROWS,
    DEFAULT_PARTS,
    Progress,
    Rows,
    Source,
    read_embeddings,
    run_rows,
    set_rows,
)
from .progress import ProgressCallback, ProgressRecorder

#: ``Decision.manifest_id`` of offline decisions: there is no manifest, and it tells them from online ones
OFFLINE_MANIFEST = "offline"
#: offline decisions belong to the (single) curation epoch
OFFLINE_EPOCH = 1
#: decision rows per binary COPY payload (~90 bytes each)
WRITE_ROWS = 200_000


def _check_offline(session: Session, run: Run | None, run_id: int) -> Run:
    """The run exists and no trainer curates it online: offline results would mix with (or end) that."""
    if run is None:
        raise unknown_run(run_id)
    if run.phase in ("curation", "subset"):
        raise ApiError(409, "run_is_online", f"run {run_id} is in its {run.phase} phase with a trainer")
    online = session.scalar(
        select(Decision.id).where(Decision.run_id == run_id, Decision.manifest_id != OFFLINE_MANIFEST).limit(1)
    )
    if online is not None:
        raise ApiError(409, "run_is_online", f"run {run_id} has online curation decisions")
    return run


def run_offline_curation(
    sessions: sessionmaker[Session],
    run_id: int,
    progress: ProgressCallback | None = None,
    backend: Backend | None = None,
) -> dict[str, Any]:
    """Curate every stored embedding of ``run_id`` with the run's config; replace earlier offline results.

    Stages (reported as ``progress(stage, done, total)`` and in ``Run.progress``): ``load`` (rows),
    ``kmeans``, ``select`` (super-batches), ``write`` (rows), then ``done`` (or ``failed`` with the error).
    Returns the summary: rows, subset size and ratio, band counts, prototype usage, seconds per stage.
    """
    with sessions() as session:
        run = _check_offline(session, session.get(Run, run_id), run_id)
        config = run_config(run)
        # refused before the job starts, so a request that cannot run writes nothing (not even "failed" progress)
        rows, id_key = stored_rows(session, run, config)
    recorder = ProgressRecorder(sessions, run_id, "offline_curation", progress)
    try:
        ids, features = read_unit_features(sessions, rows, lambda done, total: recorder("load", done, total))
        order = key_order(sessions, rows, ids) if id_key == "external_id" else None
        recorder("kmeans", 0, 1)
        try:
            result = curate_offline(
                features,
                config,
                backend=backend,
                progress=lambda done, total: recorder("select", done, total),
                order=order,
                patient=patients(sessions, rows, ids) if config.dedup_same_patient else None,
            )
        except ValueError as exc:  # e.g. fewer rows than k
            raise ApiError(422, "cannot_curate", f"run {run_id}: {exc}") from exc
        del features  # 2 bytes x rows x D: gone before the COPY payloads are built
        recorder("write", 0, len(ids))
        summary = _summary(run_id, ids, result, config)
        _store(sessions, run_id, ids, result, config, recorder, summary)
    except Exception as exc:
        recorder.persist(recorder.snapshot("failed", 0, 0, error=f"{type(exc).__name__}: {exc}"))
        raise
    return summary


def stored_rows(session: Session, run: Run, config: CurationConfig) -> tuple[Rows, str]:
    """The rows offline curation reads (``embedding_rows``), or 409 ``no_embeddings`` / 422 ``cannot_curate``
    when there are none or fewer than k."""
    rows, id_key = embedding_rows(session, run)
    owned = getattr(rows.model, rows.key) == rows.owner
    stored = session.scalar(select(func.count()).select_from(rows.model).where(owned)) or 0
    if not stored:
        raise ApiError(409, "no_embeddings", f"{rows.what} has no stored embeddings to curate (run {run.id})")
    if stored < config.k:
        raise ApiError(422, "cannot_curate", f"{rows.what} stores {stored} embeddings; k={config.k} needs more")
    return rows, id_key


def embedding_rows(session: Session, run: Run) -> tuple[Rows, str]:
    """The rows offline curation reads for ``run`` (its embedding set's, else its own) and the key they were
    uploaded by."""
    if run.embedding_set_id is None:
        return run_rows(run.id), "sample_id"
    named = session.get(NamedSet, run.embedding_set_id)
    return set_rows(run.embedding_set_id), (named.id_key if named is not None and named.id_key else "sample_id")


def sample_column(sessions: sessionmaker[Session], rows: Rows, ids: NDArray[np.int64], column: Any) -> list[Any]:
    """``column`` of the samples of ``rows``, aligned with ``ids`` (ascending), from one snapshot of them."""
    model = rows.model
    with sessions() as session:
        named = session.execute(
            select(Sample.id, column)
            .join(model, model.sample_id == Sample.id)
            .where(getattr(model, rows.key) == rows.owner)
            .order_by(Sample.id)
        ).all()
    if len(named) != len(ids) or not np.array_equal(np.fromiter((i for i, _ in named), np.int64, len(named)), ids):
        raise ApiError(409, "embeddings_changed", f"{rows.what} changed while it was read; curate again")
    return [value for _, value in named]


def patients(sessions: sessionmaker[Session], rows: Rows, ids: NDArray[np.int64]) -> NDArray[np.int64]:
    """Patient codes of the rows (-1 where the set names no patient), for same-patient dedup."""
    return patient_codes(sample_column(sessions, rows, ids, Sample.patient_id))


def key_order(sessions: sessionmaker[Session], rows: Rows, ids: NDArray[np.int64]) -> NDArray[np.int64]:
    """The rows (``ids`` ascending) in the order of their samples' external ids, as ``chexcurate curate`` orders
    a file keyed by them (code-point order, numpy's)."""
    names = sample_column(sessions, rows, ids, Sample.external_id)
    return np.argsort(np.array(names) if names else np.array([], dtype=str), kind="stable").astype(np.int64)


def read_unit_features(
    source: Source,
    run_id: int | Rows,
    progress: Progress | None = None,
    chunk_rows: int = CHUNK_ROWS,
    parts: int = DEFAULT_PARTS,
) -> tuple[NDArray[np.int64], NDArray[np.float16]]:
    """The job's features: sorted sample ids and their stored embeddings as float16 unit rows, one snapshot."""
    meta, features = read_embeddings(source, run_id, parts=parts, half=True, progress=progress, chunk_rows=chunk_rows)
    return meta.sample_ids, features.astype(np.float16, copy=False)


def _summary(run_id: int, ids: NDArray[np.int64], result: OfflineCuration, config: CurationConfig) -> dict[str, Any]:
    return {
        "run_id": run_id,
        "rows": len(ids),
        "dim": int(result.prototypes.shape[1]),
        "warmup_rows": min(len(ids), config.warmup_samples),
        "batches": int(result.batch.max()) + 1,
        "subset_size": int(result.keep.sum()),
        "subset_ratio": result.subset_ratio,
        "band_counts": result.band_counts(),
        "prototype_usage": _usage(result, config.k).tolist(),
        "modes": result.modes,
    }


def _usage(result: OfflineCuration, k: int) -> NDArray[np.int64]:
    """Kept rows per prototype: what ``usage`` counts online (kept features assigned to p_k), over one pass."""
    return np.bincount(result.prototype[result.keep], minlength=k)


def _store(
    sessions: sessionmaker[Session],
    run_id: int,
    ids: NDArray[np.int64],
    result: OfflineCuration,
    config: CurationConfig,
    recorder: ProgressRecorder,
    summary: dict[str, Any],
) -> None:
    """One transaction: earlier offline results out, prototypes v1 and one decision per row in, run done.

    The run row stays locked throughout, so a concurrent re-run waits and then replaces this one whole;
    ``write`` progress therefore reaches the callback only (persisting it would wait on that lock).
    """
    n, batches = len(ids), summary["batches"]
    with sessions() as session:
        run = _check_offline(session, session.scalar(select(Run).where(Run.id == run_id).with_for_update()), run_id)
        session.execute(delete(Decision).where(Decision.run_id == run_id))  # all offline: checked above
        session.execute(delete(PrototypeVersion).where(PrototypeVersion.run_id == run_id))
        session.add(
            PrototypeVersion(
                run_id=run_id,
                version=1,
                k=config.k,
                dim=summary["dim"],
                vectors=result.prototypes.astype(np.float32).tobytes(),
                usage=summary["prototype_usage"],
                step=batches,
            )
        )
        session.flush()
        step = result.batch + 1  # steps count from 1, as online
        for start in range(0, n, WRITE_ROWS):
            part = slice(start, start + WRITE_ROWS)
            _write_decisions(session, run_id, ids[part], step[part], result, part)
            recorder("write", min(start + WRITE_ROWS, n), n, persist=False)
        summary["seconds"] = recorder.finish()
        run.phase, run.epoch, run.step, run.prototype_version = "done", OFFLINE_EPOCH, batches, 1
        run.progress = recorder.snapshot("done", n, n, **summary)  # the summary, for the admin's run stats
        session.commit()


def _write_decisions(
    session: Session,
    run_id: int,
    ids: NDArray[np.int64],
    step: NDArray[np.int64],
    result: OfflineCuration,
    part: slice,
) -> None:
    insert_decisions(
        session,
        run_id,
        ids,
        OFFLINE_EPOCH,
        step,
        OFFLINE_MANIFEST,
        result.prototype[part],
        result.distance[part],
        result.band[part],
        result.keep[part],
        1,
    )

"""A manifest's embeddings posted: stored (warm-up), or curated (a step of the run), and the manifest acknowledged.

The same functions run in the API process (the embedded default, and every warm-up post) and on a Celery worker
(curation posts with a broker). The run row lock taken first serialises every step of a run, whichever process
applies it, so prototype versions form one strictly increasing sequence and a retried manifest is answered from
storage (docs/DESIGN.md, "Exactly once").
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import numpy as np
from numpy.typing import NDArray
from sqlalchemy import select
from sqlalchemy.orm import Session

from ..curation import Backend
from ..errors import ApiError, StepFailure
from ..models import Embedding, Manifest, Run
from ..schemas.runs import StoredOut
from ..stages import stage
from ..storage.embedding_writer import upsert_embeddings
from ..uploads import check_embeddings
from .access import lock_run
from .curation_step import curate_step
from .failures import STEP_CURATE, clear_failure, ensure_runnable, failed_step_answer, is_infrastructure, record_failure
from .leasing import complete, manifest_rows
from .prototypes import PrototypeCache
from .schedule import InitPrototypes, advance_if_epoch_done


def find_manifest(session: Session, run_id: int, manifest_id: str) -> Manifest:
    """The run's manifest, or 404 ``unknown_manifest``."""
    manifest = session.get(Manifest, manifest_id)
    if manifest is None or manifest.run_id != run_id:
        raise ApiError(404, "unknown_manifest", f"manifest {manifest_id} does not belong to run {run_id}")
    return manifest


def open_manifest(session: Session, run: Run, manifest_id: str) -> tuple[Manifest, list[int]]:
    """The manifest and the samples it still holds, in manifest order; 409 if its lease went to another trainer."""
    manifest = find_manifest(session, run.id, manifest_id)
    if manifest.acked_at is not None:
        return manifest, []
    rows = manifest_rows(session, manifest.id)
    taken = len(manifest.sample_ids) - len(rows)
    if taken:
        raise ApiError(
            409,
            "lease_expired",
            f"manifest {manifest_id} expired and {taken} of its samples were "
            "handed out again; drop this batch and ask for a new manifest",
        )
    return manifest, [s for s in manifest.sample_ids if rows.get(s) == "leased"]


def run_width(session: Session, run_id: int) -> int | None:
    return session.scalar(select(Embedding.dim).where(Embedding.run_id == run_id).limit(1))


def apply_embeddings(
    session: Session,
    run_id: int,
    manifest_id: str,
    arr: NDArray,
    init: InitPrototypes,
    failure_limit: int,
    cache: PrototypeCache | None = None,
    backend: Backend | None = None,
) -> dict[str, Any]:
    """Store the embeddings; in curation also select, update the prototypes and record the decisions. Commits,
    and returns the answer (stored with the manifest, so a retry gets it verbatim). A failing curation step is
    noted on the run: the request gets 503 (post again) until the run stops, then 409 ``run_failed``."""
    with _curation_failures_noted(session, run_id, manifest_id, failure_limit):
        with stage("lock run"):
            run = lock_run(session, run_id)
        with stage("open manifest"):
            manifest, expected = open_manifest(session, run, manifest_id)
        if manifest.acked_at is not None:
            session.rollback()
            return dict(manifest.result or {})  # a retry: the stored answer, the EMA is not applied twice
        ensure_runnable(run)
        if manifest.phase == "subset":
            raise ApiError(409, "wrong_phase", "subset-phase manifests take no embeddings: POST .../ack instead")
        with stage("check"):
            check_embeddings(arr, len(expected), run_width(session, run.id), "embeddings")
        with stage("store embeddings"):
            upsert_embeddings(session, run.id, np.asarray(expected, dtype=np.int64), arr, manifest.step)
        if manifest.phase == "warmup":
            result: dict[str, Any] = StoredOut(
                manifest_id=manifest.id, phase="warmup", epoch=manifest.epoch, step=manifest.step, stored=len(expected)
            ).model_dump()
        else:
            manifest.sample_ids = expected
            result = curate_step(session, run, manifest, arr, cache, backend)
            clear_failure(run)
        with stage("flush"):  # the run's step and version, the new prototype version row
            session.flush()
        with stage("complete"):
            complete(session, manifest.id)
        with stage("advance"):
            manifest.acked_at, manifest.result = datetime.now(UTC), result
            advance_if_epoch_done(session, run, init)
        with stage("commit"):
            session.commit()
        return result


@contextmanager
def _curation_failures_noted(session: Session, run_id: int, manifest_id: str, limit: int) -> Iterator[None]:
    """A curated batch that fails is a failing step of the run (``runs.failures``): noted on the run in a
    transaction of its own, and answered 503 (post again) or, once the run stopped, 409 ``run_failed``. The
    request's own problems (shape, lease, phase) and the database's are not the run's: they pass through."""
    try:
        yield
        return
    except StepFailure as exc:
        failure: Exception = exc
    except ApiError:
        raise
    except Exception as exc:
        if is_infrastructure(exc):
            raise
        failure = exc
    session.rollback()
    run = lock_run(session, run_id)
    manifest = session.get(Manifest, manifest_id)
    if manifest is None or manifest.phase != "curation":  # only a curated batch is a step of the run's own
        session.rollback()
        raise failure
    record_failure(run, STEP_CURATE, failure, limit)
    session.commit()
    raise failed_step_answer(run) from failure


def manifest_phase(session: Session, run_id: int, manifest_id: str) -> tuple[str, dict[str, Any] | None]:
    """Phase of a manifest and its stored answer once acknowledged, without locking (for routing a post)."""
    manifest = find_manifest(session, run_id, manifest_id)
    return manifest.phase, (dict(manifest.result or {}) if manifest.acked_at is not None else None)

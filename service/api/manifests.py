"""Leased manifests, embeddings posted per manifest (curated batches back), acknowledgements, bulk embeddings."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Body, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from ..config import Settings
from ..curation.config import MAX_BATCH_SIZE
from ..errors import ApiError
from ..models import Manifest, Sample
from ..runs.access import load_run, lock_run, run_config
from ..runs.exclusions import exclude_from_run, excluded_from_run
from ..runs.failures import ensure_runnable
from ..runs.leasing import claim, complete, holds_live_lease, next_lease_expiry
from ..runs.modes import ensure_online
from ..runs.posts import find_manifest, manifest_phase, open_manifest, run_width
from ..runs.schedule import advance_if_epoch_done
from ..schemas.runs import (
    AckOut,
    BulkOut,
    CuratedBatch,
    ManifestItem,
    ManifestOut,
    ManifestRequest,
    StoredOut,
    UnreadableReport,
)
from ..stages import collecting, server_timing, stage
from ..storage.embedding_sets import sample_ids_of
from ..storage.embedding_writer import upsert_embeddings
from ..uploads import check_embeddings, read_bulk, read_npy
from .body import BINARY_BODY, read_body, spool_body, streamed_body
from .deps import AdminDep, DispatcherDep, RunAccessDep, RunId, SampleId, SessionDep, SettingsDep, StepNo

router = APIRouter(prefix="/v1/runs/{run_id}", tags=["manifests"])


def _now() -> datetime:
    return datetime.now(UTC)


def _items(session: Session, sample_ids: list[int]) -> list[ManifestItem]:
    rows = {s.id: s for s in session.scalars(select(Sample).where(Sample.id.in_(sample_ids)))}
    return [
        ManifestItem(sample_id=i, external_id=rows[i].external_id, image_uri=rows[i].image_uri, report=rows[i].report)
        for i in sample_ids
    ]


def _manifest_out(session: Session, manifest: Manifest) -> ManifestOut:
    return ManifestOut(
        manifest_id=manifest.id,
        run_id=manifest.run_id,
        phase=manifest.phase,
        epoch=manifest.epoch,
        step=manifest.step,
        items=_items(session, list(manifest.sample_ids)),
        expires_at=manifest.expires_at,
    )


@router.post("/manifests", response_model=ManifestOut)
def next_manifest(
    run_id: RunId,
    session: SessionDep,
    settings: SettingsDep,
    dispatcher: DispatcherDep,
    _: RunAccessDep,
    size: Annotated[
        int | None, Query(ge=1, le=MAX_BATCH_SIZE, description="samples; default the run's batch_size")
    ] = None,
    body: Annotated[ManifestRequest | None, Body()] = None,
) -> ManifestOut:
    """Lease the next samples of the current epoch. Each sample is handed out once per epoch across all
    trainers; a manifest not acknowledged before ``expires_at`` is handed out again. A stopped run answers 409
    ``run_failed`` naming the step that failed and why."""
    run = lock_run(session, run_id)
    ensure_runnable(run)
    ensure_online(run_config(run))
    if body is not None:
        run.model_id = body.model_id or run.model_id
        run.checkpoint_step = body.checkpoint_step if body.checkpoint_step is not None else run.checkpoint_step
    advance_if_epoch_done(session, run, dispatcher.init_prototypes)
    now = _now()
    empty = ManifestOut(
        manifest_id=None,
        run_id=run.id,
        phase=run.phase,
        epoch=run.epoch,
        step=None,
        items=[],
        expires_at=None,
    )
    if run.phase == "done":
        session.commit()
        return empty
    manifest_id = str(uuid.uuid4())
    sample_ids = claim(
        session, run.id, run.epoch, size or run.config["batch_size"], manifest_id, now, settings.lease_seconds
    )
    if not sample_ids:
        expiry = next_lease_expiry(session, run.id, run.epoch)
        session.commit()
        empty.wait_seconds = max(0.2, (expiry - now).total_seconds()) if expiry else 1.0
        return empty
    step = (session.scalar(select(func.max(Manifest.step)).where(Manifest.run_id == run.id)) or 0) + 1
    manifest = Manifest(
        id=manifest_id,
        run_id=run.id,
        phase=run.phase,
        epoch=run.epoch,
        step=step,
        sample_ids=sample_ids,
        expires_at=now + timedelta(seconds=settings.lease_seconds),
        model_id=run.model_id,
        checkpoint_step=run.checkpoint_step,
        prototype_version=run.prototype_version,
    )
    session.add(manifest)
    session.commit()
    return _manifest_out(session, manifest)


@router.post(
    "/manifests/{manifest_id}/embeddings",
    response_model=CuratedBatch | StoredOut,
    openapi_extra=BINARY_BODY,
)
@streamed_body
async def post_embeddings(
    run_id: RunId,
    manifest_id: str,
    request: Request,
    response: Response,
    session: SessionDep,
    dispatcher: DispatcherDep,
    _: RunAccessDep,
) -> dict[str, Any]:
    """The manifest's embeddings as one ``.npy`` (float16/float32, ``[n, D]``, rows in manifest order).
    Warm-up: stored. Curation: the curated batch (rows to keep, bands, prototype version), computed by a
    worker when one is configured; if none answers in time, 503 + Retry-After. Idempotent. A failing curation
    step answers 503 (post again) until the run stops, then 409 ``run_failed``. The ``Server-Timing`` header
    names where the time went."""
    with collecting() as stages:
        with stage("read body"):
            body = await read_body(request)
        with stage("parse npy"):
            arr = read_npy(body)  # parsed once: a worker gets the array's bytes, not the .npy
        with stage("route"):
            phase, stored = await run_in_threadpool(manifest_phase, session, run_id, manifest_id)
        answer = stored
        if answer is None:
            answer = await run_in_threadpool(dispatcher.apply_embeddings, session, run_id, manifest_id, arr, phase)
    response.headers["Server-Timing"] = server_timing(stages)
    return answer


@router.post("/manifests/{manifest_id}/ack", response_model=AckOut)
def ack_manifest(
    run_id: RunId, manifest_id: str, session: SessionDep, dispatcher: DispatcherDep, _: RunAccessDep
) -> dict[str, Any]:
    """Acknowledge a subset-phase manifest (no embeddings needed). Idempotent."""
    run = lock_run(session, run_id)
    manifest = open_manifest(session, run, manifest_id)[0]
    if manifest.acked_at is not None:
        return dict(manifest.result or {})
    if manifest.phase != "subset":
        raise ApiError(409, "wrong_phase", f"a {manifest.phase} manifest is acknowledged by posting its embeddings")
    done = complete(session, manifest.id)
    result = AckOut(
        manifest_id=manifest.id, phase="subset", epoch=manifest.epoch, step=manifest.step, acknowledged=done
    ).model_dump()
    manifest.acked_at, manifest.result = _now(), result
    advance_if_epoch_done(session, run, dispatcher.init_prototypes)
    session.commit()
    return result


@router.get("/manifests/{manifest_id}")
def get_manifest(run_id: RunId, manifest_id: str, session: SessionDep, _: RunAccessDep) -> dict[str, Any]:
    """Replay a manifest: its items in order and, once acknowledged, the stored answer."""
    manifest = find_manifest(session, run_id, manifest_id)
    return {
        **_manifest_out(session, manifest).model_dump(),
        "acked_at": manifest.acked_at,
        "result": manifest.result,
        "model_id": manifest.model_id,
        "checkpoint_step": manifest.checkpoint_step,
        "prototype_version": manifest.prototype_version,
    }


@router.get("/steps/{step}")
def get_step(run_id: RunId, step: StepNo, session: SessionDep, token: RunAccessDep) -> dict[str, Any]:
    """Replay the manifest issued as ``step`` of the run."""
    manifest_id = session.scalar(select(Manifest.id).where(Manifest.run_id == run_id, Manifest.step == step))
    if manifest_id is None:
        raise ApiError(404, "unknown_step", f"run {run_id} has no step {step}")
    return get_manifest(run_id, manifest_id, session, token)


@router.post("/samples/{sample_id}/unreadable", status_code=204)
def report_unreadable(
    run_id: RunId,
    sample_id: SampleId,
    session: SessionDep,
    dispatcher: DispatcherDep,
    _: RunAccessDep,
    body: Annotated[UnreadableReport | None, Body()] = None,
) -> None:
    """The caller could not load a sample it holds a live lease on (of ``manifest_id`` when given): it is left
    out of this run, in this and every later epoch, and the step goes on without it. Other runs and the dataset
    are untouched (excluding a sample dataset-wide is an admin's ``POST /v1/datasets/{id}/exclusions``).
    Repeating a report is a no-op."""
    report = body or UnreadableReport()
    run = lock_run(session, run_id)
    sample = session.get(Sample, sample_id)
    if sample is None or sample.dataset_id != run.dataset_id:
        raise ApiError(404, "unknown_sample", f"sample {sample_id} is not in run {run_id}'s dataset")
    if excluded_from_run(session, run.id, sample_id):
        session.rollback()
        return
    if not holds_live_lease(session, run.id, run.epoch, sample_id, report.manifest_id):
        held = f" by manifest {report.manifest_id}" if report.manifest_id else ""
        raise ApiError(
            409,
            "not_leased",
            f"sample {sample_id} is not leased{held} in run {run_id} right now: a trainer reports only samples "
            "it holds a live lease on",
        )
    exclude_from_run(session, run, [sample_id], report.reason, source="trainer")
    advance_if_epoch_done(session, run, dispatcher.init_prototypes)
    session.commit()


def _bulk(session: Session, run_id: int, file: Any, settings: Settings) -> BulkOut:
    with file:
        bulk = read_bulk(file, settings.array_limits())
    run = load_run(session, run_id)
    width = run_width(session, run.id)
    check_embeddings(bulk.embedding, None, width, "embedding")
    ids = sample_ids_of(session, run.dataset_id, bulk.key, bulk.keys)
    upsert_embeddings(session, run.id, ids, bulk.embedding, run.step)
    session.commit()
    return BulkOut(run_id=run.id, rows=len(ids), dim=int(bulk.embedding.shape[1]))


@router.post(
    "/embeddings",
    response_model=BulkOut,
    openapi_extra=BINARY_BODY,
)
@streamed_body
async def bulk_embeddings(
    run_id: RunId, request: Request, session: SessionDep, settings: SettingsDep, _: AdminDep
) -> BulkOut:
    """Bulk upload for offline mode: an ``.npz`` with ``sample_id`` (int64) or ``external_id`` (the dataset's own
    ids, a unicode array) and ``embedding`` ``[n, D]`` (stored as float16). To reuse embeddings across runs, upload
    them once into a named embedding set instead (``POST /v1/embedding-sets/{id}/embeddings``).
    Streamed to a spool file, bounded by its zip and .npy headers before a member is inflated, validated whole,
    stored with COPY in one transaction; re-posting is idempotent."""
    file = await spool_body(request)
    return await run_in_threadpool(_bulk, session, run_id, file, settings)

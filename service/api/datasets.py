"""Datasets and ingest, admin only. The logic lives in service.ingest; this maps it onto HTTP."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Annotated, TypeVar

import anyio.from_thread
from fastapi import APIRouter, Query, Request, Response, status
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from ..config import Settings
from ..errors import ApiError
from ..ingest import ingest_rows, load_dataset, parse_body
from ..ingest.paths import PathRejected, RootNotAllowed, check_allowed, check_root
from ..ingest.rows import MalformedBody, body_format
from ..models import Dataset, Sample
from ..runs.exclusions import exclude_from_dataset
from ..schemas.datasets import (
    DatasetCreate,
    DatasetOut,
    DicomScanRequest,
    DicomScanResult,
    ExclusionOut,
    ExclusionRequest,
    RowRejectionOut,
    SampleOut,
    SamplePage,
    SampleStatus,
    UploadResult,
)
from ..schemas.tasks import TaskAccepted
from .body import streamed_body
from .deps import AdminDep, DatasetId, DispatcherDep, SessionDep, SettingsDep

router = APIRouter(prefix="/v1/datasets", tags=["datasets"])
T = TypeVar("T")


def _out(dataset: Dataset, samples: int) -> DatasetOut:
    return DatasetOut(
        id=dataset.id, name=dataset.name, root=dataset.root, created_at=dataset.created_at, samples=samples
    )


def _accepted_counts(session: Session, ids: list[int]) -> dict[int, int]:
    rows = session.execute(
        select(Sample.dataset_id, func.count())
        .where(Sample.dataset_id.in_(ids), Sample.status == "accepted")
        .group_by(Sample.dataset_id)
    )
    return {dataset_id: count for dataset_id, count in rows.all()}


def readable_root(dataset: Dataset, settings: Settings) -> Path:
    """The dataset's root, if it is still under the allowed roots (a dataset registered before they were set may
    not be): nothing is read from a root outside them."""
    try:
        check_allowed(dataset.root, settings.allowed_root_dirs())
    except RootNotAllowed as exc:
        raise ApiError(409, "root_not_allowed", f"dataset {dataset.id}: {exc.reason}") from exc
    return Path(dataset.root)


def _in_transaction(session: Session, work: Callable[[], T]) -> T:
    """Run ``work`` and commit, or roll back everything it wrote on any error (nothing half-written)."""
    try:
        result = work()
        session.commit()
        return result
    except BaseException:
        session.rollback()
        raise


@router.post("", status_code=status.HTTP_201_CREATED, response_model=DatasetOut)
def create_dataset(body: DatasetCreate, session: SessionDep, settings: SettingsDep, _: AdminDep) -> DatasetOut:
    """Register a dataset; ``root`` must be an existing absolute directory on the server, under the allowed
    roots (``CHEX_ALLOWED_ROOTS``)."""
    try:
        root = check_root(body.root, settings.allowed_root_dirs(), settings.path_limits())
    except RootNotAllowed as exc:  # neither the path nor whether it exists goes back
        raise ApiError(422, "root_not_allowed", exc.reason) from exc
    except PathRejected as exc:
        raise ApiError(422, "invalid_root", exc.reason, root=body.root) from exc
    if session.scalar(select(Dataset.id).where(Dataset.name == body.name)) is not None:
        raise ApiError(409, "dataset_exists", f"a dataset named {body.name!r} already exists", name=body.name)
    dataset = Dataset(name=body.name, root=root)
    session.add(dataset)
    try:
        session.commit()
    except IntegrityError as exc:  # a concurrent create of the same name won the race
        session.rollback()
        raise ApiError(409, "dataset_exists", f"a dataset named {body.name!r} already exists", name=body.name) from exc
    return _out(dataset, 0)


@router.get("", response_model=list[DatasetOut])
def list_datasets(session: SessionDep, _: AdminDep) -> list[DatasetOut]:
    datasets = list(session.scalars(select(Dataset).order_by(Dataset.id)))
    counts = _accepted_counts(session, [d.id for d in datasets])
    return [_out(d, counts.get(d.id, 0)) for d in datasets]


@router.get("/{dataset_id}", response_model=DatasetOut)
def get_dataset(dataset_id: DatasetId, session: SessionDep, _: AdminDep) -> DatasetOut:
    dataset = load_dataset(session, dataset_id)
    return _out(dataset, _accepted_counts(session, [dataset_id]).get(dataset_id, 0))


def _body_chunks(request: Request) -> Iterator[bytes]:
    """The request body, pulled chunk by chunk from the event loop into this worker thread, never whole.

    A body over the upload limit raises 413 mid-stream (BodyLimit); the caller's rollback then undoes any batch
    already written.
    """
    stream: AsyncIterator[bytes] = request.stream()

    async def next_chunk() -> bytes:
        return await stream.__anext__()

    while True:
        try:
            yield anyio.from_thread.run(next_chunk)
        except StopAsyncIteration:
            return


@router.post(
    "/{dataset_id}/samples",
    response_model=UploadResult,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "text/csv": {"schema": {"type": "string"}},
                "application/x-ndjson": {"schema": {"type": "string"}},
            },
        }
    },
)
@streamed_body
async def upload_samples(
    dataset_id: DatasetId,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    _: AdminDep,
    synthesize_reports: bool = False,
    require_images: Annotated[
        bool, Query(description="false: rows need no decodable image (a text-only or embedding-only dataset)")
    ] = True,
) -> UploadResult:
    """Upsert samples from a CSV or JSONL body (external_id, image, report, labels, patient_id, study_id, split;
    other fields -> meta).

    Rows are checked and written as the body streams in, in one transaction committed at the end: a
    malformed body (400) or an oversized one (413) leaves the dataset as it was.
    """
    try:
        fmt = body_format(request.headers.get("content-type"))
    except ValueError as exc:
        raise ApiError(415, "unsupported_media_type", str(exc)) from exc

    def work() -> UploadResult:
        root = readable_root(load_dataset(session, dataset_id), settings)
        rows = parse_body(_body_chunks(request), fmt, settings.text_limits())
        try:
            outcome = ingest_rows(
                session, dataset_id, root, rows, synthesize_reports, settings.path_limits(), require_images
            )
        except MalformedBody as exc:
            raise ApiError(400, "malformed_body", str(exc), line=exc.line) from exc
        return UploadResult(
            accepted=outcome.counts.accepted,
            updated=outcome.counts.updated,
            unchanged=outcome.counts.unchanged,
            rejected=[
                RowRejectionOut(line=r.line, external_id=r.external_id, reason=r.reason) for r in outcome.rejected
            ],
        )

    return await run_in_threadpool(_in_transaction, session, work)


@router.post(
    "/{dataset_id}/dicom-scan",
    response_model=DicomScanResult | TaskAccepted,
    responses={202: {"model": TaskAccepted, "description": "queued on a worker (background=true with a broker)"}},
)
def dicom_scan(
    dataset_id: DatasetId,
    body: DicomScanRequest,
    session: SessionDep,
    settings: SettingsDep,
    dispatcher: DispatcherDep,
    response: Response,
    _: AdminDep,
    background: Annotated[bool, Query(description="queue the scan on a worker and answer 202 with a task id")] = False,
) -> DicomScanResult | TaskAccepted:
    """Scan a DICOM folder under the root (CR/DX only, optional view filter), reports from a sidecar.
    With ``background`` and workers, the scan runs on the refresh queue; poll ``status_url`` for progress."""
    root = readable_root(load_dataset(session, dataset_id), settings)
    answer = dispatcher.dicom_scan(session, dataset_id, root, body, background)
    if isinstance(answer, TaskAccepted):
        response.status_code = status.HTTP_202_ACCEPTED
    return answer


@router.post("/{dataset_id}/exclusions", response_model=ExclusionOut)
def exclude_samples(dataset_id: DatasetId, body: ExclusionRequest, session: SessionDep, _: AdminDep) -> ExclusionOut:
    """Mark samples unreadable for the whole dataset (an admin's verdict, e.g. a corrupt file): no run hands them
    out again, in this or any later epoch, and future runs leave them out. Re-ingesting a changed image clears
    the mark. All or nothing: an id outside the dataset refuses the request."""
    load_dataset(session, dataset_id)
    return _in_transaction(session, lambda: exclude_from_dataset(session, dataset_id, body.sample_ids, body.reason))


@router.get("/{dataset_id}/samples", response_model=SamplePage)
def list_samples(
    dataset_id: DatasetId,
    session: SessionDep,
    _: AdminDep,
    status: SampleStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> SamplePage:
    """Samples in id order, optionally of one status; ``total`` counts all that match."""
    load_dataset(session, dataset_id)
    where = [Sample.dataset_id == dataset_id] + ([Sample.status == status] if status else [])
    total = session.scalar(select(func.count()).select_from(Sample).where(*where)) or 0
    items = session.scalars(select(Sample).where(*where).order_by(Sample.id).limit(limit).offset(offset))
    return SamplePage(items=[SampleOut.model_validate(s) for s in items], total=total, limit=limit, offset=offset)

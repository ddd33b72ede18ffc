"""Named embedding sets of a dataset (admin only): created once, filled by bulk uploads, read by offline runs."""

from __future__ import annotations

from typing import IO

from fastapi import APIRouter, Request, status
from fastapi.concurrency import run_in_threadpool
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ..config import Settings
from ..errors import ApiError
from ..ingest import load_dataset
from ..models import NamedSet
from ..schemas.embedding_sets import EmbeddingSetCreate, EmbeddingSetOut, SetUploadOut
from ..storage.embedding_sets import load_set, set_shape, store_in_set
from ..uploads import read_bulk
from .body import BINARY_BODY, spool_body, streamed_body
from .deps import AdminDep, DatasetId, SessionDep, SetId, SettingsDep

router = APIRouter(tags=["embedding sets"])


def _out(session: Session, named: NamedSet) -> EmbeddingSetOut:
    rows, dim = set_shape(session, named.id)
    return EmbeddingSetOut(
        id=named.id,
        dataset_id=named.dataset_id,
        name=named.name,
        model_id=named.model_id,
        id_key=named.id_key,
        rows=rows,
        dim=dim,
        created_at=named.created_at,
    )


@router.post(
    "/v1/datasets/{dataset_id}/embedding-sets", status_code=status.HTTP_201_CREATED, response_model=EmbeddingSetOut
)
def create_set(dataset_id: DatasetId, body: EmbeddingSetCreate, session: SessionDep, _: AdminDep) -> EmbeddingSetOut:
    """A named embedding set of the dataset, for the encoder ``model_id``; fill it with
    ``POST /v1/embedding-sets/{id}/embeddings`` and give its id to runs (``embedding_set_id``)."""
    load_dataset(session, dataset_id)
    taken = select(NamedSet.id).where(NamedSet.dataset_id == dataset_id, NamedSet.name == body.name)
    if session.scalar(taken) is not None:
        raise ApiError(409, "embedding_set_exists", f"dataset {dataset_id} has an embedding set named {body.name!r}")
    named = NamedSet(dataset_id=dataset_id, name=body.name, model_id=body.model_id)
    session.add(named)
    try:
        session.commit()
    except IntegrityError as exc:  # a concurrent create of the same name won the race
        session.rollback()
        raise ApiError(
            409, "embedding_set_exists", f"dataset {dataset_id} has an embedding set named {body.name!r}"
        ) from exc
    return _out(session, named)


@router.get("/v1/datasets/{dataset_id}/embedding-sets", response_model=list[EmbeddingSetOut])
def list_sets(dataset_id: DatasetId, session: SessionDep, _: AdminDep) -> list[EmbeddingSetOut]:
    load_dataset(session, dataset_id)
    sets = session.scalars(select(NamedSet).where(NamedSet.dataset_id == dataset_id).order_by(NamedSet.id))
    return [_out(session, named) for named in sets]


@router.get("/v1/embedding-sets/{set_id}", response_model=EmbeddingSetOut)
def get_set(set_id: SetId, session: SessionDep, _: AdminDep) -> EmbeddingSetOut:
    return _out(session, load_set(session, set_id))


def _upload(session: Session, set_id: int, file: IO[bytes], settings: Settings) -> SetUploadOut:
    with file:
        bulk = read_bulk(file, settings.array_limits())
    named = load_set(session, set_id)
    stored = store_in_set(session, named, bulk.key, bulk.keys, bulk.embedding)
    session.commit()
    return SetUploadOut(
        set_id=set_id,
        rows=len(stored),
        stored=set_shape(session, set_id)[0],
        dim=int(bulk.embedding.shape[1]),
        key=bulk.key,
    )


@router.post(
    "/v1/embedding-sets/{set_id}/embeddings",
    response_model=SetUploadOut,
    openapi_extra=BINARY_BODY,
)
@streamed_body
async def upload_to_set(
    set_id: SetId, request: Request, session: SessionDep, settings: SettingsDep, _: AdminDep
) -> SetUploadOut:
    """Bulk upload into the set: an ``.npz`` with ``sample_id`` (int64) or ``external_id`` (the dataset's own ids,
    a unicode array) and ``embedding`` ``[n, D]`` (float16 / float32; stored as float16). Streamed to a spool file,
    bounded before a member is inflated, validated whole, stored in one transaction; re-posting replaces the rows
    (idempotent). A set keeps one key and one width."""
    file = await spool_body(request)
    return await run_in_threadpool(_upload, session, set_id, file, settings)

"""Named embedding sets: their rows written (the latest float16 vector per sample, replaced in bulk), and the
samples a bulk upload names, by the service's sample ids or the dataset's own external ids."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray
from sqlalchemy import func, select
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from ..db import IDS_PER_STATEMENT, is_postgres
from ..errors import ApiError
from ..models import NamedSet, Sample, SetEmbedding
from .pgcopy import copy_in, encode_rows
from .samples import foreign_ids

SET_COPY = "COPY set_embeddings (set_id, sample_id, dim, vector) FROM STDIN (FORMAT binary)"


def sample_ids_of(session: Session, dataset_id: int, key: str, keys: NDArray) -> NDArray[np.int64]:
    """The sample id of each row of a bulk upload keyed by ``key`` (sample_id or external_id), in its order; 422
    ``unknown_samples`` naming the keys that are not samples of the dataset (nothing written)."""
    if key == "sample_id":
        missing: list = foreign_ids(session, dataset_id, keys)
        known = keys
    else:
        wanted = [str(k) for k in keys.tolist()]
        found: dict[str, int] = {}
        if is_postgres(session):
            rows = session.connection().exec_driver_sql(
                "SELECT s.external_id, s.id FROM samples s JOIN unnest(CAST(%(ids)s AS text[])) AS u(x) "
                "ON s.external_id = u.x WHERE s.dataset_id = %(d)s",
                {"ids": wanted, "d": dataset_id},
            )
            found = {external: sample for external, sample in rows}
        else:
            for start in range(0, len(wanted), IDS_PER_STATEMENT):
                chunk = wanted[start : start + IDS_PER_STATEMENT]
                query = select(Sample.external_id, Sample.id).where(
                    Sample.dataset_id == dataset_id, Sample.external_id.in_(chunk)
                )
                found.update({external: sample for external, sample in session.execute(query)})
        missing = [k for k in wanted if k not in found]
        known = np.fromiter((found.get(k, 0) for k in wanted), dtype=np.int64, count=len(wanted))
    if missing:
        raise ApiError(
            422,
            "unknown_samples",
            f"{len(missing)} {key}s are not samples of dataset {dataset_id}, e.g. {missing[:10]}",
            **{f"{key}s": missing[:100]},
        )
    return known


def upsert_set_embeddings(session: Session, set_id: int, sample_ids: NDArray[np.int64], vectors: NDArray) -> None:
    """Store (or replace) the float16 embedding of each sample in the set: a delete of the rows present, then one
    binary COPY, as the run embeddings' writer does (storage.embedding_writer)."""
    f16 = np.ascontiguousarray(vectors, dtype="<f2")
    dim = int(f16.shape[1])
    if is_postgres(session):
        session.connection().exec_driver_sql(
            "DELETE FROM set_embeddings e USING unnest(CAST(%(ids)s AS bigint[])) AS u(id) "
            "WHERE e.set_id = %(set)s AND e.sample_id = u.id",
            {"set": set_id, "ids": sample_ids.tolist()},
        )
        vec = f16.view(f"V{2 * dim}").ravel()
        columns = [("set", ">i8", set_id), ("sid", ">i8", sample_ids), ("dim", ">i4", dim), ("vec", f"V{2 * dim}", vec)]
        copy_in(session, SET_COPY, encode_rows(columns, len(sample_ids)))
        return
    stmt = sqlite_insert(SetEmbedding)
    stmt = stmt.on_conflict_do_update(
        index_elements=["set_id", "sample_id"], set_={"dim": stmt.excluded.dim, "vector": stmt.excluded.vector}
    )
    session.execute(
        stmt,
        [
            {"set_id": set_id, "sample_id": int(s), "dim": dim, "vector": row.tobytes()}
            for s, row in zip(sample_ids.tolist(), f16, strict=True)
        ],
    )


def load_set(session: Session, set_id: int) -> NamedSet:
    """The named embedding set, or 404 ``unknown_embedding_set``."""
    named = session.get(NamedSet, set_id)
    if named is None:
        raise ApiError(404, "unknown_embedding_set", f"embedding set {set_id} does not exist")
    return named


def set_shape(session: Session, set_id: int) -> tuple[int, int | None]:
    """``(rows, width)`` of a set's stored embeddings (width None while it has none)."""
    rows, width = session.execute(
        select(func.count(), func.max(SetEmbedding.dim)).where(SetEmbedding.set_id == set_id)
    ).one()
    return int(rows), width


def store_in_set(session: Session, named: NamedSet, key: str, keys: NDArray, embedding: NDArray) -> NDArray[np.int64]:
    """A bulk upload's rows into the set (not committed): keyed like the set's earlier uploads (422
    ``mixed_keys``), of its width (422 ``bad_width``), every key a sample of its dataset (422
    ``unknown_samples``). Returns the sample ids stored."""
    if named.id_key is not None and named.id_key != key:
        raise ApiError(
            422,
            "mixed_keys",
            f"embedding set {named.id} was uploaded keyed by {named.id_key}; this upload is keyed by {key} "
            "(offline curation orders the rows by the key, so one set keeps one)",
        )
    width = set_shape(session, named.id)[1]
    if width is not None and embedding.shape[1] != width:
        raise ApiError(
            422, "bad_width", f"embedding has width {embedding.shape[1]}, embedding set {named.id} has width {width}"
        )
    sample_ids = sample_ids_of(session, named.dataset_id, key, keys)
    upsert_set_embeddings(session, named.id, sample_ids, embedding)
    named.id_key = key
    return sample_ids

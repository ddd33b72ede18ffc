"""Bulk .npz embedding upload (offline mode): stored with COPY, idempotent, strict with ids."""

from __future__ import annotations

import numpy as np
import pytest
from sqlalchemy import func, select

from service.models import Embedding
from tests.runs_helpers import make_dataset, npz

OCTET = {"Content-Type": "application/octet-stream"}


@pytest.fixture
def run(client, db, admin):
    dataset_id, ids = make_dataset(db, 40)
    run_id = client.post(
        "/v1/runs", json={"dataset_id": dataset_id, "config": {"k": 2, "warmup_samples": 10}}, headers=admin
    ).json()["id"]
    return run_id, np.asarray(ids, dtype=np.int64)


def stored(db, run_id):
    db.expire_all()
    return db.scalar(select(func.count()).select_from(Embedding).where(Embedding.run_id == run_id))


def test_bulk_upload_is_stored_as_float16_and_idempotent(client, db, admin, run) -> None:
    run_id, ids = run
    emb = np.random.default_rng(0).standard_normal((40, 16)).astype(np.float32)
    for _ in range(2):
        r = client.post(
            f"/v1/runs/{run_id}/embeddings", content=npz(sample_id=ids, embedding=emb), headers={**admin, **OCTET}
        )
        assert r.status_code == 200 and r.json() == {"run_id": run_id, "rows": 40, "dim": 16}
        assert stored(db, run_id) == 40
    row = db.get(Embedding, (run_id, int(ids[7])))
    np.testing.assert_array_equal(np.frombuffer(row.vector, np.float16), emb[7].astype(np.float16))


@pytest.mark.parametrize(
    ("make", "status", "code"),
    [
        (
            lambda ids, other: npz(sample_id=np.append(ids[:5], 10**12), embedding=np.ones((6, 8), np.float32)),
            422,
            "unknown_samples",
        ),
        (
            lambda ids, other: npz(sample_id=np.append(ids[:5], other), embedding=np.ones((6, 8), np.float32)),
            422,
            "unknown_samples",
        ),
        (
            lambda ids, other: npz(sample_id=np.array([ids[0], ids[0]]), embedding=np.ones((2, 8), np.float32)),
            422,
            "duplicate_ids",
        ),
        (lambda ids, other: npz(sample_id=ids[:3], embedding=np.full((3, 8), np.nan, np.float32)), 422, "non_finite"),
        (lambda ids, other: npz(sample_id=ids[:3], embedding=np.ones((2, 8), np.float32)), 422, "bad_shape"),
        (lambda ids, other: npz(sample_id=ids[:3], embedding=np.ones((3, 8), np.int8)), 422, "bad_dtype"),
        (
            lambda ids, other: npz(sample_id=ids[:3].astype(float), embedding=np.ones((3, 8), np.float32)),
            422,
            "bad_ids",
        ),
        (lambda ids, other: npz(ids=ids[:3], embedding=np.ones((3, 8), np.float32)), 422, "missing_arrays"),
        (lambda ids, other: npz(sample_id=ids, embedding=np.ones((40, 8), np.float32))[:-100], 400, "bad_npz"),
        (lambda ids, other: b"garbage", 400, "bad_npz"),
    ],
)
def test_bulk_rejects_bad_archives_and_writes_nothing(client, db, admin, run, make, status, code) -> None:
    run_id, ids = run
    _, other_ids = make_dataset(db, 1)  # a sample of another dataset: foreign to this run
    r = client.post(f"/v1/runs/{run_id}/embeddings", content=make(ids, other_ids[0]), headers={**admin, **OCTET})
    assert (r.status_code, r.json()["error"]) == (status, code), r.text
    assert stored(db, run_id) == 0

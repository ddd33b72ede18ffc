"""Every bad embedding/manifest request gets a JSON 4xx naming the problem and writes nothing."""

from __future__ import annotations

import time

import numpy as np
import pytest
from sqlalchemy import func, select

from service.api.app import create_app
from service.config import Settings
from service.models import Decision, Embedding, EpochItem, Run
from tests.runs_helpers import encode, make_dataset, npy, npz

CONFIG = {"k": 2, "warmup_samples": 8, "batch_size": 8, "epochs": 2, "curation_epochs": 1}
OCTET = {"Content-Type": "application/octet-stream"}


def snapshot(db, run_id: int) -> tuple:
    db.expire_all()
    run = db.get(Run, run_id)
    count = lambda model: db.scalar(select(func.count()).select_from(model).where(model.run_id == run_id))  # noqa: E731
    done = db.scalar(
        select(func.count()).select_from(EpochItem).where(EpochItem.run_id == run_id, EpochItem.state == "done")
    )
    return run.phase, run.epoch, run.step, run.prototype_version, count(Embedding), count(Decision), done


@pytest.fixture
def setup(client, db, admin, make_token):
    dataset_id, sample_ids = make_dataset(db, 24)
    run_id = client.post("/v1/runs", json={"dataset_id": dataset_id, "config": CONFIG}, headers=admin).json()["id"]
    return run_id, sample_ids, make_token("trainer", [run_id])


def lease(client, run_id, headers):
    m = client.post(f"/v1/runs/{run_id}/manifests", headers=headers).json()
    return m["manifest_id"], [i["sample_id"] for i in m["items"]]


def to_curation(client, run_id, headers):
    while True:
        mid, ids = lease(client, run_id, headers)
        m = client.get(f"/v1/runs/{run_id}/manifests/{mid}", headers=headers).json()
        if m["phase"] == "curation":
            return mid, ids
        client.post(
            f"/v1/runs/{run_id}/manifests/{mid}/embeddings", content=npy(encode(ids)), headers={**headers, **OCTET}
        )


BAD_BODIES = {
    "wrong_rows": (lambda ids: npy(encode(ids[:-1])), 422, "bad_shape"),
    "int_dtype": (lambda ids: npy(np.ones((len(ids), 32), np.int32)), 422, "bad_dtype"),
    "float64": (lambda ids: npy(np.ones((len(ids), 32), np.float64)), 422, "bad_dtype"),
    "rank3": (lambda ids: npy(np.ones((len(ids), 4, 8), np.float32)), 422, "bad_shape"),
    "nan_row": (lambda ids: npy(np.where(np.arange(len(ids))[:, None] == 2, np.nan, encode(ids))), 422, "non_finite"),
    "zero_row": (lambda ids: npy(np.zeros((len(ids), 32), np.float16)), 422, "zero_rows"),
    "not_npy": (lambda ids: b"definitely not numpy", 400, "bad_npy"),
    "truncated": (lambda ids: npy(encode(ids))[:-40], 400, "bad_npy"),
    "npz": (lambda ids: npz(a=encode(ids)), 400, "bad_npy"),
    "empty": (lambda ids: b"", 400, "empty_body"),
}


@pytest.mark.parametrize("case", list(BAD_BODIES))
def test_bad_embedding_bodies_rejected_and_nothing_written(client, db, setup, case) -> None:
    run_id, _, trainer = setup
    mid, ids = lease(client, run_id, trainer)
    before = snapshot(db, run_id)
    make, status, code = BAD_BODIES[case]
    r = client.post(f"/v1/runs/{run_id}/manifests/{mid}/embeddings", content=make(ids), headers={**trainer, **OCTET})
    assert r.status_code == status, r.text
    assert r.json()["error"] == code and r.json()["detail"]
    assert snapshot(db, run_id) == before
    # the lease is intact: a correct post still works
    ok = client.post(
        f"/v1/runs/{run_id}/manifests/{mid}/embeddings", content=npy(encode(ids)), headers={**trainer, **OCTET}
    )
    assert ok.status_code == 200


def test_nan_rows_are_named(client, db, setup) -> None:
    run_id, _, trainer = setup
    mid, ids = lease(client, run_id, trainer)
    arr = encode(ids).astype(np.float32)
    arr[[1, 5]] = np.inf
    r = client.post(f"/v1/runs/{run_id}/manifests/{mid}/embeddings", content=npy(arr), headers={**trainer, **OCTET})
    assert r.status_code == 422 and r.json()["rows"] == [1, 5] and "[1, 5]" in r.json()["detail"]


def test_width_change_is_rejected(client, db, setup) -> None:
    run_id, _, trainer = setup
    mid, ids = lease(client, run_id, trainer)
    client.post(f"/v1/runs/{run_id}/manifests/{mid}/embeddings", content=npy(encode(ids)), headers={**trainer, **OCTET})
    mid, ids = lease(client, run_id, trainer)
    before = snapshot(db, run_id)
    r = client.post(
        f"/v1/runs/{run_id}/manifests/{mid}/embeddings", content=npy(encode(ids, dim=16)), headers={**trainer, **OCTET}
    )
    assert r.status_code == 422 and r.json()["error"] == "bad_width"
    assert snapshot(db, run_id) == before


def test_auth_roles_scope_and_unknown_ids(client, db, setup, make_token, admin) -> None:
    run_id, _, trainer = setup
    mid, ids = lease(client, run_id, trainer)
    before = snapshot(db, run_id)
    url = f"/v1/runs/{run_id}/manifests/{mid}/embeddings"
    assert client.post(url, content=npy(encode(ids)), headers=OCTET).status_code == 401
    assert client.post(url, content=npy(encode(ids)), headers={"Authorization": "Bearer x", **OCTET}).status_code == 401
    other = make_token("trainer", [run_id + 1000])
    r = client.post(url, content=npy(encode(ids)), headers={**other, **OCTET})
    assert r.status_code == 403 and r.json()["error"] == "forbidden"
    assert client.post(f"/v1/runs/{run_id}/manifests", headers=other).status_code == 403
    assert client.post("/v1/runs", json={"dataset_id": 1}, headers=trainer).status_code == 403
    r = client.post(
        f"/v1/runs/{run_id}/manifests/nope/embeddings", content=npy(encode(ids)), headers={**trainer, **OCTET}
    )
    assert r.status_code == 404 and r.json()["error"] == "unknown_manifest"
    assert client.get(f"/v1/runs/{run_id}/steps/999", headers=trainer).status_code == 404
    assert client.post(f"/v1/runs/{run_id}/embeddings", content=b"x", headers={**trainer, **OCTET}).status_code == 403
    assert snapshot(db, run_id) == before
    assert client.get("/v1/runs/999999", headers=admin).status_code == 404


def test_run_creation_rejects_bad_config_and_unknown_dataset(client, db, admin) -> None:
    dataset_id, _ = make_dataset(db, 3)
    runs_before = db.scalar(select(func.count()).select_from(Run))
    for body, status, code in [
        ({"dataset_id": 10**9}, 404, "unknown_dataset"),
        ({"dataset_id": dataset_id, "config": {"k": 0}}, 422, "invalid_config"),
        ({"dataset_id": dataset_id, "config": {"support_quantile": 0.99}}, 422, "invalid_config"),
        ({"dataset_id": dataset_id, "config": {"k": 6}}, 422, "too_few_samples"),
        ({"dataset_id": dataset_id, "unknown": 1}, 422, "invalid_request"),
    ]:
        r = client.post("/v1/runs", json=body, headers=admin)
        assert (r.status_code, r.json()["error"]) == (status, code), r.text
    db.expire_all()
    assert db.scalar(select(func.count()).select_from(Run)) == runs_before


def test_phase_mismatched_calls_are_409(client, db, setup) -> None:
    run_id, _, trainer = setup
    mid, ids = to_curation(client, run_id, trainer)
    before = snapshot(db, run_id)
    r = client.post(f"/v1/runs/{run_id}/manifests/{mid}/ack", headers=trainer)
    assert r.status_code == 409 and r.json()["error"] == "wrong_phase"
    assert snapshot(db, run_id) == before


def test_oversized_body_is_413(pg_url, db, client, admin, make_token) -> None:
    small = create_app(Settings(database_url=pg_url, max_body_bytes=2048))
    from fastapi.testclient import TestClient

    dataset_id, _ = make_dataset(db, 24)
    run_id = client.post("/v1/runs", json={"dataset_id": dataset_id, "config": CONFIG}, headers=admin).json()["id"]
    trainer = make_token("trainer", [run_id])
    with TestClient(small) as c:
        mid, ids = lease(c, run_id, trainer)
        before = snapshot(db, run_id)
        r = c.post(
            f"/v1/runs/{run_id}/manifests/{mid}/embeddings",
            content=npy(encode(ids, dim=512, dtype=np.float32)),
            headers={**trainer, **OCTET},
        )
        assert r.status_code == 413 and r.json()["error"] == "body_too_large"
        assert snapshot(db, run_id) == before
    small.state.engine.dispose()


def test_expired_lease_is_handed_out_again_and_old_post_refused(pg_url, db, client, admin) -> None:
    from fastapi.testclient import TestClient

    from service.auth import create_token

    quick = create_app(Settings(database_url=pg_url, lease_seconds=1))
    dataset_id, _ = make_dataset(db, 24)
    run_id = client.post("/v1/runs", json={"dataset_id": dataset_id, "config": CONFIG}, headers=admin).json()["id"]
    trainer = {"Authorization": "Bearer " + create_token(db, "t", "trainer", [run_id])}
    with TestClient(quick) as c:
        mid, ids = lease(c, run_id, trainer)
        waiting = c.post(f"/v1/runs/{run_id}/manifests", headers=trainer).json()
        assert waiting["manifest_id"] is None and waiting["wait_seconds"] > 0  # warm-up epoch fully leased
        time.sleep(1.2)
        mid2, ids2 = lease(c, run_id, trainer)
        assert ids2 == ids and mid2 != mid
        before = snapshot(db, run_id)
        r = c.post(
            f"/v1/runs/{run_id}/manifests/{mid}/embeddings", content=npy(encode(ids)), headers={**trainer, **OCTET}
        )
        assert r.status_code == 409 and r.json()["error"] == "lease_expired"
        assert snapshot(db, run_id) == before
        ok = c.post(
            f"/v1/runs/{run_id}/manifests/{mid2}/embeddings", content=npy(encode(ids)), headers={**trainer, **OCTET}
        )
        assert ok.status_code == 200
    quick.state.engine.dispose()


def test_unreadable_sample_is_skipped_and_step_goes_on(client, db, setup) -> None:
    run_id, _, trainer = setup
    mid, ids = lease(client, run_id, trainer)
    r = client.post(f"/v1/runs/{run_id}/samples/{ids[3]}/unreadable", json={"reason": "truncated PNG"}, headers=trainer)
    assert r.status_code == 204
    rest = ids[:3] + ids[4:]
    ok = client.post(
        f"/v1/runs/{run_id}/manifests/{mid}/embeddings", content=npy(encode(rest)), headers={**trainer, **OCTET}
    )
    assert ok.status_code == 200 and ok.json()["stored"] == len(rest)
    assert client.post(f"/v1/runs/{run_id}/samples/999999999/unreadable", headers=trainer).status_code == 404

"""Offline curation as people run it: a named embedding set of a dataset, uploaded once (keyed by the dataset's own
external ids or by sample ids) and read by every run of a sweep; a text-only dataset without images; the CLI and the
service keeping the same rows for the same file, config and seed (float16 storage included)."""

from __future__ import annotations

import io
import json
import uuid
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import func, select
from typer.testing import CliRunner

from service.cli import app as cli
from service.models import Embedding, SetEmbedding

N, D = 300, 48
CONFIG = {"batch_size": 64, "warmup_samples": 128, "seed": 3}
OCTET = {"Content-Type": "application/octet-stream"}


def npz(**arrays) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def text_only(client, admin, tmp_path_factory) -> dict:
    """A dataset of reports without images (``require_images=false``) and float32 embeddings of them."""
    root = tmp_path_factory.mktemp("text-only")
    rows = "".join(f"r{i:04d},,report number {i} of patient {i % 40},p{i % 40}\n" for i in range(N))
    made = client.post("/v1/datasets", json={"name": f"text-{uuid.uuid4().hex[:8]}", "root": str(root)}, headers=admin)
    dataset = made.json()["id"]
    body = ("external_id,image,report,patient_id\n" + rows).encode()
    up = client.post(
        f"/v1/datasets/{dataset}/samples?require_images=false",
        content=body,
        headers={**admin, "Content-Type": "text/csv"},
    )
    assert up.status_code == 200 and up.json()["accepted"] == N and not up.json()["rejected"], up.text
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(5, D))
    emb = (centres[rng.integers(0, 5, N)] + 0.3 * rng.normal(size=(N, D))).astype(np.float32)
    names = np.array([f"r{i:04d}" for i in range(N)])
    perm = rng.permutation(N)  # the file's row order is not the key order
    return {"dataset": dataset, "root": root, "names": names[perm], "emb": emb[perm]}


def make_set(client, admin, dataset: int, name: str) -> int:
    made = client.post(
        f"/v1/datasets/{dataset}/embedding-sets", json={"name": name, "model_id": "test-encoder"}, headers=admin
    )
    assert made.status_code == 201, made.text
    return made.json()["id"]


def offline_run(client, admin, dataset: int, set_id: int, **config) -> tuple[int, dict]:
    run = client.post(
        "/v1/runs",
        json={"dataset_id": dataset, "config": {**CONFIG, **config}, "embedding_set_id": set_id},
        headers=admin,
    )
    assert run.status_code == 201, run.text
    assert run.json()["embedding_set_id"] == set_id and run.json()["model_id"] == "test-encoder"
    answer = client.post(f"/v1/runs/{run.json()['id']}/offline", headers=admin)
    assert answer.status_code == 200, answer.text
    return run.json()["id"], answer.json()


def kept(client, admin, run_id: int, key: str = "external_id") -> set:
    lines = client.get(f"/v1/runs/{run_id}/subset?format=jsonl", headers=admin).text.splitlines()
    return {json.loads(line)[key] for line in lines[1:]}


def test_a_k_sweep_reads_one_stored_set(client, admin, db, text_only) -> None:
    dataset = text_only["dataset"]
    set_id = make_set(client, admin, dataset, "sweep")
    body = npz(external_id=text_only["names"], embedding=text_only["emb"])
    up = client.post(f"/v1/embedding-sets/{set_id}/embeddings", content=body, headers={**admin, **OCTET})
    assert up.status_code == 200 and up.json() == {
        "set_id": set_id,
        "rows": N,
        "stored": N,
        "dim": D,
        "key": "external_id",
    }
    runs = {k: offline_run(client, admin, dataset, set_id, k=k) for k in (2, 4, 8)}
    # stored once: the set's rows, and not one row per run
    assert db.scalar(select(func.count()).select_from(SetEmbedding).where(SetEmbedding.set_id == set_id)) == N
    run_ids = [run_id for run_id, _ in runs.values()]
    assert db.scalar(select(func.count()).select_from(Embedding).where(Embedding.run_id.in_(run_ids))) == 0
    for k, (run_id, summary) in runs.items():
        assert summary["rows"] == N and len(summary["prototype_usage"]) == k
        stats = client.get(f"/v1/runs/{run_id}/stats", headers=admin).json()
        assert stats["phase"] == "done" and stats["subset_size"] == summary["subset_size"]
    assert len({frozenset(kept(client, admin, run_id)) for run_id in run_ids}) == 3
    listed = client.get(f"/v1/datasets/{dataset}/embedding-sets", headers=admin).json()
    assert [(s["name"], s["rows"], s["dim"], s["id_key"]) for s in listed if s["id"] == set_id] == [
        ("sweep", N, D, "external_id")
    ]
    # re-posting the same file replaces the rows: still N, the same subset
    client.post(f"/v1/embedding-sets/{set_id}/embeddings", content=body, headers={**admin, **OCTET})
    again, _ = offline_run(client, admin, dataset, set_id, k=4)
    assert kept(client, admin, again) == kept(client, admin, runs[4][0])


@pytest.mark.parametrize("key", ["external_id", "sample_id"])
def test_the_cli_and_the_service_keep_the_same_rows(client, admin, db, text_only, tmp_path: Path, key) -> None:
    dataset = text_only["dataset"]
    names, emb = text_only["names"], text_only["emb"]
    if key == "sample_id":
        ids = client.get(f"/v1/datasets/{dataset}/samples?limit=1000", headers=admin).json()["items"]
        by_name = {s["external_id"]: s["id"] for s in ids}
        keys = np.array([by_name[n] for n in names], dtype=np.int64)
    else:
        keys = names
    set_id = make_set(client, admin, dataset, f"same-{key}")
    body = npz(**{key: keys}, embedding=emb)
    assert (
        client.post(f"/v1/embedding-sets/{set_id}/embeddings", content=body, headers={**admin, **OCTET}).status_code
        == 200
    )
    run_id, summary = offline_run(client, admin, dataset, set_id, k=4)
    served = kept(client, admin, run_id, key)

    path = tmp_path / "emb.npz"
    path.write_bytes(body)
    out = tmp_path / "subset.jsonl"
    args = [
        "curate",
        str(path),
        "--out",
        str(out),
        "--k",
        "4",
        "--batch-size",
        "64",
        "--warmup-samples",
        "128",
        "--seed",
        "3",
    ]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    first, *lines = out.read_text().splitlines()
    assert json.loads(first)["provenance"]["storage"] == "float16"
    local = {json.loads(line)[key] for line in lines}
    assert local == served and len(local) == summary["subset_size"]


def test_bad_set_uploads_and_runs_are_refused_and_write_nothing(client, admin, db, text_only) -> None:
    dataset = text_only["dataset"]
    set_id = make_set(client, admin, dataset, "guarded")
    names, emb = text_only["names"][:10], text_only["emb"][:10]
    ok = client.post(
        f"/v1/embedding-sets/{set_id}/embeddings",
        content=npz(external_id=names, embedding=emb),
        headers={**admin, **OCTET},
    )
    assert ok.status_code == 200

    def refused(body: bytes, status: int, code: str) -> None:
        before = db.scalar(select(func.count()).select_from(SetEmbedding).where(SetEmbedding.set_id == set_id))
        answer = client.post(f"/v1/embedding-sets/{set_id}/embeddings", content=body, headers={**admin, **OCTET})
        assert (answer.status_code, answer.json()["error"]) == (status, code), answer.text
        db.expire_all()
        assert db.scalar(select(func.count()).select_from(SetEmbedding).where(SetEmbedding.set_id == set_id)) == before

    refused(npz(sample_id=np.arange(1, 3), embedding=emb[:2]), 422, "mixed_keys")
    refused(npz(external_id=names[:2], embedding=np.ones((2, D + 1), np.float32)), 422, "bad_width")
    refused(npz(external_id=np.array(["nope", names[0]]), embedding=emb[:2]), 422, "unknown_samples")
    refused(npz(external_id=np.array(["a", "a"]), embedding=emb[:2]), 422, "duplicate_ids")
    refused(npz(external_id=np.array(["", "b"]), embedding=emb[:2]), 422, "bad_ids")
    refused(npz(external_id=names[:2], sample_id=np.arange(2), embedding=emb[:2]), 422, "missing_arrays")
    other = client.post(
        "/v1/datasets", json={"name": f"o-{uuid.uuid4().hex[:8]}", "root": str(text_only["root"])}, headers=admin
    )
    foreign = client.post(
        "/v1/runs", json={"dataset_id": other.json()["id"], "embedding_set_id": set_id}, headers=admin
    )
    assert (foreign.status_code, foreign.json()["error"]) == (422, "foreign_embedding_set")
    unknown = client.post("/v1/runs", json={"dataset_id": dataset, "embedding_set_id": 999999}, headers=admin)
    assert (unknown.status_code, unknown.json()["error"]) == (404, "unknown_embedding_set")
    taken = client.post(
        f"/v1/datasets/{dataset}/embedding-sets", json={"name": "guarded", "model_id": "m"}, headers=admin
    )
    assert (taken.status_code, taken.json()["error"]) == (409, "embedding_set_exists")


def test_run_bulk_upload_takes_external_ids(client, admin, text_only) -> None:
    dataset = text_only["dataset"]
    run = client.post("/v1/runs", json={"dataset_id": dataset, "config": {**CONFIG, "k": 3}}, headers=admin).json()
    body = npz(external_id=text_only["names"], embedding=text_only["emb"])
    up = client.post(f"/v1/runs/{run['id']}/embeddings", content=body, headers={**admin, **OCTET})
    assert up.status_code == 200 and up.json()["rows"] == N
    answer = client.post(f"/v1/runs/{run['id']}/offline", headers=admin)
    assert answer.status_code == 200 and answer.json()["rows"] == N

"""The modes beyond the paper through the API on the real Postgres: validated, run online and offline, reported."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sqlalchemy import func, select, update

from service.jobs.offline import run_offline_curation
from service.models import Decision, Manifest, Run, Sample
from service.synth.embeddings import long_tailed_embeddings
from tests.runs_helpers import make_dataset, npy, npz

OCTET = {"Content-Type": "application/octet-stream"}
ROWS = 400


def copies(n: int, seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Rows of a long-tailed set where every 5th row is a near-copy of the row before it; the copy mask."""
    rows = long_tailed_embeddings(n, 32, seed=seed, duplicate_rate=0.0).features
    copy = np.zeros(n, dtype=bool)
    copy[np.arange(1, n, 5)] = True
    jitter = 1e-3 * np.random.default_rng(seed).standard_normal((int(copy.sum()), rows.shape[1]))
    rows[copy] = rows[np.flatnonzero(copy) - 1] + jitter
    return rows.astype(np.float16), copy


@pytest.mark.parametrize(
    ("config", "field"),
    [
        ({"target_ratio": 0.0}, "target_ratio"),
        ({"target_ratio": 0.96}, "target_ratio"),
        ({"dedup_epsilon": -0.1}, "dedup_epsilon"),
        ({"dedup_same_patient": True}, "dedup_same_patient needs dedup_epsilon"),
        ({"prototype_mode": "tree"}, "prototype_mode"),
        ({"hierarchy": [30, 6]}, "needs prototype_mode"),
        ({"prototype_mode": "hierarchical", "hierarchy": [6, 30]}, "shrink"),
    ],
)
def test_bad_mode_values_are_422_and_write_nothing(client, admin, db, config, field) -> None:
    dataset_id, _ = make_dataset(db, 5)
    before = db.scalar(select(func.count()).select_from(Run))
    r = client.post("/v1/runs", json={"dataset_id": dataset_id, "config": config}, headers=admin)
    assert r.status_code == 422, r.text
    assert r.json()["error"] == "invalid_config" and field in r.text
    assert db.scalar(select(func.count()).select_from(Run)) == before


def drive(client, run_id: int, headers: dict[str, str], table: dict[int, np.ndarray]) -> list[dict]:
    """A trainer whose model maps each sample to ``table[sample_id]``; returns the curation answers."""
    answers = []
    for _ in range(200):
        m = client.post(f"/v1/runs/{run_id}/manifests", headers=headers).json()
        if m["phase"] == "done":
            return answers
        ids = [item["sample_id"] for item in m["items"]]
        url = f"/v1/runs/{run_id}/manifests/{m['manifest_id']}"
        if m["phase"] == "subset":
            r = client.post(f"{url}/ack", headers=headers)
        else:
            emb = np.stack([table[i] for i in ids])
            r = client.post(f"{url}/embeddings", content=npy(emb), headers={**headers, **OCTET})
        assert r.status_code == 200, r.text
        if m["phase"] == "curation":
            answers.append(r.json())
    raise AssertionError("run did not finish")


def test_online_target_and_dedup(client, admin, db, make_token) -> None:
    dataset_id, ids = make_dataset(db, ROWS)
    rows, copy = copies(ROWS)
    table = dict(zip(ids, rows, strict=True))
    config = {
        "k": 4,
        "warmup_samples": 64,
        "batch_size": 50,
        "epochs": 2,
        "curation_epochs": 1,
        "target_ratio": 0.3,
        "dedup_epsilon": 0.01,
    }
    run_id = client.post("/v1/runs", json={"dataset_id": dataset_id, "config": config}, headers=admin).json()["id"]
    answers = drive(client, run_id, make_token("trainer", [run_id]), table)
    kept = sum(a["kept"] for a in answers)
    assert abs(kept / ROWS - 0.3) <= 0.01
    kept_ids = set(db.scalars(select(Decision.sample_id).where(Decision.run_id == run_id, Decision.kept)))
    by_id = dict(zip(ids, copy, strict=True))
    position = {sid: i for i, sid in enumerate(ids)}
    # no copy is kept together with the row it copies, in whichever order the epoch met them
    both = [sid for sid in kept_ids if by_id[sid] and ids[position[sid] - 1] in kept_ids]
    assert both == []
    stats = client.get(f"/v1/runs/{run_id}/stats", headers=admin).json()
    target = stats["modes"]["target_ratio"]
    assert target["target_ratio"] == 0.3 and abs(target["achieved_ratio"] - 0.3) <= 0.01
    assert target["steps"] == ROWS // 50 and target["bound_hits"] >= 0
    assert stats["modes"]["dedup"] == {"epsilon": 0.01, "same_patient": False, "memory": 4096}
    first = client.get(f"/v1/runs/{run_id}/subset", headers=admin).text.splitlines()[0]
    assert json.loads(first)["provenance"]["modes"]["target_ratio"]["achieved_ratio"] == target["achieved_ratio"]


def test_hierarchical_is_offline_only(client, admin, db, make_token) -> None:
    dataset_id, _ = make_dataset(db, 40)
    config = {"k": 2, "warmup_samples": 20, "batch_size": 10, "prototype_mode": "hierarchical", "hierarchy": [4, 2]}
    run_id = client.post("/v1/runs", json={"dataset_id": dataset_id, "config": config}, headers=admin).json()["id"]
    r = client.post(f"/v1/runs/{run_id}/manifests", headers=make_token("trainer", [run_id]))
    assert r.status_code == 422 and r.json()["error"] == "offline_only_mode", r.text
    db.expire_all()
    assert db.scalar(select(func.count()).select_from(Manifest).where(Manifest.run_id == run_id)) == 0


def test_offline_job_with_every_mode(app, client, admin, db) -> None:
    dataset_id, ids = make_dataset(db, ROWS)
    rows, copy = copies(ROWS)
    # same patient for a row and its copy, except the copies of the first 20 rows (another patient)
    patient = [f"p{i // 5}" for i in range(ROWS)]
    for i in np.flatnonzero(copy)[:4]:
        patient[i] = f"other{i}"
    for sid, pid in zip(ids, patient, strict=True):
        db.execute(update(Sample).where(Sample.id == sid).values(patient_id=pid))
    db.commit()
    config = {
        "k": 3,
        "warmup_samples": 200,
        "batch_size": 100,
        "target_ratio": 0.25,
        "dedup_epsilon": 0.01,
        "dedup_same_patient": True,
        "prototype_mode": "hierarchical",
        "hierarchy": [20, 3],
    }
    run_id = client.post("/v1/runs", json={"dataset_id": dataset_id, "config": config}, headers=admin).json()["id"]
    r = client.post(
        f"/v1/runs/{run_id}/embeddings",
        content=npz(sample_id=np.asarray(ids), embedding=rows),
        headers={**admin, **OCTET},
    )
    assert r.status_code == 200, r.text
    summary = run_offline_curation(app.state.sessions, run_id)
    assert summary["subset_size"] == 100  # exactly 0.25 * 400
    assert summary["modes"]["dedup"]["removed"] == int(copy.sum()) - 4  # other patients' copies stay
    stats = client.get(f"/v1/runs/{run_id}/stats", headers=admin).json()
    assert stats["subset_size"] == 100
    assert stats["modes"]["hierarchical"]["levels"] == [20, 3] and stats["modes"]["hierarchical"]["size"] == 100
    assert stats["modes"]["dedup"]["same_patient"] is True
    first = client.get(f"/v1/runs/{run_id}/subset", headers=admin).text.splitlines()[0]
    assert set(json.loads(first)["provenance"]["modes"]) == {"target_ratio", "dedup", "hierarchical"}


def test_dedup_sweep_of_a_run(client, admin, db) -> None:
    dataset_id, ids = make_dataset(db, ROWS)
    rows, copy = copies(ROWS)
    config = {"k": 3, "warmup_samples": 200, "batch_size": 100}
    run_id = client.post("/v1/runs", json={"dataset_id": dataset_id, "config": config}, headers=admin).json()["id"]
    url = f"/v1/runs/{run_id}/dedup-sweep"
    assert client.post(url, json={}, headers=admin).status_code == 409  # nothing stored yet
    client.post(
        f"/v1/runs/{run_id}/embeddings",
        content=npz(sample_id=np.asarray(ids), embedding=rows),
        headers={**admin, **OCTET},
    )
    r = client.post(url, json={"epsilons": [0.000001, 0.01], "examples": 2}, headers=admin)
    assert r.status_code == 200, r.text
    tiny, wide = r.json()["sweep"]
    assert tiny["epsilon"] == 0.000001 and tiny["removed"] <= wide["removed"] == int(copy.sum())
    copied = {ids[i] for i in np.flatnonzero(copy)} | {ids[i - 1] for i in np.flatnonzero(copy)}
    assert all({e["sample_id"], e["with"]} <= copied and e["cosine"] >= 0.99 for e in wide["examples"])
    assert db.scalar(select(func.count()).select_from(Decision).where(Decision.run_id == run_id)) == 0
    for bad in ({"epsilons": [0.9]}, {"epsilons": []}, {"examples": 100}, {"eps": [0.1]}):
        assert client.post(url, json=bad, headers=admin).status_code == 422, bad
    assert client.post("/v1/runs/999999999/dedup-sweep", json={}, headers=admin).status_code == 404

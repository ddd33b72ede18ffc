"""A run end to end through the API on the real Postgres: warm-up, curation, subset, done."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from sqlalchemy import func, select

from service.models import Decision, EpochItem, Manifest, PrototypeVersion, Run
from service.stages import parse_server_timing
from tests.runs_helpers import encode, make_dataset, npy

CONFIG = {"k": 3, "warmup_samples": 24, "batch_size": 16, "epochs": 3, "curation_epochs": 1, "max_central": 2}


def drive(client, run_id: int, headers: dict[str, str], dtype=np.float16) -> list[dict]:
    """Play a trainer until the run is done; returns every manifest answer."""
    answers = []
    for _ in range(500):
        m = client.post(f"/v1/runs/{run_id}/manifests", headers=headers).json()
        if m["phase"] == "done":
            return answers
        assert m["manifest_id"], m
        ids = [item["sample_id"] for item in m["items"]]
        if m["phase"] == "subset":
            r = client.post(f"/v1/runs/{run_id}/manifests/{m['manifest_id']}/ack", headers=headers)
        else:
            r = client.post(
                f"/v1/runs/{run_id}/manifests/{m['manifest_id']}/embeddings",
                content=npy(encode(ids, dtype=dtype)),
                headers={**headers, "Content-Type": "application/octet-stream"},
            )
        assert r.status_code == 200, r.text
        answers.append({"manifest": m, "answer": r.json(), "ids": ids, "timing": r.headers.get("server-timing")})
    raise AssertionError("run did not finish")


@pytest.fixture
def run_id(client, db, admin):
    dataset_id, _ = make_dataset(db, 60)
    r = client.post("/v1/runs", json={"dataset_id": dataset_id, "config": CONFIG, "model_id": "tiny"}, headers=admin)
    assert r.status_code == 201, r.text
    return r.json()["id"]


def test_run_goes_through_every_phase_and_each_sample_once_per_epoch(client, db, run_id, make_token) -> None:
    trainer = make_token("trainer", [run_id])
    answers = drive(client, run_id, trainer)
    run = db.get(Run, run_id)
    db.refresh(run)
    assert run.phase == "done" and run.epoch == 3
    per_epoch: dict[int, Counter] = {}
    for a in answers:
        per_epoch.setdefault(a["manifest"]["epoch"], Counter()).update(a["ids"])
    assert sum(per_epoch[0].values()) == 24 and set(per_epoch[0].values()) == {1}
    assert sum(per_epoch[1].values()) == 60 and set(per_epoch[1].values()) == {1}
    subset = {row for row in db.scalars(select(Decision.sample_id).where(Decision.run_id == run_id, Decision.kept))}
    assert 0 < len(subset) < 60
    for epoch in (2, 3):
        assert set(per_epoch[epoch]) == subset and set(per_epoch[epoch].values()) == {1}
    # curation: one prototype version per step, strictly increasing, decisions for every curated row
    curated = [a for a in answers if a["manifest"]["phase"] == "curation"]
    for a in curated:  # where each step's time went, stage by stage (all of it in this process without workers)
        stages = parse_server_timing(a["timing"])
        assert {"read body", "store embeddings", "select", "decisions", "commit"} <= set(stages), stages
        assert all(ms >= 0 for ms in stages.values())
    versions = [a["answer"]["prototype_version"] for a in curated]
    assert versions == list(range(1, len(curated) + 1))
    assert [a["answer"]["new_prototype_version"] for a in curated] == list(range(2, len(curated) + 2))
    assert (
        db.scalar(select(func.max(PrototypeVersion.version)).where(PrototypeVersion.run_id == run_id))
        == len(curated) + 1
    )
    assert db.scalar(select(func.count()).select_from(Decision).where(Decision.run_id == run_id)) == 60
    assert run.step == len(curated)
    for a in curated:
        assert len(a["answer"]["keep"]) == len(a["ids"]) and a["answer"]["kept"] == sum(a["answer"]["keep"])
    assert (
        db.scalar(
            select(func.count()).select_from(EpochItem).where(EpochItem.run_id == run_id, EpochItem.state != "done")
        )
        == 0
    )


def test_retried_post_returns_stored_answer_without_second_update(client, db, run_id, make_token) -> None:
    trainer = make_token("trainer", [run_id])
    headers = {**trainer, "Content-Type": "application/octet-stream"}
    # warm-up first
    while True:
        m = client.post(f"/v1/runs/{run_id}/manifests", headers=trainer).json()
        ids = [i["sample_id"] for i in m["items"]]
        url = f"/v1/runs/{run_id}/manifests/{m['manifest_id']}/embeddings"
        first = client.post(url, content=npy(encode(ids)), headers=headers).json()
        if m["phase"] == "curation":
            break
    version = db.scalar(select(Run.prototype_version).where(Run.id == run_id))
    again = client.post(url, content=npy(encode(ids)), headers=headers)
    assert again.status_code == 200 and again.json() == first
    db.expire_all()
    assert db.scalar(select(Run.prototype_version).where(Run.id == run_id)) == version
    replay = client.get(f"/v1/runs/{run_id}/steps/{m['step']}", headers=trainer).json()
    assert replay["result"] == first and [i["sample_id"] for i in replay["items"]] == ids


def test_manifest_replay_and_done_answer(client, db, run_id, make_token) -> None:
    trainer = make_token("trainer", [run_id])
    drive(client, run_id, trainer, dtype=np.float32)
    last = client.post(f"/v1/runs/{run_id}/manifests", headers=trainer).json()
    assert last["phase"] == "done" and last["manifest_id"] is None and last["items"] == []
    manifests = db.scalars(select(Manifest).where(Manifest.run_id == run_id).order_by(Manifest.step)).all()
    assert [m.step for m in manifests] == list(range(1, len(manifests) + 1))
    assert all(m.acked_at is not None for m in manifests)

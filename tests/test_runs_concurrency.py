"""Eight trainer clients against a real uvicorn process and Postgres drain the warm-up and the first
curation epoch concurrently: every sample is handed out exactly once per epoch, steps apply in order."""

from __future__ import annotations

import threading
import time
from collections import Counter

import httpx
from sqlalchemy import func, select

from service.auth import create_token
from service.models import Decision, PrototypeVersion
from tests.runs_helpers import encode, make_dataset, npy
from tests.servers import uvicorn_server

CLIENTS = 8
CONFIG = {"k": 4, "warmup_samples": 200, "batch_size": 16, "epochs": 2, "curation_epochs": 1}


def trainer_loop(url: str, run_id: int, headers: dict, seen: list, errors: list) -> None:
    with httpx.Client(base_url=url, headers=headers, timeout=60) as http:
        try:
            while True:
                m = http.post(f"/v1/runs/{run_id}/manifests").raise_for_status().json()
                if m["phase"] in ("subset", "done"):
                    return
                if m["manifest_id"] is None:
                    time.sleep(min(m["wait_seconds"] or 0.1, 0.2))
                    continue
                ids = [i["sample_id"] for i in m["items"]]
                seen.append((m["epoch"], ids))
                http.post(
                    f"/v1/runs/{run_id}/manifests/{m['manifest_id']}/embeddings",
                    content=npy(encode(ids)),
                    headers={"Content-Type": "application/octet-stream"},
                ).raise_for_status()
        except Exception as exc:  # reported by the test body
            errors.append(repr(exc))


def test_eight_trainers_drain_epochs_exactly_once(pg_url, db, client, admin) -> None:
    dataset_id, sample_ids = make_dataset(db, 400)
    run_id = client.post("/v1/runs", json={"dataset_id": dataset_id, "config": CONFIG}, headers=admin).json()["id"]
    headers = {"Authorization": "Bearer " + create_token(db, "t", "trainer", [run_id])}
    seen: list = []
    errors: list = []
    with uvicorn_server({"CHEX_DATABASE_URL": pg_url}) as url:
        threads = [
            threading.Thread(target=trainer_loop, args=(url, run_id, headers, seen, errors)) for _ in range(CLIENTS)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
    assert not errors, errors
    per_epoch = {0: Counter(), 1: Counter()}
    for epoch, ids in seen:
        per_epoch[epoch].update(ids)
    assert sum(per_epoch[0].values()) == 200 and max(per_epoch[0].values()) == 1
    assert set(per_epoch[1]) == set(sample_ids) and max(per_epoch[1].values()) == 1
    db.expire_all()
    assert db.scalar(select(func.count()).select_from(Decision).where(Decision.run_id == run_id)) == 400
    versions = db.scalars(select(PrototypeVersion.version).where(PrototypeVersion.run_id == run_id)).all()
    assert sorted(versions) == list(range(1, 400 // 16 + 2))
    steps = db.scalars(select(Decision.step).where(Decision.run_id == run_id).distinct()).all()
    assert sorted(steps) == list(range(1, 400 // 16 + 1))

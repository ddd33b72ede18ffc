"""Background tasks on a real worker: a DICOM scan and an offline curation, with progress and results."""

from __future__ import annotations

import shutil
import time

import httpx
import numpy as np
from sqlalchemy import func, select

from service.models import Decision, Run, Sample
from tests.conftest import SHARED_DATA
from tests.runs_helpers import make_dataset, npz
from tests.servers import celery_worker, uvicorn_server


def poll(http: httpx.Client, status_url: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    seen_states = set()
    while time.monotonic() < deadline:
        status = http.get(status_url).raise_for_status().json()
        seen_states.add(status["state"])
        if status["state"] in ("SUCCESS", "FAILURE"):
            status["seen_states"] = seen_states
            return status
        time.sleep(0.1)
    raise AssertionError(f"task did not finish: {status}")


def test_background_dicom_scan_offline_curation_and_neighbour_index(stack_env, client, db, admin, tmp_path) -> None:
    root = tmp_path / "dicom"
    root.mkdir()
    shutil.copy(f"{SHARED_DATA}/dicom/RG1_UNCR.dcm", root / "a.dcm")
    dataset_id = client.post(
        "/v1/datasets", json={"name": f"scan-{time.time_ns()}", "root": str(root)}, headers=admin
    ).json()["id"]
    run_dataset, sample_ids = make_dataset(db, 900)
    run_id = client.post(
        "/v1/runs",
        json={"dataset_id": run_dataset, "config": {"k": 4, "warmup_samples": 200, "batch_size": 128}},
        headers=admin,
    ).json()["id"]
    emb = np.random.default_rng(0).standard_normal((900, 32)).astype(np.float16)
    client.post(
        f"/v1/runs/{run_id}/embeddings",
        content=npz(sample_id=np.asarray(sample_ids), embedding=emb),
        headers={**admin, "Content-Type": "application/octet-stream"},
    ).raise_for_status()

    env = {**stack_env, "CHEX_NEIGHBOUR_INDEX_DIR": str(tmp_path / "indexes")}
    with uvicorn_server(env) as url, celery_worker(env):
        http = httpx.Client(base_url=url, headers=admin, timeout=60)
        queued = http.post(
            f"/v1/datasets/{dataset_id}/dicom-scan?background=true", json={"folder": ".", "synthesize_reports": True}
        )
        assert queued.status_code == 202, queued.text
        done = poll(http, queued.json()["status_url"])
        assert done["state"] == "SUCCESS", done
        assert done["result"]["files"] == 1

        queued = http.post(f"/v1/runs/{run_id}/offline")
        assert queued.status_code == 202, queued.text
        done = poll(http, queued.json()["status_url"])
        assert done["state"] == "SUCCESS", done
        assert done["result"]["rows"] == 900 and 0 < done["result"]["subset_ratio"] < 1
        assert http.get("/v1/tasks/not-a-task").json()["state"] == "PENDING"

        # the neighbour index is built by the worker: 202 + one shared task while it is missing, then served
        sample = sample_ids[0]
        first = http.get(f"/v1/runs/{run_id}/samples/{sample}/neighbours", params={"k": 5})
        again = http.post(f"/v1/runs/{run_id}/neighbour-index")
        assert first.status_code == 202 and first.headers["Retry-After"], first.text
        if again.status_code == 202:  # still building: the same task, not a second build
            assert again.json()["task_id"] == first.json()["task_id"], (first.text, again.text)
        else:  # the worker was already done
            assert again.status_code == 200 and again.json()["rows"] == 900, again.text
        built = poll(http, first.json()["status_url"])
        assert built["state"] == "SUCCESS" and built["result"]["rows"] == 900, built
        assert list((tmp_path / "indexes").glob("*.faiss")), "the worker left no index file for the API"
        found = http.get(f"/v1/runs/{run_id}/samples/{sample}/neighbours", params={"k": 5})
        assert found.status_code == 200, found.text
        unit = emb.astype(np.float32) / np.linalg.norm(emb.astype(np.float32), axis=1, keepdims=True)
        want = np.argsort(-(unit @ unit[0]), kind="stable")[1:6]
        assert [n["sample_id"] for n in found.json()["neighbours"]] == [sample_ids[i] for i in want]
        assert http.post(f"/v1/runs/{run_id}/neighbour-index").json()["rows"] == 900
    db.expire_all()
    run = db.get(Run, run_id)
    assert run.phase == "done" and run.progress["job"] == "offline_curation" and run.progress["stage"] == "done"
    assert db.scalar(select(func.count()).select_from(Decision).where(Decision.run_id == run_id)) == 900
    assert db.scalar(select(func.count()).select_from(Sample).where(Sample.dataset_id == dataset_id)) in (0, 1)


def test_without_workers_tasks_run_in_process(client, db, admin) -> None:
    dataset_id, sample_ids = make_dataset(db, 300)
    run_id = client.post(
        "/v1/runs", json={"dataset_id": dataset_id, "config": {"k": 3, "warmup_samples": 100}}, headers=admin
    ).json()["id"]
    emb = np.random.default_rng(1).standard_normal((300, 16)).astype(np.float32)
    client.post(
        f"/v1/runs/{run_id}/embeddings",
        content=npz(sample_id=np.asarray(sample_ids), embedding=emb),
        headers={**admin, "Content-Type": "application/octet-stream"},
    ).raise_for_status()
    r = client.post(f"/v1/runs/{run_id}/offline", headers=admin)
    assert r.status_code == 200 and r.json()["rows"] == 300
    r = client.get("/v1/tasks/whatever", headers=admin)
    assert r.status_code == 404 and r.json()["error"] == "no_workers"

"""An import as a background job on a real worker (Redis + Celery + Postgres): progress while it runs, the same
answer as in the request; and an offline run over a named embedding set curated by the worker."""

from __future__ import annotations

import io
import time

import httpx
import numpy as np

from tests.import_fixtures import nih_root
from tests.servers import celery_worker, uvicorn_server
from tests.test_workers_tasks import poll


def test_background_import_and_offline_run_over_a_set(stack_env, client, admin, tmp_path) -> None:
    rows = nih_root(tmp_path)
    dataset = client.post(
        "/v1/datasets", json={"name": f"nih-bg-{time.time_ns()}", "root": str(tmp_path)}, headers=admin
    ).json()["id"]
    with uvicorn_server(stack_env) as url, celery_worker(stack_env):
        http = httpx.Client(base_url=url, headers=admin, timeout=60)
        queued = http.post(f"/v1/datasets/{dataset}/import?background=true", json={"format": "nih"})
        assert queued.status_code == 202, queued.text
        done = poll(http, queued.json()["status_url"])
        assert done["state"] == "SUCCESS", done
        assert done["result"]["format"] == "nih" and done["result"]["accepted"] == len(rows) == 2000
        refused = http.post(f"/v1/datasets/{dataset}/import?background=true", json={"format": "mimic-cxr"})
        failed = poll(http, refused.json()["status_url"])
        assert failed["state"] == "FAILURE" and failed["error"]["error"] == "invalid_layout", failed

        set_id = http.post(f"/v1/datasets/{dataset}/embedding-sets", json={"name": "e", "model_id": "m"}).json()["id"]
        buffer = io.BytesIO()
        names = np.array([r["Image Index"] for r in rows])
        np.savez(buffer, external_id=names, embedding=np.random.default_rng(0).normal(size=(2000, 16)).astype("f4"))
        assert http.post(f"/v1/embedding-sets/{set_id}/embeddings", content=buffer.getvalue()).status_code == 200
        run = http.post("/v1/runs", json={"dataset_id": dataset, "embedding_set_id": set_id, "config": {"k": 4}})
        queued = http.post(f"/v1/runs/{run.json()['id']}/offline")
        assert queued.status_code == 202, queued.text
        done = poll(http, queued.json()["status_url"])
        assert done["state"] == "SUCCESS" and done["result"]["rows"] == 2000, done

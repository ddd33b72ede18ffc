"""Helpers for run/manifest tests: a dataset inserted directly, a deterministic fake encoder, and a minimal
trainer that drives a run over HTTP through a real stack."""

from __future__ import annotations

import io
import time
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

import httpx
import numpy as np
from sqlalchemy import func, select

from service.models import Dataset, Decision, PrototypeVersion, Run, Sample


def make_dataset(session, n: int, labels=None) -> tuple[int, list[int]]:
    """A dataset of ``n`` accepted samples (no files needed: runs only hand out their URIs)."""
    dataset = Dataset(name=f"ds-{uuid.uuid4().hex[:8]}", root="/tmp")
    session.add(dataset)
    session.flush()
    samples = [
        Sample(
            dataset_id=dataset.id,
            external_id=f"s{i}",
            image_uri=f"img/{i}.png",
            report=f"report {i}",
            labels=(labels[i] if labels else []),
            meta={},
            content_hash="0" * 64,
            status="accepted",
        )
        for i in range(n)
    ]
    session.add_all(samples)
    session.commit()
    return dataset.id, [s.id for s in samples]


def encode(sample_ids: list[int], dim: int = 32, dtype=np.float16) -> np.ndarray:
    """A fake model: each sample's embedding is fixed by its id, in a few clusters."""
    rows = []
    for sid in sample_ids:
        rng = np.random.default_rng(sid)
        centre = np.random.default_rng(sid % 4).standard_normal(dim)
        rows.append(centre + 0.5 * rng.standard_normal(dim))
    return np.asarray(rows, dtype=dtype)


def npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def npz(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def labelled_run(http, root: str, images: list[tuple[str, str]], config: dict, prefix: str = "run") -> int:
    """Over HTTP as an admin: a dataset at ``root`` of ``(relative path, label)`` images with template reports,
    and a run on it; the run id."""
    created = http.post("/v1/datasets", json={"name": f"{prefix}-{uuid.uuid4().hex[:8]}", "root": root})
    assert created.status_code == 201, created.text
    body = "external_id,image,report,labels\n" + "".join(f"{rel},{rel},,{label}\n" for rel, label in images)
    ingest = http.post(
        f"/v1/datasets/{created.json()['id']}/samples",
        content=body.encode(),
        params={"synthesize_reports": "true"},
        headers={"Content-Type": "text/csv"},
    )
    assert ingest.status_code == 200, ingest.text
    assert ingest.json()["accepted"] == len(images) and ingest.json()["rejected"] == [], ingest.text
    run = http.post("/v1/runs", json={"dataset_id": created.json()["id"], "config": config, "model_id": "tiny"})
    assert run.status_code == 201, run.text
    return int(run.json()["id"])


class Trainer:
    """A minimal trainer: retries 503s and lost connections, drops a batch on 409 lease_expired (counted in
    ``dropped``), records what it was handed."""

    def __init__(self, url: str, run_id: int, headers: dict[str, str]) -> None:
        self.http = httpx.Client(base_url=url, headers=headers, timeout=60)
        self.run_id = run_id
        self.seen: list[tuple[int, list[int]]] = []
        self.retries = 0
        self.dropped = 0
        #: called with the count of curation steps done so far, between requests (a test's kill switch)
        self.after_curation_step: Callable[[int], None] | None = None
        #: called with a manifest just before its embeddings are posted (a test's hook into a step in flight)
        self.before_embeddings: Callable[[dict[str, Any]], None] | None = None

    def post(self, path: str, **kwargs: Any) -> httpx.Response:
        for _ in range(200):
            try:
                r = self.http.post(path, **kwargs)
            except httpx.TransportError:
                r = None
            if r is not None and r.status_code != 503:
                return r
            self.retries += 1
            time.sleep(0.5)
        raise AssertionError(f"{path}: still unavailable")

    def run(self, stop_after_curation_steps: int | None = None) -> None:
        steps = 0
        while True:
            m = self.post(f"/v1/runs/{self.run_id}/manifests").json()
            if m["phase"] == "done":
                return
            if m["manifest_id"] is None:
                time.sleep(min(m["wait_seconds"] or 0.2, 0.5))
                continue
            ids = [i["sample_id"] for i in m["items"]]
            base = f"/v1/runs/{self.run_id}/manifests/{m['manifest_id']}"
            if m["phase"] == "subset":
                r = self.post(base + "/ack")
            else:
                if self.before_embeddings is not None:
                    self.before_embeddings(m)
                r = self.post(
                    base + "/embeddings", content=npy(encode(ids)), headers={"Content-Type": "application/octet-stream"}
                )
            if r.status_code == 409 and r.json()["error"] == "lease_expired":
                self.dropped += 1
                continue
            assert r.status_code == 200, r.text
            self.seen.append((m["epoch"], ids))
            if m["phase"] == "curation":
                steps += 1
                if self.after_curation_step is not None:
                    self.after_curation_step(steps)
                if stop_after_curation_steps is not None and steps >= stop_after_curation_steps:
                    return


def assert_run_complete(db, run_id: int, trainer: Trainer | list[Trainer], n_samples: int, config: dict) -> None:
    """The run is done; the warm-up and the curation epoch handed out each sample once (over all ``trainer``s);
    one decision per sample, one prototype version per applied step (gapless), each step using the version its
    predecessor made; the subset epochs hand out exactly the kept samples, once each."""
    trainers = trainer if isinstance(trainer, list) else [trainer]
    db.expire_all()
    run = db.get(Run, run_id)
    assert run.phase == "done"
    per_epoch: dict[int, Counter] = {}
    for epoch, ids in (seen for t in trainers for seen in t.seen):
        per_epoch.setdefault(epoch, Counter()).update(ids)
    assert sum(per_epoch[0].values()) == config["warmup_samples"] and max(per_epoch[0].values()) == 1
    assert sum(per_epoch[1].values()) == n_samples and max(per_epoch[1].values()) == 1
    decisions = db.scalar(select(func.count()).select_from(Decision).where(Decision.run_id == run_id))
    assert decisions == n_samples  # no curation step applied twice
    versions = db.execute(
        select(PrototypeVersion.version, PrototypeVersion.step).where(PrototypeVersion.run_id == run_id)
    ).all()
    assert sorted(v for v, _ in versions) == list(range(1, run.step + 2))  # strictly increasing, no gap
    assert all(step == version - 1 for version, step in versions)  # version v + 1 is made by step v
    used = db.execute(
        select(Decision.step, func.min(Decision.prototype_version), func.max(Decision.prototype_version))
        .where(Decision.run_id == run_id)
        .group_by(Decision.step)
    ).all()
    assert sorted(step for step, _, _ in used) == list(range(1, run.step + 1))
    assert all(low == high == step for step, low, high in used)  # step s selected with version s: steps in order
    kept = set(db.scalars(select(Decision.sample_id).where(Decision.run_id == run_id, Decision.kept)))
    for epoch in range(config["curation_epochs"] + 1, config["epochs"] + 1):
        assert set(per_epoch[epoch]) == kept and max(per_epoch[epoch].values()) == 1

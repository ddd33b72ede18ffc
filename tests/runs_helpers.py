"""Helpers for run/manifest tests: a dataset inserted directly, and a deterministic fake encoder."""

from __future__ import annotations

import io
import uuid

import numpy as np

from service.models import Dataset, Sample


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

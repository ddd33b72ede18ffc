"""A curated run with real images for the explorer's tests: a small synthetic set, a run, embeddings, offline
curation (left to the caller, so a test can watch it happen)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from service.demo.admin_client import AdminApi
from service.demo.csv_files import csv_text, read_csv
from service.synth import generate
from tests.runs_helpers import encode

CONFIG = {"k": 4, "warmup_samples": 60, "batch_size": 40, "max_central": 2, "epochs": 3, "curation_epochs": 1}


def synthetic_run(api: AdminApi, root: Path, n: int = 160, dicom: bool = False) -> tuple[int, int, list[int]]:
    """``(dataset id, run id, sample ids)``: a synthetic set of ``n`` studies at ``root``, a run over it and
    its embeddings stored (not yet curated)."""
    generate(root, n_train=n, n_test=20, seed=3, image_size=48, dicom=dicom)
    dataset_id = api.create_dataset(f"explorer-{root.name}", root)
    columns, rows = read_csv(root / "train.csv")
    upload = api.upload_csv(dataset_id, csv_text(columns, rows))
    assert upload["accepted"] > 0.9 * n, upload
    run_id = api.create_run(dataset_id, CONFIG)
    ids = np.array(sorted(s["id"] for s in api.samples(dataset_id)), dtype=np.int64)
    api.bulk_embeddings(run_id, ids, encode(ids.tolist()))
    return dataset_id, run_id, ids.tolist()

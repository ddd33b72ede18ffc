"""A catalogue of hostile requests over every mutating route: each gets its 4xx and error code (or, for a bad row
of an upload, the row's rejection) and writes nothing: the row count of every table, the content of every table
and a hash of the samples table are the same before and after.

One scratch database and one app with small limits (so oversized bodies stay cheap), built once for the module;
every case is refused, so they do not disturb each other.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import func, select

from service.api.app import create_app
from service.auth import create_token
from service.config import Settings
from service.models import Base, Dataset, Manifest, Run, Sample
from tests.conftest import scratch_database
from tests.hostile import deflated_zeros, npy, npy_header, stored, zip_archive
from tests.runs_helpers import encode

KIB, MIB = 1 << 10, 1 << 20
CONFIG = {"k": 2, "warmup_samples": 8, "batch_size": 8, "epochs": 2, "curation_epochs": 1}
OCTET = {"Content-Type": "application/octet-stream"}
CSV = {"Content-Type": "text/csv"}
JSONL = {"Content-Type": "application/x-ndjson"}
JSON = {"Content-Type": "application/json"}


@dataclass
class World:
    client: TestClient
    app: Any
    root: Path
    ids: dict[str, Any] = field(default_factory=dict)
    tokens: dict[str, dict[str, str]] = field(default_factory=dict)

    def path(self, template: str) -> str:
        return template.format(**self.ids)


def snapshot(app) -> dict[str, Any]:
    """Row counts of every table, a hash of each table's rows, and of the samples table on its own."""
    counts, hashes = {}, {}
    with app.state.sessions() as session:
        for table in Base.metadata.sorted_tables:
            counts[table.name] = session.scalar(select(func.count()).select_from(table))
            rows = session.execute(select(table).order_by(*table.primary_key.columns)).all()
            hashes[table.name] = hashlib.sha256(repr([tuple(r) for r in rows]).encode()).hexdigest()
    return {"counts": counts, "tables": hashes, "samples": hashes["samples"]}


def png(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", (8, 8), 7).save(path)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    allowed = tmp_path_factory.mktemp("hostile") / "allowed"
    root, other_root = allowed / "a", allowed / "b"
    png(root / "img" / "ok.png")
    png(other_root / "img" / "ok.png")
    (root / "dicom").mkdir()
    (root / "reports.jsonl").write_text('{"sop_uid": "1.2.3", "report": "a \\ud800 report"}\n')
    settings = Settings(
        allowed_roots=[allowed],
        max_body_bytes=4 * MIB,
        max_json_body_bytes=16 * KIB,
        max_inflated_bytes=1 * MIB,
        max_line_bytes=64 * KIB,
    )
    with scratch_database() as url:
        app = create_app(settings.model_copy(update={"database_url": url}))
        with TestClient(app) as client:
            yield setup_world(World(client, app, root), other_root)
        app.state.engine.dispose()


def setup_world(w: World, other_root: Path) -> World:
    c = w.client
    with w.app.state.sessions() as session:
        admin = {"Authorization": "Bearer " + create_token(session, "admin", "admin")}
    w.tokens["admin"] = admin
    rows = "external_id,image,report\n" + "".join(f"s{i},img/ok.png,report number {i}\n" for i in range(24))
    for key, root, body in (("A", w.root, rows), ("B", other_root, rows.split("s3,")[0])):
        made = c.post("/v1/datasets", json={"name": f"{key}-{uuid.uuid4().hex[:6]}", "root": str(root)}, headers=admin)
        assert made.status_code == 201, made.text
        w.ids[key] = made.json()["id"]
        up = c.post(f"/v1/datasets/{w.ids[key]}/samples", content=body.encode(), headers={**admin, **CSV})
        assert up.status_code == 200 and not up.json()["rejected"], up.text
    with w.app.state.sessions() as session:
        legacy = Dataset(name="legacy-root", root="/")  # registered before allowed roots existed
        session.add(legacy)
        session.commit()
        w.ids["legacy"] = legacy.id
        w.ids["sB"] = session.scalar(select(Sample.id).where(Sample.dataset_id == w.ids["B"]))
    made = c.post(f"/v1/datasets/{w.ids['B']}/embedding-sets", json={"name": "e", "model_id": "m"}, headers=admin)
    assert made.status_code == 201, made.text
    w.ids["EB"] = made.json()["id"]  # a named embedding set of dataset B
    made = c.post(f"/v1/datasets/{w.ids['A']}/embedding-sets", json={"name": "e", "model_id": "m"}, headers=admin)
    w.ids["EA"] = made.json()["id"]
    for key in ("W", "S"):  # W: a warm-up run; S: a run stopped by a failing step
        run = c.post("/v1/runs", json={"dataset_id": w.ids["A"], "config": CONFIG}, headers=admin)
        assert run.status_code == 201, run.text
        w.ids[key] = run.json()["id"]
        with w.app.state.sessions() as session:
            w.tokens[key] = {"Authorization": "Bearer " + create_token(session, key, "trainer", [w.ids[key]])}
        lease = c.post(f"/v1/runs/{w.ids[key]}/manifests", headers=w.tokens[key]).json()
        w.ids["m" + key] = lease["manifest_id"]
        w.ids["leased" + key] = [i["sample_id"] for i in lease["items"]]
    # C: a run in curation (its warm-up posted, k-means run in the request), holding a curation manifest
    run = c.post("/v1/runs", json={"dataset_id": w.ids["A"], "config": CONFIG}, headers=admin).json()
    w.ids["C"] = run["id"]
    with w.app.state.sessions() as session:
        w.tokens["C"] = {"Authorization": "Bearer " + create_token(session, "C", "trainer", [w.ids["C"]])}
    while (lease := c.post(f"/v1/runs/{w.ids['C']}/manifests", headers=w.tokens["C"]).json())["phase"] == "warmup":
        ids = [i["sample_id"] for i in lease["items"]]
        url = f"/v1/runs/{w.ids['C']}/manifests/{lease['manifest_id']}/embeddings"
        assert c.post(url, content=npy(encode(ids)), headers={**w.tokens["C"], **OCTET}).status_code == 200
    w.ids["mC"] = lease["manifest_id"]
    w.ids["leasedC"] = [i["sample_id"] for i in lease["items"]]
    with w.app.state.sessions() as session:
        stopped = session.get(Run, w.ids["S"])
        stopped.error = {
            "step": "warmup_kmeans",
            "code": "bad_stored_embeddings",
            "detail": "samples [1] have stored embeddings that are not finite or all zeros; exclude them",
            "failures": 1,
            "stopped": True,
            "at": "2026-01-01T00:00:00+00:00",
        }
        session.commit()
        leased = set(w.ids["leasedW"])
        pool = session.scalars(select(Sample.id).where(Sample.dataset_id == w.ids["A"]).order_by(Sample.id))
        w.ids["unleased"] = next(s for s in pool if s not in leased)
        w.ids["sA"] = w.ids["leasedW"][0]
        assert session.get(Manifest, w.ids["mW"]).phase == "warmup"
    return w


def chunks(total: int, line: bytes = b" " * (64 * KIB)) -> Iterator[bytes]:
    """A body sent chunked (no Content-Length): only counting while it streams can bound it."""
    for _ in range(total // len(line)):
        yield line


def deep_json(levels: int) -> str:
    return '{"a":' * levels + "1" + "}" * levels


def float_rows(n: int, row: int, value: float) -> bytes:
    arr = encode(list(range(1, n + 1))).astype(np.float32)
    arr[row] = value
    return npy(arr)


def npz_of(**members: bytes) -> bytes:
    return zip_archive([stored(f"{name}.npy", data) for name, data in members.items()])


def ids_npy(n: int) -> bytes:
    return npy(np.arange(1, n + 1, dtype=np.int64))


@dataclass(frozen=True)
class Case:
    method: str
    path: str
    request: Callable[[World], dict[str, Any]]
    status: int
    code: str  # the ``error`` of the answer; for a row rejection (status 200), a fragment of the row's reason
    token: str = "admin"


def body(content: bytes | str, headers: dict[str, str]) -> Callable[[World], dict[str, Any]]:
    return lambda w: {"content": content if isinstance(content, bytes) else content.encode(), "headers": headers}


def as_json(value: Any) -> Callable[[World], dict[str, Any]]:
    return lambda w: {"json": value(w) if callable(value) else value}


LEASED_ROWS = 8  # the warm-up manifests hold batch_size rows
BOMB_HEAD = npy_header((2, 2**29))  # float16 [2, 536870912]: 2 GiB

CASES: dict[str, Case] = {
    # ---- POST /v1/datasets ----
    "dataset_root_slash": Case(
        "POST", "/v1/datasets", as_json({"name": "slash", "root": "/"}), 422, "root_not_allowed"
    ),
    "dataset_root_etc": Case("POST", "/v1/datasets", as_json({"name": "etc", "root": "/etc"}), 422, "root_not_allowed"),
    "dataset_root_5000_chars": Case(
        "POST", "/v1/datasets", as_json({"name": "long", "root": "/" + "r" * 5000}), 422, "invalid_request"
    ),
    "dataset_root_300_char_component": Case(
        "POST", "/v1/datasets", lambda w: {"json": {"name": "n", "root": f"{w.root}/{'c' * 300}"}}, 422, "invalid_root"
    ),
    "dataset_root_relative": Case(
        "POST", "/v1/datasets", as_json({"name": "rel", "root": "data/x"}), 422, "invalid_root"
    ),
    "dataset_json_over_limit": Case(
        "POST",
        "/v1/datasets",
        body(json.dumps({"name": "big", "root": "/" + "x" * 20_000}), JSON),
        413,
        "body_too_large",
    ),
    "dataset_json_chunked_over_limit": Case(
        "POST", "/v1/datasets", lambda w: {"content": chunks(1 * MIB), "headers": JSON}, 413, "body_too_large"
    ),
    "dataset_root_lone_surrogate": Case(
        "POST", "/v1/datasets", body(b'{"name": "s", "root": "/tmp/\\ud800"}', JSON), 422, "invalid_request"
    ),
    "dataset_by_trainer": Case("POST", "/v1/datasets", as_json({"name": "t", "root": "/tmp"}), 403, "forbidden", "W"),
    # ---- POST /v1/datasets/{id}/samples ----
    "csv_image_path_5000_chars": Case(
        "POST",
        "/v1/datasets/{A}/samples",
        body(f"external_id,image,report\nn1,{'p' * 5000},a report\n", CSV),
        200,
        "over the limit of 4095",
    ),
    "csv_image_path_component_300": Case(
        "POST",
        "/v1/datasets/{A}/samples",
        body(f"external_id,image,report\nn2,img/{'q' * 300}.png,a report\n", CSV),
        200,
        "component of 304 bytes",
    ),
    "csv_encoded_lone_surrogate": Case(
        "POST",
        "/v1/datasets/{A}/samples",
        body("external_id,image,report\nn3,img/ok.png,bad \ud800 report\n".encode("utf-8", "surrogatepass"), CSV),
        200,
        "lone surrogate",
    ),
    "jsonl_external_id_5000_digits": Case(
        "POST",
        "/v1/datasets/{A}/samples",
        body('{"external_id": ' + "9" * 5000 + ', "image": "img/ok.png", "report": "a report"}\n', JSONL),
        200,
        "more than 100 digits",
    ),
    "jsonl_meta_5000_deep": Case(
        "POST",
        "/v1/datasets/{A}/samples",
        body(
            '{"external_id": "n4", "image": "img/ok.png", "report": "a report", "meta": ' + deep_json(5000) + "}\n",
            JSONL,
        ),
        200,
        "nested deeper than 32",
    ),
    "jsonl_lone_surrogate_report": Case(
        "POST",
        "/v1/datasets/{A}/samples",
        body('{"external_id": "n5", "image": "img/ok.png", "report": "bad \\ud800 report"}\n', JSONL),
        200,
        "lone surrogate (U+D800)",
    ),
    "jsonl_nan": Case(
        "POST",
        "/v1/datasets/{A}/samples",
        body('{"external_id": "n6", "image": "img/ok.png", "report": "a report", "x": NaN}\n', JSONL),
        200,
        "NaN is not a JSON number",
    ),
    "jsonl_float_overflow": Case(
        "POST",
        "/v1/datasets/{A}/samples",
        body('{"external_id": "n7", "image": "img/ok.png", "report": "a report", "x": 1e999}\n', JSONL),
        200,
        "out of range",
    ),
    "jsonl_image_path_5000_chars": Case(
        "POST",
        "/v1/datasets/{A}/samples",
        body('{"external_id": "n8", "image": "' + "p" * 5000 + '", "report": "a report"}\n', JSONL),
        200,
        "over the limit of 4095",
    ),
    "upload_line_over_limit": Case(
        "POST",
        "/v1/datasets/{A}/samples",
        body("external_id,image,report\nn9,img/ok.png," + "r" * 70_000 + "\n", CSV),
        400,
        "malformed_body",
    ),
    "upload_over_limit_declared": Case(
        "POST", "/v1/datasets/{A}/samples", body(b"external_id\n" + b"x\n" * (2 * MIB + 1), CSV), 413, "body_too_large"
    ),
    "upload_over_limit_chunked": Case(
        "POST",
        "/v1/datasets/{A}/samples",
        lambda w: {"content": iter([b"external_id\n", *chunks(5 * MIB, b"e" * 60_000 + b"\n")]), "headers": CSV},
        413,
        "body_too_large",
    ),
    "upload_invalid_utf8": Case(
        "POST", "/v1/datasets/{A}/samples", body(b"external_id,image\nn10,\xff\xfe\n", CSV), 400, "malformed_body"
    ),
    "upload_unknown_dataset": Case(
        "POST", "/v1/datasets/999999/samples", body("external_id\n", CSV), 404, "unknown_dataset"
    ),
    "upload_dataset_id_beyond_bigint": Case(
        "POST", f"/v1/datasets/{2**63}/samples", body("external_id\n", CSV), 422, "invalid_request"
    ),
    "upload_wrong_media_type": Case("POST", "/v1/datasets/{A}/samples", body("x", JSON), 415, "unsupported_media_type"),
    "upload_into_root_outside_allowed": Case(
        "POST",
        "/v1/datasets/{legacy}/samples",
        body("external_id,image\nn11,etc/passwd\n", CSV),
        409,
        "root_not_allowed",
    ),
    # ---- POST /v1/datasets/{id}/dicom-scan ----
    "dicom_folder_5000_chars": Case(
        "POST", "/v1/datasets/{A}/dicom-scan", as_json({"folder": "f" * 5000}), 422, "invalid_request"
    ),
    "dicom_folder_path_over_limit": Case(
        "POST", "/v1/datasets/{A}/dicom-scan", as_json({"folder": "/".join(["f" * 200] * 20)}), 422, "invalid_path"
    ),
    "dicom_folder_300_char_component": Case(
        "POST", "/v1/datasets/{A}/dicom-scan", as_json({"folder": "dicom/" + "g" * 300}), 422, "invalid_path"
    ),
    "dicom_folder_escape": Case(
        "POST", "/v1/datasets/{A}/dicom-scan", as_json({"folder": "../.."}), 422, "invalid_path"
    ),
    "dicom_scan_of_root_outside_allowed": Case(
        "POST", "/v1/datasets/{legacy}/dicom-scan", as_json({"folder": "etc"}), 409, "root_not_allowed"
    ),
    "dicom_sidecar_lone_surrogate": Case(
        "POST",
        "/v1/datasets/{A}/dicom-scan",
        as_json({"folder": "dicom", "reports": "reports.jsonl"}),
        400,
        "malformed_sidecar",
    ),
    # ---- POST /v1/datasets/{id}/import ----
    "import_unknown_format": Case(
        "POST", "/v1/datasets/{A}/import", as_json({"format": "dicomdir"}), 422, "invalid_request"
    ),
    "import_missing_layout": Case(
        "POST", "/v1/datasets/{A}/import", as_json({"format": "mimic-cxr"}), 422, "invalid_layout"
    ),
    "import_table_escaping_the_root": Case(
        "POST",
        "/v1/datasets/{A}/import",
        as_json({"format": "padchest", "options": {"table": "../../../etc/passwd"}}),
        422,
        "invalid_layout",
    ),
    "import_table_path_5000_chars": Case(
        "POST",
        "/v1/datasets/{A}/import",
        as_json({"format": "nih", "options": {"table": "t" * 5000}}),
        422,
        "invalid_request",
    ),
    "import_unknown_option": Case(
        "POST", "/v1/datasets/{A}/import", as_json({"format": "nih", "options": {"x": 1}}), 422, "invalid_request"
    ),
    "import_into_root_outside_allowed": Case(
        "POST", "/v1/datasets/{legacy}/import", as_json({"format": "nih"}), 409, "root_not_allowed"
    ),
    "import_unknown_dataset": Case(
        "POST", "/v1/datasets/999999/import", as_json({"format": "nih"}), 404, "unknown_dataset"
    ),
    "import_by_trainer": Case("POST", "/v1/datasets/{A}/import", as_json({"format": "nih"}), 403, "forbidden", "W"),
    # ---- POST /v1/datasets/{id}/embedding-sets ----
    "embedding_set_bad_name": Case(
        "POST", "/v1/datasets/{A}/embedding-sets", as_json({"name": "../x", "model_id": "m"}), 422, "invalid_request"
    ),
    "embedding_set_name_taken": Case(
        "POST", "/v1/datasets/{A}/embedding-sets", as_json({"name": "e", "model_id": "m"}), 409, "embedding_set_exists"
    ),
    "embedding_set_model_id_5000_chars": Case(
        "POST",
        "/v1/datasets/{A}/embedding-sets",
        as_json({"name": "m", "model_id": "m" * 5000}),
        422,
        "invalid_request",
    ),
    "embedding_set_of_unknown_dataset": Case(
        "POST", "/v1/datasets/999999/embedding-sets", as_json({"name": "n", "model_id": "m"}), 404, "unknown_dataset"
    ),
    "embedding_set_by_trainer": Case(
        "POST", "/v1/datasets/{A}/embedding-sets", as_json({"name": "n", "model_id": "m"}), 403, "forbidden", "W"
    ),
    # ---- POST /v1/embedding-sets/{id}/embeddings ----
    "set_npz_unknown_external_ids": Case(
        "POST",
        "/v1/embedding-sets/{EA}/embeddings",
        body(npz_of(external_id=npy(np.array(["s1", "nope"])), embedding=npy(np.ones((2, 4), np.float16))), OCTET),
        422,
        "unknown_samples",
    ),
    "set_npz_foreign_sample_ids": Case(
        "POST",
        "/v1/embedding-sets/{EA}/embeddings",
        lambda w: {
            "content": npz_of(sample_id=npy(np.array([w.ids["sB"]])), embedding=npy(np.ones((1, 4), np.float16))),
            "headers": OCTET,
        },
        422,
        "unknown_samples",
    ),
    "set_npz_external_id_of_6000_chars": Case(
        "POST",
        "/v1/embedding-sets/{EA}/embeddings",
        body(npz_of(external_id=npy(np.array(["x" * 6000])), embedding=npy(np.ones((1, 4), np.float16))), OCTET),
        422,
        "bad_ids",
    ),
    "set_npz_object_external_ids": Case(
        "POST",
        "/v1/embedding-sets/{EA}/embeddings",
        body(npz_of(external_id=npy_header((2,), "|O") + bytes(16), embedding=npy(np.ones((2, 4), np.float16))), OCTET),
        422,
        "bad_ids",
    ),
    "set_npz_2_mb_inflating_to_2_gib": Case(
        "POST",
        "/v1/embedding-sets/{EA}/embeddings",
        lambda w: {
            "content": zip_archive(
                [
                    stored("external_id.npy", npy(np.array(["s1", "s2"]))),
                    deflated_zeros("embedding.npy", BOMB_HEAD, 2**31),
                ]
            ),
            "headers": OCTET,
        },
        413,
        "inflated_too_large",
    ),
    "set_npz_nan_row": Case(
        "POST",
        "/v1/embedding-sets/{EA}/embeddings",
        body(npz_of(external_id=npy(np.array(["s1", "s2"])), embedding=float_rows(2, 1, float("nan"))), OCTET),
        422,
        "non_finite",
    ),
    "set_npz_to_unknown_set": Case(
        "POST",
        "/v1/embedding-sets/999999/embeddings",
        body(npz_of(external_id=npy(np.array(["s1"])), embedding=npy(np.ones((1, 4), np.float16))), OCTET),
        404,
        "unknown_embedding_set",
    ),
    "set_npz_by_trainer": Case("POST", "/v1/embedding-sets/{EA}/embeddings", body(b"PK", OCTET), 403, "forbidden", "W"),
    "run_with_foreign_embedding_set": Case(
        "POST",
        "/v1/runs",
        lambda w: {"json": {"dataset_id": w.ids["A"], "config": CONFIG, "embedding_set_id": w.ids["EB"]}},
        422,
        "foreign_embedding_set",
    ),
    "run_with_unknown_embedding_set": Case(
        "POST",
        "/v1/runs",
        lambda w: {"json": {"dataset_id": w.ids["A"], "config": CONFIG, "embedding_set_id": 999999}},
        404,
        "unknown_embedding_set",
    ),
    # ---- POST /v1/datasets/{id}/exclusions ----
    "exclusion_by_trainer": Case(
        "POST", "/v1/datasets/{A}/exclusions", lambda w: {"json": {"sample_ids": [w.ids["sA"]]}}, 403, "forbidden", "W"
    ),
    "exclusion_of_foreign_sample": Case(
        "POST",
        "/v1/datasets/{A}/exclusions",
        lambda w: {"json": {"sample_ids": [w.ids["sA"], w.ids["sB"]]}},
        404,
        "unknown_samples",
    ),
    "exclusion_id_beyond_bigint": Case(
        "POST", "/v1/datasets/{A}/exclusions", as_json({"sample_ids": [2**63]}), 422, "invalid_request"
    ),
    "exclusion_empty": Case("POST", "/v1/datasets/{A}/exclusions", as_json({"sample_ids": []}), 422, "invalid_request"),
    # ---- POST /v1/runs ----
    "run_batch_size_10e19": Case(
        "POST",
        "/v1/runs",
        lambda w: {"json": {"dataset_id": w.ids["A"], "config": {**CONFIG, "batch_size": 10**19}}},
        422,
        "invalid_config",
    ),
    "run_k_5000": Case(
        "POST", "/v1/runs", lambda w: {"json": {"dataset_id": w.ids["A"], "config": {"k": 5000}}}, 422, "invalid_config"
    ),
    "run_warmup_samples_10e9": Case(
        "POST",
        "/v1/runs",
        lambda w: {"json": {"dataset_id": w.ids["A"], "config": {"warmup_samples": 10**9}}},
        422,
        "invalid_config",
    ),
    "run_epochs_10e6": Case(
        "POST",
        "/v1/runs",
        lambda w: {"json": {"dataset_id": w.ids["A"], "config": {"epochs": 10**6}}},
        422,
        "invalid_config",
    ),
    "run_max_central_10e9": Case(
        "POST",
        "/v1/runs",
        lambda w: {"json": {"dataset_id": w.ids["A"], "config": {"max_central": 10**9}}},
        422,
        "invalid_config",
    ),
    "run_seed_beyond_bigint": Case(
        "POST",
        "/v1/runs",
        lambda w: {"json": {"dataset_id": w.ids["A"], "config": {"seed": 2**64}}},
        422,
        "invalid_config",
    ),
    "run_epsilon_infinity": Case(
        "POST",
        "/v1/runs",
        lambda w: {
            "content": f'{{"dataset_id": {w.ids["A"]}, "config": {{"sinkhorn_epsilon": Infinity}}}}'.encode(),
            "headers": JSON,
        },
        422,
        "invalid_config",
    ),
    "run_epsilon_underflow": Case(
        "POST",
        "/v1/runs",
        lambda w: {"json": {"dataset_id": w.ids["A"], "config": {"sinkhorn_epsilon": 1e-9}}},
        422,
        "invalid_config",
    ),
    "run_dataset_id_beyond_bigint": Case("POST", "/v1/runs", as_json({"dataset_id": 2**63}), 422, "invalid_request"),
    "run_json_300_mib_declared": Case(
        "POST",
        "/v1/runs",
        lambda w: {"content": b"{}", "headers": {**JSON, "Content-Length": str(300 * MIB)}},
        413,
        "body_too_large",
    ),
    "run_json_over_limit": Case(
        "POST",
        "/v1/runs",
        lambda w: {"json": {"dataset_id": w.ids["A"], "model_id": "m" * 40_000}},
        413,
        "body_too_large",
    ),
    # ---- POST /v1/runs/{id}/manifests ----
    "lease_checkpoint_step_beyond_bigint": Case(
        "POST", "/v1/runs/{W}/manifests", as_json({"checkpoint_step": 2**64}), 422, "invalid_request", "W"
    ),
    "lease_size_over_max": Case(
        "POST", "/v1/runs/{W}/manifests?size=1000000", lambda w: {}, 422, "invalid_request", "W"
    ),
    "lease_on_stopped_run": Case("POST", "/v1/runs/{S}/manifests", lambda w: {}, 409, "run_failed", "S"),
    "lease_by_trainer_of_other_run": Case("POST", "/v1/runs/{W}/manifests", lambda w: {}, 403, "forbidden", "S"),
    # ---- POST /v1/runs/{id}/manifests/{mid}/embeddings ----
    "npy_header_shape_2e40": Case(
        "POST",
        "/v1/runs/{W}/manifests/{mW}/embeddings",
        body(npy_header((2**40, 64)) + bytes(64), OCTET),
        400,
        "bad_npy",
        "W",
    ),
    "npy_header_negative_shape": Case(
        "POST",
        "/v1/runs/{W}/manifests/{mW}/embeddings",
        body(npy_header((-8, 64)) + bytes(64), OCTET),
        400,
        "bad_npy",
        "W",
    ),
    "npy_header_too_long": Case(
        "POST",
        "/v1/runs/{W}/manifests/{mW}/embeddings",
        body(b"\x93NUMPY\x02\x00" + (20_000).to_bytes(4, "little") + b" " * 20_000, OCTET),
        400,
        "bad_npy",
        "W",
    ),
    "npy_object_dtype": Case(
        "POST",
        "/v1/runs/{W}/manifests/{mW}/embeddings",
        body(npy(np.array([{"a": 1}] * 8, dtype=object)), OCTET),
        422,
        "bad_dtype",
        "W",
    ),
    "npy_float32_row_of_1e5": Case(
        "POST",
        "/v1/runs/{W}/manifests/{mW}/embeddings",
        body(float_rows(LEASED_ROWS, 3, 1e5), OCTET),
        422,
        "non_finite",
        "W",
    ),
    "npy_float32_row_of_1e-9": Case(
        "POST",
        "/v1/runs/{W}/manifests/{mW}/embeddings",
        body(float_rows(LEASED_ROWS, 5, 1e-9), OCTET),
        422,
        "zero_rows",
        "W",
    ),
    "npy_header_shape_2e40_in_curation": Case(
        "POST",
        "/v1/runs/{C}/manifests/{mC}/embeddings",
        body(npy_header((2**40, 64)) + bytes(64), OCTET),
        400,
        "bad_npy",
        "C",
    ),
    "npy_float32_row_of_1e5_in_curation": Case(
        "POST",
        "/v1/runs/{C}/manifests/{mC}/embeddings",
        body(float_rows(LEASED_ROWS, 0, -1e5), OCTET),
        422,
        "non_finite",
        "C",
    ),
    "npy_over_upload_limit": Case(
        "POST",
        "/v1/runs/{W}/manifests/{mW}/embeddings",
        body(npy(np.ones((8, 2**17), np.float32)), OCTET),
        413,
        "body_too_large",
        "W",
    ),
    "npy_to_stopped_run": Case(
        "POST",
        "/v1/runs/{S}/manifests/{mS}/embeddings",
        lambda w: {"content": npy(encode(w.ids["leasedS"])), "headers": OCTET},
        409,
        "run_failed",
        "S",
    ),
    # ---- POST /v1/runs/{id}/manifests/{mid}/ack ----
    "ack_of_warmup_manifest": Case("POST", "/v1/runs/{W}/manifests/{mW}/ack", lambda w: {}, 409, "wrong_phase", "W"),
    "ack_of_unknown_manifest": Case(
        "POST", "/v1/runs/{W}/manifests/nope/ack", lambda w: {}, 404, "unknown_manifest", "W"
    ),
    # ---- POST /v1/runs/{id}/samples/{sid}/unreadable ----
    "unreadable_not_leased": Case(
        "POST", "/v1/runs/{W}/samples/{unleased}/unreadable", as_json({"reason": "x"}), 409, "not_leased", "W"
    ),
    "unreadable_wrong_manifest": Case(
        "POST",
        "/v1/runs/{W}/samples/{sA}/unreadable",
        lambda w: {"json": {"manifest_id": w.ids["mS"]}},
        409,
        "not_leased",
        "W",
    ),
    "unreadable_of_other_dataset": Case(
        "POST", "/v1/runs/{W}/samples/{sB}/unreadable", lambda w: {}, 404, "unknown_sample", "W"
    ),
    "unreadable_reason_too_long": Case(
        "POST", "/v1/runs/{W}/samples/{sA}/unreadable", as_json({"reason": "r" * 2001}), 422, "invalid_request", "W"
    ),
    "unreadable_unknown_field": Case(
        "POST", "/v1/runs/{W}/samples/{sA}/unreadable", as_json({"status": "rejected"}), 422, "invalid_request", "W"
    ),
    "unreadable_by_other_runs_trainer": Case(
        "POST", "/v1/runs/{W}/samples/{sA}/unreadable", lambda w: {}, 403, "forbidden", "S"
    ),
    # ---- POST /v1/runs/{id}/embeddings (bulk) ----
    "npz_embedding_header_shape_2e40": Case(
        "POST",
        "/v1/runs/{W}/embeddings",
        body(npz_of(sample_id=ids_npy(2), embedding=npy_header((2**40, 64)) + bytes(64)), OCTET),
        422,
        "bad_shape",
    ),
    "npz_embedding_header_width_2e40": Case(
        "POST",
        "/v1/runs/{W}/embeddings",
        body(npz_of(sample_id=ids_npy(2), embedding=npy_header((2, 2**40)) + bytes(64)), OCTET),
        400,
        "bad_npz",
    ),
    "npz_2_mb_inflating_to_2_gib": Case(
        "POST",
        "/v1/runs/{W}/embeddings",
        lambda w: {
            "content": zip_archive(
                [stored("sample_id.npy", ids_npy(2)), deflated_zeros("embedding.npy", BOMB_HEAD, 2**31)]
            ),
            "headers": OCTET,
        },
        413,
        "inflated_too_large",
    ),
    "npz_member_header_lies_about_size": Case(
        "POST",
        "/v1/runs/{W}/embeddings",
        body(
            zip_archive(
                [
                    stored("sample_id.npy", ids_npy(2)),
                    deflated_zeros("embedding.npy", npy_header((2, 2**20)), 1 << 19, 1 << 16),
                ]
            ),
            OCTET,
        ),
        400,
        "bad_npz",
    ),
    "npz_many_members": Case(
        "POST",
        "/v1/runs/{W}/embeddings",
        body(zip_archive([stored(f"m{i}.npy", b"") for i in range(40)]), OCTET),
        413,
        "too_many_members",
    ),
    "npz_row_of_1e5": Case(
        "POST",
        "/v1/runs/{W}/embeddings",
        lambda w: {
            "content": npz_of(sample_id=npy(np.asarray(w.ids["leasedW"][:2])), embedding=float_rows(2, 1, 1e5)),
            "headers": OCTET,
        },
        422,
        "non_finite",
    ),
    "npz_rows_do_not_match_ids": Case(
        "POST",
        "/v1/runs/{W}/embeddings",
        body(npz_of(sample_id=ids_npy(3), embedding=npy(np.ones((2, 4), np.float16))), OCTET),
        422,
        "bad_shape",
    ),
    "npz_lzma_member": Case(
        "POST",
        "/v1/runs/{W}/embeddings",
        body(zip_archive([stored("sample_id.npy", ids_npy(2)), ("embedding.npy", b"\0" * 16, 0, 16, 14)]), OCTET),
        400,
        "bad_npz",
    ),
    "npz_by_trainer": Case("POST", "/v1/runs/{W}/embeddings", body(b"PK", OCTET), 403, "forbidden", "W"),
    # ---- POST /v1/runs/{id}/neighbour-index, /offline, /repair ----
    "index_of_run_without_embeddings": Case("POST", "/v1/runs/{W}/neighbour-index", lambda w: {}, 409, "no_embeddings"),
    "index_of_unknown_run": Case("POST", "/v1/runs/999999/neighbour-index", lambda w: {}, 404, "unknown_run"),
    "offline_of_unknown_run": Case("POST", "/v1/runs/999999/offline", lambda w: {}, 404, "unknown_run"),
    "offline_of_run_without_embeddings": Case("POST", "/v1/runs/{W}/offline", lambda w: {}, 409, "no_embeddings"),
    "dedup_sweep_of_unknown_run": Case("POST", "/v1/runs/999999/dedup-sweep", as_json({}), 404, "unknown_run"),
    "dedup_sweep_without_embeddings": Case("POST", "/v1/runs/{W}/dedup-sweep", as_json({}), 409, "no_embeddings"),
    "dedup_sweep_epsilon_1": Case(
        "POST", "/v1/runs/{W}/dedup-sweep", as_json({"epsilons": [1.0]}), 422, "invalid_request"
    ),
    "repair_excluding_foreign_sample": Case(
        "POST", "/v1/runs/{S}/repair", lambda w: {"json": {"exclude_samples": [w.ids["sB"]]}}, 404, "unknown_samples"
    ),
    "repair_reinit_without_prototypes": Case(
        "POST", "/v1/runs/{S}/repair", as_json({"reinit_prototypes": True}), 409, "no_prototypes"
    ),
    "repair_by_trainer": Case("POST", "/v1/runs/{S}/repair", as_json({}), 403, "forbidden", "S"),
    "repair_of_unknown_run": Case("POST", "/v1/runs/999999/repair", as_json({}), 404, "unknown_run"),
}


def test_the_catalogue_covers_every_mutating_route(world: World) -> None:
    paths = world.app.openapi()["paths"]  # every route of the API, however its routers nest
    mutating = {
        (m.upper(), path) for path, ops in paths.items() for m in ops if m in ("post", "put", "patch", "delete")
    }
    assert len(mutating) >= 13
    covered = set()
    for case in CASES.values():
        concrete = case.path.split("?")[0].strip("/").split("/")
        for method, template in mutating:
            parts = template.strip("/").split("/")
            same_shape = method == case.method and len(parts) == len(concrete)
            if same_shape and all(p == c or p.startswith("{") for p, c in zip(parts, concrete, strict=True)):
                covered.add((method, template))
    assert covered == mutating, f"no hostile case for {sorted(mutating - covered)}"
    assert len(CASES) >= 40


@pytest.mark.parametrize("name", list(CASES))
def test_hostile_request_is_refused_and_writes_nothing(world: World, name: str) -> None:
    case = CASES[name]
    before = snapshot(world.app)
    response = _send(world, case)
    assert response.status_code == case.status, response.text[:500]
    answer = response.json()
    if case.status == 200:  # one bad row of an upload: refused on its own, with its reason
        assert answer["accepted"] == answer["updated"] == 0 and len(answer["rejected"]) == 1, answer
        assert case.code in answer["rejected"][0]["reason"], answer
    else:
        assert answer["error"] == case.code and answer["detail"], answer
    after = snapshot(world.app)
    assert after["counts"] == before["counts"]
    assert after["samples"] == before["samples"]
    assert after["tables"] == before["tables"]


def _send(world: World, case: Case):
    request = case.request(world)
    headers = {**world.tokens[case.token], **request.pop("headers", {})}
    return world.client.request(case.method, world.path(case.path), headers=headers, **request)


def test_error_bodies_name_no_path_outside_the_root(world: World) -> None:
    for name in ("dataset_root_etc", "dicom_scan_of_root_outside_allowed", "upload_into_root_outside_allowed"):
        answer = _send(world, CASES[name]).text
        assert "/etc" not in answer and "passwd" not in answer, answer
    answer = _send(world, CASES["dicom_folder_escape"]).text
    assert str(world.root.parent.parent) not in answer

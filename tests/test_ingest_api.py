"""Datasets and CSV / JSONL sample ingest over HTTP, on the real Postgres."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path

import pytest
from sqlalchemy import func, select

from service.models import Dataset, Sample

from .conftest import SHARED_DATA

COVID = Path(SHARED_DATA) / "covid19_radiography"


def _labelled_images(n_per_label: int = 3) -> list[tuple[str, str]]:
    """(relative path, label) of the first few COVID and Normal images of the shared set."""
    with (COVID / "labels.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    picked: list[tuple[str, str]] = []
    for label in ("COVID", "Normal"):
        picked += [(r["path"], r["label"]) for r in rows if r["label"] == label][:n_per_label]
    return picked


IMAGES = _labelled_images()


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A dataset root with six real PNGs (copied, never written back to the shared data)."""
    path = tmp_path_factory.mktemp("root")
    for rel, _ in IMAGES:
        (path / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(COVID / rel, path / rel)
    return path


def new_dataset(client, admin, root: Path) -> int:
    response = client.post(
        "/v1/datasets", json={"name": f"ds-{uuid.uuid4().hex[:10]}", "root": str(root)}, headers=admin
    )
    assert response.status_code == 201, response.text
    return response.json()["id"]


def count(app, dataset_id: int) -> int:
    with app.state.sessions() as session:
        return session.scalar(select(func.count()).select_from(Sample).where(Sample.dataset_id == dataset_id))


def stored(app, dataset_id: int) -> dict[str, Sample]:
    with app.state.sessions() as session:
        return {s.external_id: s for s in session.scalars(select(Sample).where(Sample.dataset_id == dataset_id))}


def n_datasets(app) -> int:
    with app.state.sessions() as session:
        return session.scalar(select(func.count()).select_from(Dataset))


def post_csv(client, admin, dataset_id: int, text: str, **params):
    headers = {**admin, "Content-Type": "text/csv"}
    return client.post(f"/v1/datasets/{dataset_id}/samples", content=text.encode(), headers=headers, params=params)


def post_jsonl(client, admin, dataset_id: int, rows: list, **params):
    body = "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows)
    headers = {**admin, "Content-Type": "application/x-ndjson"}
    return client.post(f"/v1/datasets/{dataset_id}/samples", content=body.encode(), headers=headers, params=params)


def sha(rel: str) -> str:
    return hashlib.sha256((COVID / rel).read_bytes()).hexdigest()


# --- datasets -----------------------------------------------------------------------------------------


def test_create_list_and_get_dataset(client, admin, root: Path) -> None:
    response = client.post("/v1/datasets", json={"name": "nih-subset.v1", "root": str(root)}, headers=admin)
    assert response.status_code == 201
    created = response.json()
    assert created["name"] == "nih-subset.v1" and created["root"] == str(root) and created["samples"] == 0
    assert created in client.get("/v1/datasets", headers=admin).json()
    assert client.get(f"/v1/datasets/{created['id']}", headers=admin).json() == created


def test_duplicate_name_is_409(client, app, admin, root: Path) -> None:
    body = {"name": f"dup-{uuid.uuid4().hex[:8]}", "root": str(root)}
    assert client.post("/v1/datasets", json=body, headers=admin).status_code == 201
    before = n_datasets(app)
    response = client.post("/v1/datasets", json=body, headers=admin)
    assert response.status_code == 409
    assert response.json()["error"] == "dataset_exists" and body["name"] in response.json()["detail"]
    assert n_datasets(app) == before


@pytest.mark.parametrize("kind", ["relative", "missing", "file"])
def test_bad_root_is_422_naming_it(client, app, admin, root: Path, kind: str) -> None:
    bad = {"relative": "data/xrays", "missing": str(root / "nope"), "file": str(root / IMAGES[0][0])}[kind]
    before = n_datasets(app)
    response = client.post("/v1/datasets", json={"name": f"bad-{kind}", "root": bad}, headers=admin)
    assert response.status_code == 422
    body = response.json()
    assert body["error"] == "invalid_root" and bad in body["detail"] and body["root"] == bad
    assert n_datasets(app) == before


def test_bad_name_is_422(client, app, admin, root: Path) -> None:
    before = n_datasets(app)
    for name in ("", "../etc", "has space", "x" * 201):
        response = client.post("/v1/datasets", json={"name": name, "root": str(root)}, headers=admin)
        assert response.status_code == 422 and response.json()["error"] == "invalid_request"
    assert n_datasets(app) == before


def test_unknown_dataset_is_404(client, admin) -> None:
    for response in (
        client.get("/v1/datasets/999999", headers=admin),
        client.get("/v1/datasets/999999/samples", headers=admin),
        post_csv(client, admin, 999999, "external_id,image,report\n"),
        client.post("/v1/datasets/999999/dicom-scan", json={}, headers=admin),
    ):
        assert response.status_code == 404 and response.json()["error"] == "unknown_dataset"


def test_ingest_needs_an_admin_token(client, app, admin, make_token, root: Path) -> None:
    dataset_id = new_dataset(client, admin, root)
    trainer = make_token("trainer", [1])
    rel = IMAGES[0][0]
    csv_body = f"external_id,image,report\na,{rel},Clear lungs.\n"
    before = n_datasets(app)
    for headers, code in (({}, 401), ({"Authorization": "Bearer chx_wrong"}, 401), (trainer, 403)):
        calls = (
            client.post("/v1/datasets", json={"name": f"x-{code}", "root": str(root)}, headers=headers),
            client.get("/v1/datasets", headers=headers),
            client.get(f"/v1/datasets/{dataset_id}/samples", headers=headers),
            post_csv(client, headers, dataset_id, csv_body),
            client.post(f"/v1/datasets/{dataset_id}/dicom-scan", json={}, headers=headers),
        )
        for response in calls:
            assert response.status_code == code, response.text
            assert response.json()["error"] == ("unauthenticated" if code == 401 else "forbidden")
    assert n_datasets(app) == before and count(app, dataset_id) == 0


# --- CSV / JSONL ingest -------------------------------------------------------------------------------


def test_csv_ingest_stores_hash_labels_and_meta(client, app, admin, root: Path) -> None:
    dataset_id = new_dataset(client, admin, root)
    (a, _), (b, _) = IMAGES[0], IMAGES[3]
    text = (
        "external_id,image,report,labels,site,view\n"
        f'p1,{a},"Patchy bilateral\n  opacities.",COVID|Pneumonia,Doha,PA\n'
        f"p2,./{b},No acute findings.,,Dhaka,\n"
    )
    response = post_csv(client, admin, dataset_id, text)
    assert response.status_code == 200, response.text
    assert response.json() == {"accepted": 2, "updated": 0, "unchanged": 0, "rejected": []}
    rows = stored(app, dataset_id)
    assert rows["p1"].report == "Patchy bilateral opacities." and rows["p1"].report_synthetic is False
    assert rows["p1"].labels == ["COVID", "Pneumonia"] and rows["p1"].meta == {"site": "Doha", "view": "PA"}
    assert rows["p1"].content_hash == sha(a) and rows["p1"].image_uri == a and rows["p1"].status == "accepted"
    assert rows["p2"].image_uri == b and rows["p2"].labels == [] and rows["p2"].meta == {"site": "Dhaka"}
    assert client.get(f"/v1/datasets/{dataset_id}", headers=admin).json()["samples"] == 2


def test_jsonl_ingest(client, app, admin, root: Path) -> None:
    dataset_id = new_dataset(client, admin, root)
    rel = IMAGES[1][0]
    rows = [{"external_id": "j1", "image": rel, "report": "Clear.", "labels": ["Normal"], "meta": {"age": 40}, "x": 1}]
    response = post_jsonl(client, admin, dataset_id, rows)
    assert response.status_code == 200 and response.json()["accepted"] == 1
    sample = stored(app, dataset_id)["j1"]
    assert sample.labels == ["Normal"] and sample.meta == {"age": 40, "x": 1} and sample.content_hash == sha(rel)
    headers = {**admin, "Content-Type": "application/jsonl"}  # the other accepted spelling
    again = client.post(f"/v1/datasets/{dataset_id}/samples", content=json.dumps(rows[0]).encode(), headers=headers)
    assert again.json() == {"accepted": 0, "updated": 0, "unchanged": 1, "rejected": []}


def test_repost_is_unchanged_and_a_changed_row_is_updated(client, app, admin, root: Path) -> None:
    dataset_id = new_dataset(client, admin, root)
    rows = [
        {"external_id": f"r{i}", "image": rel, "report": f"Report {i}.", "labels": [label]}
        for i, (rel, label) in enumerate(IMAGES)
    ]
    assert post_jsonl(client, admin, dataset_id, rows).json()["accepted"] == len(IMAGES)
    first = stored(app, dataset_id)

    assert post_jsonl(client, admin, dataset_id, rows).json() == {
        "accepted": 0, "updated": 0, "unchanged": len(IMAGES), "rejected": []
    }  # fmt: skip
    assert {k: v.updated_at for k, v in stored(app, dataset_id).items()} == {k: v.updated_at for k, v in first.items()}

    rows[0]["report"] = "Report 0, revised."
    rows[1]["image"] = IMAGES[4][0]  # a different image: new content hash
    rows.append({"external_id": "new", "image": IMAGES[5][0], "report": "Clear."})
    response = post_jsonl(client, admin, dataset_id, rows)
    assert response.json() == {"accepted": 1, "updated": 2, "unchanged": len(IMAGES) - 2, "rejected": []}
    after = stored(app, dataset_id)
    assert after["r0"].report == "Report 0, revised." and after["r0"].id == first["r0"].id
    assert after["r1"].content_hash == sha(IMAGES[4][0]) and after["r1"].updated_at > first["r1"].updated_at
    assert after["r2"].updated_at == first["r2"].updated_at
    assert count(app, dataset_id) == len(IMAGES) + 1


@pytest.fixture(scope="module")
def hostile_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A root next to a readable file outside it, with a symlink pointing out and a truncated PNG."""
    base = tmp_path_factory.mktemp("hostile")
    root, outside = base / "root", base / "outside"
    root.mkdir()
    outside.mkdir()
    shutil.copy(COVID / IMAGES[0][0], root / "good.png")
    shutil.copy(COVID / IMAGES[1][0], outside / "x.png")
    os.symlink(outside / "x.png", root / "link-out.png")
    data = (COVID / IMAGES[2][0]).read_bytes()
    (root / "cut.png").write_bytes(data[: len(data) // 2])
    return root


REJECTIONS = [
    ({"report": ""}, "empty report"),
    ({"report": "   \n\t "}, "empty report"),
    ({"report": "___"}, "placeholder-only report: '___'"),
    ({"report": "N/A"}, "placeholder-only report: 'N/A'"),
    ({"report": "see prior report"}, "placeholder-only report"),
    ({"report": "FINDINGS: ___ IMPRESSION: none"}, "placeholder-only report"),
    ({"image": "../outside/x.png"}, "'..' not allowed in image path"),
    ({"image": "ABSOLUTE"}, "absolute image path not allowed"),
    ({"image": "link-out.png"}, "image path resolves outside the dataset root (symlink escape)"),
    ({"image": "missing.png"}, "file not found: missing.png"),
    ({"image": ""}, "missing image path"),
    ({"image": "cut.png"}, "unreadable image"),
    ({"labels": "COVID"}, "labels must be a list of strings"),
]


@pytest.mark.parametrize(("change", "reason"), REJECTIONS, ids=[r for _, r in REJECTIONS])
def test_row_rejections_name_the_reason_and_write_nothing_for_that_row(
    client, app, admin, hostile_root: Path, change: dict, reason: str
) -> None:
    dataset_id = new_dataset(client, admin, hostile_root)
    bad = {"external_id": "bad", "image": "good.png", "report": "Clear lungs."} | change
    if bad["image"] == "ABSOLUTE":
        bad["image"] = str(hostile_root / "good.png")  # exists and is inside, but absolute is refused anyway
    good = {"external_id": "good", "image": "good.png", "report": "Clear lungs."}
    response = post_jsonl(client, admin, dataset_id, [good, bad])
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["accepted"] == 1 and body["rejected"] == [
        {"line": 2, "external_id": "bad", "reason": body["rejected"][0]["reason"]}
    ]
    assert reason in body["rejected"][0]["reason"]
    assert set(stored(app, dataset_id)) == {"good"}


def test_a_rejected_repost_leaves_the_stored_row_alone(client, app, admin, hostile_root: Path) -> None:
    dataset_id = new_dataset(client, admin, hostile_root)
    post_csv(client, admin, dataset_id, "external_id,image,report\na,good.png,Clear lungs.\n")
    before = stored(app, dataset_id)["a"]
    response = post_csv(client, admin, dataset_id, "external_id,image,report\na,good.png,N/A\n")
    assert response.json()["rejected"][0]["reason"].startswith("placeholder-only report")
    after = stored(app, dataset_id)["a"]
    assert (after.report, after.updated_at) == (before.report, before.updated_at)


def test_csv_row_rejections_duplicate_id_missing_id_and_field_count(client, app, admin, hostile_root: Path) -> None:
    dataset_id = new_dataset(client, admin, hostile_root)
    text = (
        "external_id,image,report\n"
        "a,good.png,Clear lungs.\n"
        "a,good.png,Another report.\n"
        ",good.png,Clear lungs.\n"
        "b,good.png,Clear lungs.,extra\n"
        "c,good.png,Clear lungs.\n"
    )
    body = post_csv(client, admin, dataset_id, text).json()
    assert body["accepted"] == 2
    assert body["rejected"] == [
        {"line": 3, "external_id": "a", "reason": "duplicate external_id in upload"},
        {"line": 4, "external_id": None, "reason": "missing external_id"},
        {"line": 5, "external_id": None, "reason": "row has 4 fields but the header has 3"},
    ]
    rows = stored(app, dataset_id)
    assert set(rows) == {"a", "c"} and rows["a"].report == "Clear lungs."  # the first "a" wins


def test_duplicate_of_a_rejected_row_is_still_a_duplicate(client, app, admin, hostile_root: Path) -> None:
    dataset_id = new_dataset(client, admin, hostile_root)
    rows = [
        {"external_id": "a", "image": "good.png", "report": ""},
        {"external_id": "a", "image": "good.png", "report": "Ok."},
    ]
    body = post_jsonl(client, admin, dataset_id, rows).json()
    assert [r["reason"] for r in body["rejected"]] == ["empty report", "duplicate external_id in upload"]
    assert count(app, dataset_id) == 0


def test_synthesized_reports_are_flagged(client, app, admin, root: Path) -> None:
    dataset_id = new_dataset(client, admin, root)
    lines = ["external_id,image,report,labels"] + [f"{rel},{rel},,{label}" for rel, label in IMAGES]
    lines.append(f"with-report,{IMAGES[0][0]},Bilateral opacities.,COVID")
    text = "\n".join(lines) + "\n"

    plain = post_csv(client, admin, dataset_id, text).json()
    assert plain["accepted"] == 1 and {r["reason"] for r in plain["rejected"]} == {"empty report"}

    body = post_csv(client, admin, dataset_id, text, synthesize_reports="true").json()
    assert body["accepted"] == len(IMAGES) and body["unchanged"] == 1 and body["rejected"] == []
    rows = stored(app, dataset_id)
    for rel, label in IMAGES:
        sample = rows[rel]
        assert sample.report_synthetic is True and sample.labels == [label]
        if label == "COVID":
            assert sample.report == "Findings: COVID. Impression: Findings consistent with COVID."
        else:
            assert sample.report.startswith("Findings: The lungs are clear.") and "No acute" in sample.report
    assert rows["with-report"].report_synthetic is False and rows["with-report"].report == "Bilateral opacities."


# --- malformed bodies: 400 and nothing written --------------------------------------------------------


def _seeded(client, app, admin, root: Path) -> tuple[int, dict[str, object]]:
    dataset_id = new_dataset(client, admin, root)
    post_csv(client, admin, dataset_id, f"external_id,image,report\nseed,{IMAGES[0][0]},Clear lungs.\n")
    return dataset_id, {k: (v.report, v.updated_at) for k, v in stored(app, dataset_id).items()}


def test_bad_json_line_is_400_naming_the_line_and_writes_nothing(client, app, admin, root: Path) -> None:
    dataset_id, before = _seeded(client, app, admin, root)
    rel = IMAGES[1][0]
    # Enough good rows first that a batch is already upserted when the bad line arrives: it must roll back.
    rows: list = [{"external_id": f"n{i}", "image": rel, "report": "Clear."} for i in range(1100)]
    rows.insert(0, {"external_id": "seed", "image": rel, "report": "Changed."})
    rows.append('{"external_id": "broken", ')
    response = post_jsonl(client, admin, dataset_id, rows)
    assert response.status_code == 400
    body = response.json()
    assert body["error"] == "malformed_body" and body["line"] == 1102 and "line 1102" in body["detail"]
    after = {k: (v.report, v.updated_at) for k, v in stored(app, dataset_id).items()}
    assert after == before


@pytest.mark.parametrize(
    ("content_type", "body", "line", "needle"),
    [
        ("text/csv", "id,image,report\na,x.png,Fine.\n", 1, "no external_id column"),
        ("text/csv", "", 1, "no header row"),
        ("text/csv", 'external_id,report\na,"unterminated\n', 2, "invalid CSV"),
        ("application/x-ndjson", '{"external_id": "a"}\n[1, 2]\n', 2, "expected a JSON object"),
        ("application/x-ndjson", b'{"external_id": "a", "report": "caf\xe9"}\n', 1, "not valid UTF-8"),
    ],
)
def test_malformed_bodies_are_400_and_write_nothing(client, app, admin, root, content_type, body, line, needle) -> None:
    dataset_id, before = _seeded(client, app, admin, root)
    content = body if isinstance(body, bytes) else body.encode()
    headers = {**admin, "Content-Type": content_type}
    response = client.post(f"/v1/datasets/{dataset_id}/samples", content=content, headers=headers)
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "malformed_body" and response.json()["line"] == line
    assert needle in response.json()["detail"]
    assert {k: (v.report, v.updated_at) for k, v in stored(app, dataset_id).items()} == before


def test_unsupported_content_type_is_415(client, app, admin, root: Path) -> None:
    dataset_id, before = _seeded(client, app, admin, root)
    row = {"external_id": "a", "image": IMAGES[0][0], "report": "Clear."}
    response = client.post(f"/v1/datasets/{dataset_id}/samples", json=row, headers=admin)
    assert response.status_code == 415 and response.json()["error"] == "unsupported_media_type"
    assert "application/json" in response.json()["detail"]
    assert count(app, dataset_id) == len(before)


# --- 413 ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_client(pg_url):
    """The API with a 4 KiB body limit on the same database (the session's admin token works here too)."""
    from fastapi.testclient import TestClient

    from service.api.app import create_app
    from service.config import Settings

    application = create_app(Settings(database_url=pg_url, max_body_bytes=4096))
    with TestClient(application) as test_client:
        yield test_client
    application.state.engine.dispose()


def _big_csv(n: int) -> bytes:
    rel = IMAGES[0][0]
    return (
        "external_id,image,report\n" + "".join(f"big{i},{rel},Clear lungs number {i}.\n" for i in range(n))
    ).encode()


def test_oversized_body_is_413_and_writes_nothing(client, small_client, app, admin, root: Path) -> None:
    dataset_id = new_dataset(client, admin, root)
    url = f"/v1/datasets/{dataset_id}/samples"
    headers = {**admin, "Content-Type": "text/csv"}
    small = small_client.post(url, content=_big_csv(5), headers=headers)  # under the limit: fine
    assert small.status_code == 200 and small.json()["accepted"] == 5

    body = _big_csv(200)
    assert len(body) > 4096
    declared = small_client.post(url, content=body, headers=headers)  # refused on Content-Length
    assert declared.status_code == 413 and declared.json()["error"] == "body_too_large"

    def chunks():  # no Content-Length: refused mid-stream, after rows were already read
        for i in range(0, len(body), 512):
            yield body[i : i + 512]

    streamed = small_client.post(url, content=chunks(), headers=headers)
    assert streamed.status_code == 413 and streamed.json()["error"] == "body_too_large"
    assert streamed.json()["limit"] == 4096
    assert set(stored(app, dataset_id)) == {f"big{i}" for i in range(5)}


# --- listing ------------------------------------------------------------------------------------------


def test_list_samples_pages_and_filters(client, admin, root: Path) -> None:
    dataset_id = new_dataset(client, admin, root)
    rows = [{"external_id": f"s{i}", "image": rel, "report": f"Report {i}."} for i, (rel, _) in enumerate(IMAGES)]
    post_jsonl(client, admin, dataset_id, rows)
    url = f"/v1/datasets/{dataset_id}/samples"
    page = client.get(url, params={"status": "accepted", "limit": 2, "offset": 1}, headers=admin).json()
    assert page["total"] == len(IMAGES) and page["limit"] == 2 and page["offset"] == 1
    assert [s["external_id"] for s in page["items"]] == ["s1", "s2"]
    item = page["items"][0]
    assert item["image_uri"] == IMAGES[1][0] and item["content_hash"] == sha(IMAGES[1][0])
    assert item["status"] == "accepted" and item["report_synthetic"] is False
    assert client.get(url, params={"status": "unreadable"}, headers=admin).json()["total"] == 0
    assert len(client.get(url, headers=admin).json()["items"]) == len(IMAGES)
    for params in ({"status": "bogus"}, {"limit": 0}, {"limit": 1001}, {"offset": -1}):
        response = client.get(url, params=params, headers=admin)
        assert response.status_code == 422 and response.json()["error"] == "invalid_request"


def test_concurrent_uploads_of_the_same_new_rows_store_each_once(client, app, admin, root: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    dataset_id = new_dataset(client, admin, root)
    rows = [{"external_id": f"c{i}", "image": IMAGES[i % len(IMAGES)][0], "report": f"Report {i}."} for i in range(300)]
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: post_jsonl(client, admin, dataset_id, rows), range(4)))
    assert [a.status_code for a in answers] == [200] * 4
    # The per-dataset ingest lock serialises them: exactly one upload inserts, the others see its rows.
    assert sorted(a.json()["accepted"] for a in answers) == [0, 0, 0, 300]
    assert all(a.json()["accepted"] + a.json()["unchanged"] == 300 for a in answers)
    assert count(app, dataset_id) == 300

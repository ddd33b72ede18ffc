"""Importers: each public set from its published layout (real Open-i, PadChest and NIH files; MIMIC-CXR and
CheXpert Plus fixtures with their published columns), with the paper's preprocessing and every row that is not
stored named with its reason; importing again duplicates nothing."""

from __future__ import annotations

import csv
import json
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from typer.testing import CliRunner

from service.models import Sample
from tests.import_fixtures import chexpert_plus_root, mimic_root, nih_root, openi_root, padchest_root


def do_import(client, admin, root: Path, fmt: str, options: dict | None = None, dataset: int | None = None):
    if dataset is None:
        made = client.post(
            "/v1/datasets", json={"name": f"{fmt}-{uuid.uuid4().hex[:8]}", "root": str(root)}, headers=admin
        )
        assert made.status_code == 201, made.text
        dataset = made.json()["id"]
    answer = client.post(
        f"/v1/datasets/{dataset}/import", json={"format": fmt, "options": options or {}}, headers=admin
    )
    return dataset, answer


def stored(db, dataset: int) -> dict[str, Sample]:
    db.expire_all()
    return {s.external_id: s for s in db.scalars(select(Sample).where(Sample.dataset_id == dataset))}


def reasons(result: dict[str, Any], kind: str) -> dict[str, str]:
    return {r["external_id"]: r["reason"] for r in result[f"{kind}_rows"]}


def test_openi_real_reports(client, admin, db, tmp_path: Path) -> None:
    images = openi_root(tmp_path)
    # the XML names no projection: with the default frontal_only every image is skipped, saying why
    dataset, answer = do_import(client, admin, tmp_path, "openi")
    result = answer.json()
    assert answer.status_code == 200 and result["accepted"] == 0 and result["skipped"] == len(images)
    assert set(result["skipped_by_reason"]) == {"view unknown"} and not stored(db, dataset)

    # a projections table as Kaggle publishes it (uid, filename, projection) lets the filter work
    frontal = {name for name in images if name.endswith("-1001")}
    with (tmp_path / "indiana_projections.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["uid", "filename", "projection"])
        for name in images:
            writer.writerow(
                [name.split("_")[0][3:], name[3:] + ".dcm.png", "Frontal" if name in frontal else "Lateral"]
            )
    _, answer = do_import(client, admin, tmp_path, "openi", {"projections": "indiana_projections.csv"}, dataset)
    result = answer.json()
    samples = stored(db, dataset)
    assert set(samples) <= frontal and len(samples) == result["accepted"] > 150
    assert result["skipped_by_reason"] == {"view Lateral is not frontal (frontal_only)": len(images) - len(frontal)}

    # every view: the real reports' own problems are named
    _, answer = do_import(client, admin, tmp_path, "openi", {"frontal_only": False}, dataset)
    result = answer.json()
    assert result["rejected_by_reason"] == {"empty report": 2, "no image": 3}
    assert result["accepted"] + result["updated"] + result["unchanged"] == len(images) - 2
    samples = stored(db, dataset)
    cxr2 = samples["CXR2_IM-0652-1001"]
    assert cxr2.report == (
        "Borderline cardiomegaly. Midline sternotomy XXXX. Enlarged pulmonary arteries. Clear lungs. Inferior XXXX "
        "XXXX XXXX. No acute pulmonary findings."
    )
    assert cxr2.labels == ["Cardiomegaly", "Pulmonary Artery"] and cxr2.meta["indication"] == "Preop bariatric surgery."
    assert (cxr2.patient_id, cxr2.study_id, cxr2.image_uri) == ("CXR2", "CXR2", "CXR2_IM-0652-1001.png")
    assert "view" not in cxr2.meta and len(cxr2.content_hash) == 64 and not cxr2.report_synthetic

    # impression alone when asked
    _, answer = do_import(client, admin, tmp_path, "openi", {"frontal_only": False, "sections": "impression"}, dataset)
    assert answer.json()["updated"] > 0
    assert stored(db, dataset)["CXR2_IM-0652-1001"].report == "No acute pulmonary findings."


def test_padchest_real_table_is_idempotent(client, admin, db, tmp_path: Path) -> None:
    rows = padchest_root(tmp_path)
    views = Counter(r["Projection"] for r in rows)
    dataset, answer = do_import(client, admin, tmp_path, "padchest")
    result = answer.json()
    frontal = views["PA"] + views["AP"] + views["AP_horizontal"] + views["COSTAL"]
    # three frontal rows of the real table have the report "nan": refused as placeholders
    assert result["rows"] == len(rows) == 2000 and result["accepted"] == frontal - 3
    assert result["rejected_by_reason"] == {"placeholder-only report": 3}
    assert {r["reason"] for r in result["rejected_rows"]} == {"placeholder-only report: 'nan'"}
    assert result["skipped_by_reason"] == {"view L is not frontal (frontal_only)": views["L"]}
    first = next(r for r in rows if r["Projection"] == "L")
    pa = next(r for r in rows if r["Projection"] == "PA" and "cardiomegaly" in r["Labels"])
    sample = stored(db, dataset)[pa["ImageID"]]
    assert sample.image_uri == f"{pa['ImageDir']}/{pa['ImageID']}" and "cardiomegaly" in sample.labels
    assert (sample.patient_id, sample.study_id) == (pa["PatientID"], pa["StudyID"])
    assert sample.report == " ".join(pa["Report"].split()) and first["ImageID"] not in stored(db, dataset)
    # importing again stores nothing twice
    _, again = do_import(client, admin, tmp_path, "padchest", dataset=dataset)
    assert (again.json()["accepted"], again.json()["updated"], again.json()["unchanged"]) == (0, 0, frontal - 3)
    assert db.scalar(select(func.count()).select_from(Sample).where(Sample.dataset_id == dataset)) == frontal - 3


def test_nih_real_table_through_the_cli_reports_made_from_labels(pg_url, tmp_path: Path, monkeypatch, db) -> None:
    from service.cli import app
    from service.config import get_settings

    rows = nih_root(tmp_path)
    (tmp_path / "images" / rows[5]["Image Index"]).unlink()  # one image missing
    monkeypatch.setenv("CHEX_DATABASE_URL", pg_url)
    get_settings.cache_clear()
    try:
        name = f"nih-{uuid.uuid4().hex[:8]}"
        log = tmp_path / "rejections.csv"
        result = CliRunner().invoke(app, ["import", "nih", str(tmp_path), "--name", name, "--rejections", str(log)])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert (
        summary["rows"] == 2000
        and summary["accepted"] == 1999
        and summary["rejected_by_reason"] == {"file not found": 1}
    )
    logged = list(csv.DictReader(log.open()))
    assert [(r["kind"], r["external_id"]) for r in logged] == [("rejected", rows[5]["Image Index"])]
    samples = stored(db, summary["dataset_id"])
    two = next(r for r in rows[100:] if "|" in r["Finding Labels"])
    sample = samples[two["Image Index"]]
    assert sample.report_synthetic and sample.labels == two["Finding Labels"].split("|")
    assert all(label.replace("_", " ") in sample.report for label in sample.labels)
    assert sample.patient_id == two["Patient ID"] and sample.image_uri == f"images/{two['Image Index']}"
    assert samples[rows[0]["Image Index"]].split == "test" and sample.split is None
    normal = next(s for s in samples.values() if s.labels == ["No Finding"])
    assert normal.report_synthetic and "No acute cardiopulmonary abnormality" in normal.report


@pytest.mark.parametrize("sectioned", [False, True], ids=["report-files", "sectioned-csv"])
def test_mimic_cxr_fixture(client, admin, db, tmp_path: Path, sectioned: bool) -> None:
    mimic_root(tmp_path, sectioned)
    dataset, answer = do_import(client, admin, tmp_path, "mimic-cxr")
    result = answer.json()
    assert answer.status_code == 200, result
    assert result["accepted"] == 3 and reasons(result, "skipped") == {
        "d1-lat": "view LATERAL is not frontal (frontal_only)"
    }
    refused = reasons(result, "rejected")
    assert refused["d3-pa"].startswith("placeholder-only report") and refused["d4-ap"].startswith("file not found")
    samples = stored(db, dataset)
    pa = samples["d1-pa"]
    assert (
        pa.report
        == "There is no focal consolidation, pleural effusion or pneumothorax. No acute cardiopulmonary process."
    )
    assert (pa.patient_id, pa.study_id, pa.split, pa.labels) == ("10000032", "50414267", "train", ["No Finding"])
    assert pa.image_uri == "files/p10/p10000032/s50414267/d1-pa.jpg" and pa.meta["ViewPosition"] == "PA"
    ap = samples["d2-ap"]
    assert ap.split == "test" and ap.labels == ["Edema"] and ap.meta["uncertain_labels"] == ["Pleural Effusion"]
    assert samples["d5-pa"].report == "Left lower lobe atelectasis."  # findings alone, no impression
    # U-Ones on request; impression alone on request
    _, answer = do_import(
        client, admin, tmp_path, "mimic-cxr", {"uncertain_labels": "positive", "sections": "impression"}, dataset
    )
    assert reasons(answer.json(), "rejected")["d5-pa"] == "empty report"
    samples = stored(db, dataset)
    assert samples["d2-ap"].labels == ["Edema", "Pleural Effusion"] and samples["d2-ap"].report == "Edema."


def test_chexpert_plus_fixture(client, admin, db, tmp_path: Path) -> None:
    chexpert_plus_root(tmp_path)
    dataset, answer = do_import(client, admin, tmp_path, "chexpert-plus", {"labels_file": "chexpert_labels.csv"})
    result = answer.json()
    assert answer.status_code == 200, result
    assert result["accepted"] == 3 and result["skipped_by_reason"] == {"view Lateral is not frontal (frontal_only)": 1}
    assert reasons(result, "rejected") == {"train/patient00003/study2/view1_frontal.jpg": "empty report"}
    samples = stored(db, dataset)
    first = samples["train/patient00001/study1/view1_frontal.jpg"]
    assert first.report == "Clear lungs. No acute findings." and first.labels == ["No Finding"]
    assert (first.patient_id, first.study_id, first.split) == ("pid-patient00001", "patient00001/study1", "train")
    effusion = samples["train/patient00002/study1/view1_frontal.jpg"]
    assert effusion.report == "Small left effusion." and effusion.labels == ["Pleural Effusion"]
    assert effusion.meta["uncertain_labels"] == ["Edema"]
    valid = samples["valid/patient64541/study1/view1_frontal.jpg"]
    assert valid.report == "Cardiomegaly. Edema. CHF." and valid.split == "valid"


def test_a_wrong_layout_or_bad_table_is_refused_and_writes_nothing(client, admin, db, tmp_path: Path) -> None:
    mimic_root(tmp_path)
    (tmp_path / "mimic-cxr-2.0.0-split.csv.gz").unlink()
    dataset, answer = do_import(client, admin, tmp_path, "mimic-cxr")
    assert answer.status_code == 422 and answer.json()["error"] == "invalid_layout"
    assert "split" in answer.json()["detail"] and not stored(db, dataset)
    (tmp_path / "bad.csv").write_text('ImageID,ImageDir\n"unterminated\n')
    _, answer = do_import(client, admin, tmp_path, "padchest", {"table": "bad.csv"}, dataset)
    assert answer.status_code == 422 and "no StudyID" in answer.json()["detail"]
    (tmp_path / "broken.csv.gz").write_bytes(b"not gzip at all")
    _, answer = do_import(client, admin, tmp_path, "nih", {"table": "broken.csv.gz"}, dataset)
    assert answer.status_code == 400 and answer.json()["error"] == "malformed_file"
    _, answer = do_import(client, admin, tmp_path, "openi", {"table": "../../etc"}, dataset)
    assert answer.status_code == 422 and answer.json()["error"] == "invalid_layout"
    assert not stored(db, dataset)

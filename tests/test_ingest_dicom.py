"""DICOM folder scan: the real CR files (native and JPEG 2000), wrong modality, malformed files, view
filter, sidecar reports; as plain functions and over HTTP on the real Postgres."""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid
from sqlalchemy import select

from service.ingest.dicom import load_sidecar, scan_folder, to_uint8
from service.ingest.paths import PathRejected
from service.ingest.rows import MalformedBody
from service.models import Sample

from .conftest import SHARED_DATA

DICOM = Path(SHARED_DATA) / "dicom"
UNCR, J2K = DICOM / "RG1_UNCR.dcm", DICOM / "RG1_J2KI.dcm"
HEADERS = {name: dcmread(DICOM / f"{name}.dcm", stop_before_pixels=True) for name in ("RG1_UNCR", "RG1_J2KI")}
STUDY = str(HEADERS["RG1_UNCR"].StudyInstanceUID)
SOP_UNCR, SOP_J2K = str(HEADERS["RG1_UNCR"].SOPInstanceUID), str(HEADERS["RG1_J2KI"].SOPInstanceUID)


def _variant(src: Path, dst: Path, **changes: str) -> str:
    """A copy of a real file with some header fields changed and a new SOP uid; returns that uid."""
    ds = dcmread(src)
    for keyword, value in changes.items():
        setattr(ds, keyword, value)
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.save_as(dst, enforce_file_format=True)
    return str(ds.SOPInstanceUID)


@pytest.fixture(scope="module")
def dicom_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """root/scans holds: the two real files, an MR relabel, a lateral view, a truncated file, a text file,
    a symlink to a file outside the root, a symlinked directory, a file without SOP uid and a DICOMDIR."""
    base = tmp_path_factory.mktemp("dicom")
    root, scans, outside = base / "root", base / "root" / "scans", base / "outside"
    (scans / "sub").mkdir(parents=True)
    outside.mkdir()
    shutil.copy(UNCR, scans / "a_uncr.dcm")
    shutil.copy(J2K, scans / "sub" / "b_j2k.dcm")
    _variant(UNCR, scans / "c_mr.dcm", Modality="MR")
    _variant(UNCR, scans / "d_lateral.dcm", ViewPosition="LL")
    data = UNCR.read_bytes()
    (scans / "e_truncated.dcm").write_bytes(data[: len(data) // 2])
    (scans / "f_notes.txt").write_text("not a DICOM file")
    shutil.copy(UNCR, outside / "elsewhere.dcm")
    os.symlink(outside / "elsewhere.dcm", scans / "g_link.dcm")
    os.symlink(outside, scans / "h_dir")
    ds = dcmread(UNCR)
    del ds.SOPInstanceUID
    ds.save_as(scans / "i_no_uid.dcm")
    shutil.copy(UNCR, scans / "DICOMDIR")  # an index file by name: not an image, whatever its content
    return root


def test_scan_folder_reads_both_real_files_and_reports_every_bad_one(dicom_root: Path) -> None:
    result = scan_folder(dicom_root, "scans")
    assert result.seen == 9
    by_uri = {f.uri: f for f in result.files}
    assert set(by_uri) == {"scans/a_uncr.dcm", "scans/sub/b_j2k.dcm", "scans/d_lateral.dcm"}
    native, j2k = by_uri["scans/a_uncr.dcm"], by_uri["scans/sub/b_j2k.dcm"]
    assert native.sha256 == hashlib.sha256(UNCR.read_bytes()).hexdigest()
    assert (native.header.sop_uid, j2k.header.sop_uid) == (SOP_UNCR, SOP_J2K)
    assert native.header.study_uid == j2k.header.study_uid == STUDY
    assert native.header.meta() == {
        "modality": "CR",
        "view_position": "PA",
        "photometric_interpretation": "MONOCHROME1",
        "rows": 1955,
        "columns": 1841,
        "bits_stored": 15,
        "transfer_syntax": "1.2.840.10008.1.2.1",
        "body_part": "CHEST",
    }
    assert j2k.header.transfer_syntax == "1.2.840.10008.1.2.4.91"  # JPEG 2000: decoded by pylibjpeg-openjpeg
    problems = {p.path: p.reason for p in result.problems}
    assert problems["scans/c_mr.dcm"] == "wrong modality: MR"
    assert problems["scans/e_truncated.dcm"].startswith("pixel data does not decode")
    assert problems["scans/f_notes.txt"] == "not a DICOM file"
    assert "symlink escape" in problems["scans/g_link.dcm"]
    assert problems["scans/i_no_uid.dcm"] == "missing SOPInstanceUID"
    assert len(problems) == 5
    assert {(s.path, s.reason) for s in result.skipped} == {
        ("scans/h_dir", "symlinked directory not followed"),
        ("scans/DICOMDIR", "DICOMDIR index file"),
    }


def test_view_position_filter_skips_other_views(dicom_root: Path) -> None:
    result = scan_folder(dicom_root, "scans", ["pa"])
    assert {f.uri for f in result.files} == {"scans/a_uncr.dcm", "scans/sub/b_j2k.dcm"}
    assert ("scans/d_lateral.dcm", "view position LL not in ['PA']") in {(s.path, s.reason) for s in result.skipped}


def test_scan_folder_refuses_a_folder_outside_the_root(dicom_root: Path) -> None:
    for folder, reason in (
        ("../outside", "'..' not allowed"),
        ("scans/h_dir", "symlink escape"),
        ("nope", "not found"),
    ):
        with pytest.raises(PathRejected, match=reason):
            scan_folder(dicom_root, folder)


def test_to_uint8_windows_and_inverts_monochrome1() -> None:
    ds = dcmread(UNCR)
    shown = to_uint8(ds)
    assert shown.shape == (1955, 1841) and shown.dtype == np.uint8 and shown.min() == 0 and shown.max() == 255
    ds.PhotometricInterpretation = "MONOCHROME2"
    assert np.array_equal(to_uint8(ds), 255 - shown)
    # the lossy JPEG 2000 copy shows the same picture, give or take compression error
    assert np.abs(to_uint8(dcmread(J2K)).astype(int) - shown.astype(int)).mean() < 3


def test_load_sidecar_keys_and_errors(tmp_path: Path) -> None:
    (tmp_path / "r.csv").write_text(
        "sop_uid,study_uid,report,labels\n1.2.3,9.9,Own report.,\n,9.9,Study report.,Effusion|Mass\n"
    )
    sidecar = load_sidecar(tmp_path, "r.csv")
    assert sidecar.by_sop["1.2.3"].report == "Own report."
    assert sidecar.by_study["9.9"].labels == ["Effusion", "Mass"]
    cases = {
        "dup.jsonl": ('{"sop_uid": "1", "report": "a"}\n{"sop_uid": "1", "report": "b"}\n', "listed twice"),
        "nokey.jsonl": ('{"report": "a"}\n', "neither sop_uid nor study_uid"),
        "badjson.jsonl": ('{"sop_uid": "1", "report": "a"}\n{oops\n', "invalid JSON"),
        "header.csv": ("uid,report\n1,a\n", "study_uid or a sop_uid column"),
    }
    for name, (text, needle) in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(MalformedBody, match=needle):
            load_sidecar(tmp_path, name)
    (tmp_path / "r.txt").write_text("x")
    with pytest.raises(PathRejected, match="must end in"):
        load_sidecar(tmp_path, "r.txt")


# --- over HTTP ----------------------------------------------------------------------------------------


def new_dataset(client, admin, root: Path) -> int:
    response = client.post(
        "/v1/datasets", json={"name": f"dcm-{uuid.uuid4().hex[:10]}", "root": str(root)}, headers=admin
    )
    assert response.status_code == 201, response.text
    return response.json()["id"]


def stored(app, dataset_id: int) -> dict[str, Sample]:
    with app.state.sessions() as session:
        return {s.external_id: s for s in session.scalars(select(Sample).where(Sample.dataset_id == dataset_id))}


def scan(client, admin, dataset_id: int, **body):
    return client.post(f"/v1/datasets/{dataset_id}/dicom-scan", json=body, headers=admin)


@pytest.fixture(scope="module")
def sidecars(dicom_root: Path) -> Path:
    (dicom_root / "reports.csv").write_text(
        f"study_uid,sop_uid,report,labels\n{STUDY},,Study-level report: no acute findings.,\n"
        f",{SOP_J2K},Lossy copy: no acute findings.,\n"
    )
    (dicom_root / "labels.jsonl").write_text(f'{{"study_uid": "{STUDY}", "report": "", "labels": ["Cardiomegaly"]}}\n')
    (dicom_root / "other.jsonl").write_text('{"sop_uid": "1.2.3.4", "report": "Someone else."}\n')
    (dicom_root / "broken.jsonl").write_text(f'{{"study_uid": "{STUDY}", "report": "x"}}\nnot json\n')
    return dicom_root


def test_dicom_scan_ingests_with_sidecar_reports_and_is_idempotent(client, app, admin, sidecars: Path) -> None:
    dataset_id = new_dataset(client, admin, sidecars)
    response = scan(client, admin, dataset_id, folder="scans", view_positions=["PA", "AP"], reports="reports.csv")
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["files"], body["accepted"], body["updated"], body["unchanged"]) == (9, 2, 0, 0)
    assert {p["path"]: p["reason"] for p in body["problems"]}["scans/c_mr.dcm"] == "wrong modality: MR"
    assert {p["path"] for p in body["problems"]} == {
        "scans/c_mr.dcm", "scans/e_truncated.dcm", "scans/f_notes.txt", "scans/g_link.dcm", "scans/i_no_uid.dcm"
    }  # fmt: skip
    assert "scans/d_lateral.dcm" in {s["path"] for s in body["skipped"]}

    rows = stored(app, dataset_id)
    assert set(rows) == {SOP_UNCR, SOP_J2K}
    native, j2k = rows[SOP_UNCR], rows[SOP_J2K]
    assert native.report == "Study-level report: no acute findings."  # by study uid
    assert j2k.report == "Lossy copy: no acute findings."  # its own SOP uid wins over the study's
    assert native.image_uri == "scans/a_uncr.dcm" and j2k.image_uri == "scans/sub/b_j2k.dcm"
    assert (native.study_uid, native.sop_uid) == (STUDY, SOP_UNCR)
    assert native.content_hash == hashlib.sha256(UNCR.read_bytes()).hexdigest()
    assert native.meta["modality"] == "CR" and native.meta["view_position"] == "PA" and native.meta["rows"] == 1955

    again = scan(client, admin, dataset_id, folder="scans", view_positions=["PA", "AP"], reports="reports.csv").json()
    assert (again["accepted"], again["updated"], again["unchanged"]) == (0, 0, 2)


def test_dicom_scan_without_reports_rejects_and_synthesizes_from_sidecar_labels(client, app, admin, sidecars) -> None:
    dataset_id = new_dataset(client, admin, sidecars)
    body = scan(client, admin, dataset_id, folder="scans/sub").json()
    assert body["accepted"] == 0
    assert body["problems"] == [
        {"path": "scans/sub/b_j2k.dcm", "external_id": SOP_J2K, "reason": "no report (no reports sidecar given)"}
    ]
    body = scan(client, admin, dataset_id, folder="scans/sub", reports="other.jsonl").json()
    assert body["accepted"] == 0 and body["problems"][0]["reason"].startswith("no report: neither its SOP")
    body = scan(client, admin, dataset_id, folder="scans/sub", reports="labels.jsonl").json()
    assert body["accepted"] == 0 and body["problems"][0]["reason"] == "empty report"
    body = scan(client, admin, dataset_id, folder="scans/sub", reports="labels.jsonl", synthesize_reports=True).json()
    assert body["accepted"] == 1
    sample = stored(app, dataset_id)[SOP_J2K]
    assert sample.report_synthetic is True and sample.labels == ["Cardiomegaly"]
    assert sample.report == "Findings: Cardiomegaly. Impression: Findings consistent with Cardiomegaly."


def test_dicom_scan_view_filter_can_exclude_everything(client, app, admin, sidecars: Path) -> None:
    dataset_id = new_dataset(client, admin, sidecars)
    body = scan(client, admin, dataset_id, folder="scans", view_positions=["AP"], reports="reports.csv").json()
    assert body["accepted"] == 0 and stored(app, dataset_id) == {}
    assert {s["reason"] for s in body["skipped"] if s["path"].endswith(".dcm")} == {
        "view position PA not in ['AP']", "view position LL not in ['AP']"
    }  # fmt: skip


@pytest.mark.parametrize(
    ("body", "code", "error", "needle"),
    [
        ({"folder": "../outside"}, 422, "invalid_path", "'..' not allowed in folder"),
        ({"folder": "/etc"}, 422, "invalid_path", "absolute folder"),
        ({"folder": "missing"}, 422, "invalid_path", "file not found"),
        ({"folder": "scans/a_uncr.dcm"}, 422, "invalid_path", "not a directory"),
        ({"folder": "scans", "reports": "../x.csv"}, 422, "invalid_path", "reports path"),
        ({"folder": "scans", "reports": "broken.jsonl"}, 400, "malformed_sidecar", "line 2"),
        ({"folder": "scans", "view_positions": []}, 422, "invalid_request", "view_positions"),
        ({"folder": "scans", "unknown": 1}, 422, "invalid_request", "unknown"),
    ],
)
def test_dicom_scan_bad_requests_write_nothing(client, app, admin, sidecars, body, code, error, needle) -> None:
    dataset_id = new_dataset(client, admin, sidecars)
    response = scan(client, admin, dataset_id, **body)
    assert response.status_code == code, response.text
    assert response.json()["error"] == error and needle in str(response.json()["detail"])
    assert stored(app, dataset_id) == {}


def test_csv_ingest_of_dicom_images_checks_their_pixels(client, app, admin, dicom_root: Path) -> None:
    dataset_id = new_dataset(client, admin, dicom_root)
    text = "external_id,image,report\nok,scans/sub/b_j2k.dcm,Clear lungs.\ncut,scans/e_truncated.dcm,Clear lungs.\n"
    headers = {**admin, "Content-Type": "text/csv"}
    body = client.post(f"/v1/datasets/{dataset_id}/samples", content=text.encode(), headers=headers).json()
    assert body["accepted"] == 1
    assert body["rejected"][0]["external_id"] == "cut"
    assert body["rejected"][0]["reason"].startswith("unreadable image: pixel data does not decode")
    assert set(stored(app, dataset_id)) == {"ok"}


@pytest.mark.filterwarnings("ignore:The value length:UserWarning")  # pydicom, reading the over-long UID back
def test_scan_refuses_unstorable_header_values_file_by_file(client, app, admin, tmp_path: Path) -> None:
    """A header value Postgres cannot hold (a NUL) or a UID longer than its column is that file's problem, not a
    failed scan."""
    root = tmp_path / "root"
    (root / "scans").mkdir(parents=True)
    with pytest.warns(UserWarning, match="Invalid value for VR CS"):
        _variant(UNCR, root / "scans" / "nul.dcm", BodyPartExamined="CHEST\x00X")
    ds = dcmread(UNCR)
    with pytest.warns(UserWarning, match="exceeds the maximum length"):  # pydicom warns, and writes it
        ds.SOPInstanceUID = "1." + "2" * 130
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.save_as(root / "scans" / "long_uid.dcm", enforce_file_format=True)
    (root / "reports.csv").write_text(f"study_uid,report\n{STUDY},Study-level report: no acute findings.\n")
    dataset_id = new_dataset(client, admin, root)
    response = scan(client, admin, dataset_id, folder="scans", reports="reports.csv")
    assert response.status_code == 200, response.text
    reasons = {p["path"]: p["reason"] for p in response.json()["problems"]}
    assert reasons == {
        "scans/nul.dcm": "a header field contains a NUL character",
        "scans/long_uid.dcm": "a UID is longer than 128 characters (DICOM allows 64)",
    }
    assert response.json()["accepted"] == 0 and stored(app, dataset_id) == {}

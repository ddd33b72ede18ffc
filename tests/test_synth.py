"""``chexcurate synth``: determinism, the long tail, near-duplicates, visual signs, reports, noise, and that
the output ingests into the service (CSV and DICOM scan) with the expected accept / reject counts."""

from __future__ import annotations

import csv
import io
import json
import math
import uuid
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom import dcmread
from sqlalchemy import select
from typer.testing import CliRunner

from service.cli import app as cli_app
from service.ingest.dicom import scan_folder
from service.ingest.images import check_image_bytes
from service.ingest.paths import PathRejected
from service.models import Sample
from service.synth import CATALOGUE, generate
from service.synth.findings import BY_LABEL, KEYS, no_finding_rate
from service.synth.generate import SynthConfig, patient, plan, survives_ingest
from service.synth.images import body_coordinates, draw_anatomy, draw_finding_params, render
from service.synth.reports import Phrasing, mentions, write_report
from trainer.data import load_image


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def label_keys(cell: str) -> set[str]:
    return {BY_LABEL[label].key for label in cell.split("|")} if cell else set()


def files_of(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    """A mid-sized PNG set with every noise kind present (rates raised so a small set has them all)."""
    out = tmp_path_factory.mktemp("synth") / "set"
    summary = generate(out, n_train=600, n_test=120, seed=7, noise_rate=0.08, corrupt_rate=0.04, followup_rate=0.3)
    return out, summary


# --- determinism and throughput -----------------------------------------------------------------------


def test_same_seed_same_bytes_and_another_seed_differs(tmp_path: Path) -> None:
    kwargs = {"n_train": 40, "n_test": 10, "noise_rate": 0.1, "corrupt_rate": 0.1}
    generate(tmp_path / "a", seed=3, **kwargs)  # type: ignore[arg-type]
    generate(tmp_path / "b", seed=3, workers=2, **kwargs)  # type: ignore[arg-type]
    generate(tmp_path / "c", seed=4, **kwargs)  # type: ignore[arg-type]
    a, b, c = (files_of(tmp_path / name) for name in "abc")
    assert len(a) == 50 + 5  # 50 images, two CSVs, findings.json, prompts.json, synth.json
    assert a == b  # byte-identical, whether one process renders or two
    assert a["train.csv"] != c["train.csv"]
    shared = set(a) & set(c)
    images = [name for name in shared if name.endswith(".png")]
    assert images and sum(a[n] != c[n] for n in images) == len(images)  # every image differs


def test_a_rerun_replaces_the_previous_output_and_a_foreign_folder_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "set"
    generate(out, n_train=30, n_test=5, seed=1)
    generate(out, n_train=10, n_test=2, seed=1)
    assert len(list((out / "images").rglob("*.png"))) == 12  # no stale images from the bigger run
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        generate(tmp_path / "other", n_train=5, n_test=1)
    with pytest.raises(ValueError, match="noise_rate"):
        generate(tmp_path / "bad", n_train=5, noise_rate=1.5)


def test_throughput(tmp_path: Path) -> None:
    summary = generate(tmp_path / "t", n_train=400, n_test=100, seed=0)
    print(f"\nsynth throughput: {summary.pairs_per_s:.0f} pairs/s (500 pairs, 128 x 128 PNG, 1 process)")
    assert summary.n_train + summary.n_test == 500 and summary.pairs_per_s > 0


# --- the long tail ------------------------------------------------------------------------------------


def test_catalogue_is_long_tailed_and_sampled_prevalence_matches_it() -> None:
    rates = [f.prevalence for f in CATALOGUE]
    # PadChest's: effusion 9 % at the head, pneumoperitoneum 1 in 2,000 at the tail
    assert len(CATALOGUE) >= 12 and max(rates) >= 0.08 and min(rates) <= 0.001
    assert 0.55 <= no_finding_rate() <= 0.6  # no catalogued finding: the head
    n = 20000
    counts = Counter(key for i in range(n) for key in patient(11, i).findings)
    for f in CATALOGUE:
        sd = math.sqrt(f.prevalence * (1 - f.prevalence) / n)
        assert abs(counts[f.key] / n - f.prevalence) < 4.5 * sd + 1e-4, f.key
    assert all(counts[f.key] > 0 for f in CATALOGUE)  # even the rarest appears
    co_occurring = sum(len(patient(11, i).findings) >= 2 for i in range(2000))
    assert co_occurring > 100  # findings co-occur


def test_generated_labels_follow_the_catalogue(dataset) -> None:
    out, summary = dataset
    rows = read_rows(out / "train.csv")
    assert list(rows[0]) == [
        "external_id",
        "image",
        "report",
        "labels",
        "patient_id",
        "study",
        "near_duplicate",
        "noise",
    ]
    for row in rows:
        labels = row["labels"].split("|") if row["labels"] else []
        assert all(label in BY_LABEL for label in labels)
    no_finding = sum(not r["labels"] for r in rows) / len(rows)
    assert summary.prevalence[""] == pytest.approx(no_finding)
    assert abs(no_finding - no_finding_rate()) < 0.1
    findings = json.loads((out / "findings.json").read_text())
    assert [f["label"] for f in findings["findings"]] == [f.label for f in CATALOGUE]
    assert findings["label_separator"] == "|" and findings["no_finding_label"] == ""


# --- splits and near-duplicates -----------------------------------------------------------------------


def test_test_split_is_disjoint_by_patient_and_clean(dataset) -> None:
    out, summary = dataset
    train, test = read_rows(out / "train.csv"), read_rows(out / "test.csv")
    assert len(train) == 600 and len(test) == 120
    assert not {r["patient_id"] for r in train} & {r["patient_id"] for r in test}
    assert all(r["noise"] == "none" and r["near_duplicate"] == "false" for r in test)
    assert len({r["external_id"] for r in train + test}) == 720
    assert summary.patients_test == 120 and summary.patients_train == len({r["patient_id"] for r in train})


def _pixels(out: Path, rel: str) -> np.ndarray:
    with Image.open(out / rel) as image:
        return np.asarray(image, dtype=np.float32) / 255


def test_follow_ups_are_near_duplicates(dataset) -> None:
    out, summary = dataset
    rows = [r for r in read_rows(out / "train.csv") if r["noise"] == "none"]
    by_patient: dict[str, list[dict[str, str]]] = {}
    for row in rows:
        by_patient.setdefault(row["patient_id"], []).append(row)
    for row in rows:
        assert (row["near_duplicate"] == "true") == (row["study"] != "0")
    assert summary.near_duplicates == sum(r["near_duplicate"] == "true" for r in read_rows(out / "train.csv"))
    pairs = [(s[0], s[1]) for s in by_patient.values() if len(s) >= 2 and s[0]["study"] == "0"][:20]
    assert len(pairs) >= 10
    firsts = [r for r in rows if r["study"] == "0"]
    same = [np.abs(_pixels(out, a["image"]) - _pixels(out, b["image"])).mean() for a, b in pairs]
    other = [
        np.abs(_pixels(out, a["image"]) - _pixels(out, firsts[(i * 7 + 3) % len(firsts)]["image"])).mean()
        for i, (a, _) in enumerate(pairs)
    ]
    assert max(same) > 0  # not exact copies
    assert np.median(same) < 0.5 * np.median(other)
    for a, b in pairs:
        assert a["labels"] == b["labels"]  # same findings
        asserted_a, _ = mentions(a["report"])
        asserted_b, _ = mentions(b["report"])
        assert asserted_a == asserted_b == label_keys(a["labels"])
    assert sum(a["report"] != b["report"] for a, b in pairs) >= len(pairs) // 2  # lightly paraphrased


# --- visual signs -------------------------------------------------------------------------------------


def _region(key: str, p: dict[str, float], anat, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, int]:
    """Where a finding's sign must be, and which way it moves intensity (+1 denser, -1 more lucent, 0 either)."""
    au = np.abs(u)
    lungs = (au > 0.12) & (au < 1.0) & (v > 0) & (v < 1.05)
    side = p.get("side", 0.0)
    on_side = (u * side > 0) if side else np.ones_like(u, dtype=bool)
    if key == "fracture":
        rib_v = anat.rib_v0 + anat.rib_step * p["rib"] + anat.rib_curve * u * u
        return (u * side > p["at"] - 0.2) & (np.abs(v - rib_v) < 0.1), 0
    regions = {
        "devices": (np.ones_like(u, dtype=bool), 1),
        "effusion": (lungs & (v > 0.55) & on_side, 1),
        "cardiomegaly": ((au < 0.85) & (np.abs(v - anat.heart_v) < 0.3), 1),
        "atelectasis": (lungs & (v > 0.45) & on_side, 1),
        "consolidation": (lungs & on_side, 1),
        "edema": (lungs & (v > 0.1) & (v < 0.95), 1),
        "nodule": (lungs, 1),
        "hilar": ((au > 0.05) & (au < 0.6) & (v > 0.15) & (v < 0.7) & on_side, 1),
        "pneumothorax": (lungs & (v < 0.5) & on_side, -1),
        "emphysema": (lungs | ((v > 0.7) & (v < 1.2) & (au < 1.0)), -1),
        "mass": (lungs & on_side, 1),
        "granuloma": (lungs & on_side, 1),
        "scoliosis": (au < 0.45, 0),
        "pneumoperitoneum": ((u < 0) & (v > 0.75) & (v < 1.25), -1),
    }
    return regions[key]


@pytest.mark.parametrize("key", KEYS)
def test_each_finding_changes_the_image_where_expected(key: str) -> None:
    for anatomy_seed in range(3):
        anat = draw_anatomy(np.random.default_rng(anatomy_seed))
        u, v = body_coordinates(anat)
        without = render(anat, {})
        for params_seed in range(3):
            params = draw_finding_params(key, np.random.default_rng(100 + params_seed))
            diff = render(anat, {key: params}) - without
            region, direction = _region(key, params, anat, u, v)
            inside = np.abs(diff[region]).sum() / np.abs(diff).sum()
            assert inside >= 0.75, (key, anatomy_seed, params_seed, inside)
            assert np.abs(diff).max() >= 0.05  # visible: more than ~12 grey levels somewhere
            if direction:
                assert np.sign(diff[region].mean()) == direction, (key, diff[region].mean())
    if key == "cardiomegaly":  # the heart shadow itself is wider: brighter just beyond the normal border
        anat = draw_anatomy(np.random.default_rng(0))
        u, v = body_coordinates(anat)
        border = (np.abs(u - anat.heart_u) > anat.heart_a + 0.03) & (np.abs(u - anat.heart_u) < anat.heart_a + 0.12)
        border &= np.abs(v - anat.heart_v) < 0.08
        enlarged = render(anat, {"cardiomegaly": {"ctr": 0.65}})
        assert (enlarged - without)[border].mean() > 0.08


# --- reports ------------------------------------------------------------------------------------------


def test_reports_state_positives_and_negate_only_absent_findings() -> None:
    reports, with_negation = [], 0
    for i in range(1500):
        pat = patient(5, i)
        say = Phrasing(np.random.default_rng([5, i]), np.random.default_rng([6, i]), 0.25)
        report = write_report(pat.findings, say, follow_up=i % 3 == 0)
        asserted, denied = mentions(report.text)
        present = set(pat.findings)
        assert asserted == present, (report.text, present)  # every positive is stated, nothing else is
        assert not denied & present, report.text  # negations only of absent findings
        assert set(report.negated) <= denied
        with_negation += bool(denied)
        assert report.text.startswith("FINDINGS: ") and "\nIMPRESSION: " in report.text
        reports.append((frozenset(present), report.text))
    assert with_negation / len(reports) > 0.9
    normal = [text for present, text in reports if not present]
    assert len(set(normal)) > 30  # paraphrase: no-finding reports are not all one template
    for key in ("effusion", "cardiomegaly", "devices"):
        texts = {text for present, text in reports if present == {key}}
        assert len(texts) > 3, key


def test_negated_findings_cover_the_pertinent_negatives() -> None:
    denied_total: Counter[str] = Counter()
    for i in range(400):
        say = Phrasing(np.random.default_rng([1, i]), np.random.default_rng([2, i]), 0.25)
        _, denied = mentions(write_report({}, say).text)
        denied_total.update(denied)
    assert {"pneumothorax", "effusion", "cardiomegaly"} <= set(denied_total)


# --- noise --------------------------------------------------------------------------------------------


def test_noisy_pairs_are_recorded_and_are_what_they_say(dataset) -> None:
    out, summary = dataset
    rows = read_rows(out / "train.csv")
    kinds = Counter(r["noise"] for r in rows)
    assert set(kinds) == {"none", "mismatched_report", "blank_image", "truncated_image", "undecodable_image"}
    assert {k: kinds[k] for k in summary.noise} == summary.noise
    noisy_share = 1 - kinds["none"] / len(rows)
    assert 0.06 < noisy_share < 0.2  # noise_rate 0.08 + corrupt_rate 0.04
    mismatched_differs = 0
    for row in rows:
        data = (out / row["image"]).read_bytes()
        if row["noise"] == "blank_image":
            pixels = _pixels(out, row["image"])
            assert pixels.min() == pixels.max()
        elif row["noise"] == "truncated_image":
            with pytest.raises(PathRejected):
                check_image_bytes(data)
        elif row["noise"] == "undecodable_image":
            check_image_bytes(data)  # passes the service's structural check ...
            with pytest.raises(Exception), Image.open(io.BytesIO(data)) as image:  # noqa: B017
                image.load()  # ... and fails to decode
        elif row["noise"] == "mismatched_report":
            asserted, _ = mentions(row["report"])
            mismatched_differs += asserted != label_keys(row["labels"])
        else:
            assert mentions(row["report"])[0] == label_keys(row["labels"])
    assert mismatched_differs >= kinds["mismatched_report"] // 2  # another patient's report, usually different


def test_default_rates_give_a_few_percent_noise() -> None:
    studies = plan(SynthConfig(n_train=5000, n_test=0, seed=2))
    noisy = Counter(s.noise for s in studies)
    assert 0.025 < (noisy["mismatched_report"] + noisy["blank_image"]) / 5000 < 0.035
    assert 0.005 < (noisy["truncated_image"] + noisy["undecodable_image"]) / 5000 < 0.015
    assert not any(s.noise != "none" for s in plan(SynthConfig(n_train=500, seed=2, noise_rate=0, corrupt_rate=0)))
    dup_share = sum(s.study > 0 for s in studies) / 5000
    assert 0.65 < dup_share < 0.78  # 3.48 studies per patient (MIMIC-CXR): 1 - 1 / 3.48 = 0.71 are follow-ups


# --- the service accepts it ---------------------------------------------------------------------------


def _new_dataset(client, admin, root: Path) -> int:
    response = client.post(
        "/v1/datasets", json={"name": f"synth-{uuid.uuid4().hex[:8]}", "root": str(root)}, headers=admin
    )
    assert response.status_code == 201, response.text
    return response.json()["id"]


def test_csv_ingests_through_the_api_with_the_expected_counts(client, app, admin, dataset) -> None:
    out, summary = dataset
    dataset_id = _new_dataset(client, admin, out)
    headers = {**admin, "Content-Type": "text/csv"}
    for split in ("train", "test"):
        response = client.post(
            f"/v1/datasets/{dataset_id}/samples", content=(out / f"{split}.csv").read_bytes(), headers=headers
        )
        assert response.status_code == 200, response.text
        body = response.json()
        expected = summary.expected_ingest[split]
        assert body["accepted"] == expected["accepted"] and len(body["rejected"]) == expected["rejected"]
        assert all("unreadable image" in r["reason"] for r in body["rejected"])
    rows = {r["external_id"]: r for r in read_rows(out / "train.csv")}
    rejected_ids = {eid for eid, r in rows.items() if not survives_ingest(r["noise"], "png")}
    assert rejected_ids and all(rows[e]["noise"] == "truncated_image" for e in rejected_ids)
    with app.state.sessions() as session:
        stored = {s.external_id: s for s in session.scalars(select(Sample).where(Sample.dataset_id == dataset_id))}
    assert len(stored) == 720 - len(rejected_ids) and not rejected_ids & set(stored)
    sample = next(s for e, s in stored.items() if rows.get(e, {}).get("study") == "1")
    row = rows[sample.external_id]
    assert sample.labels == (row["labels"].split("|") if row["labels"] else [])
    assert sample.patient_id == row["patient_id"]  # a column of its own, not meta
    assert sample.meta == {
        "study": "1",
        "near_duplicate": "true",
        "noise": row["noise"],
    }
    assert sum(1 for s in stored.values() if s.labels) > 300  # labels are there for the admin label enrichment


def test_dicom_output_has_proper_tags_and_scans_through_the_service(client, app, admin, tmp_path: Path) -> None:
    out = tmp_path / "dicom-set"
    summary = generate(out, n_train=40, n_test=8, seed=5, corrupt_rate=0.1, noise_rate=0.05, dicom=True)
    rows = read_rows(out / "train.csv")
    clean = next(r for r in rows if r["noise"] == "none")
    ds = dcmread(out / clean["image"])
    assert ds.Modality == "CR" and ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.1" and ds.ViewPosition == "PA"
    assert ds.PhotometricInterpretation == "MONOCHROME2" and ds.BitsStored == 12 and ds.BitsAllocated == 16
    assert ds.BodyPartExamined == "CHEST" and ds.PatientID == clean["patient_id"]
    assert ds.pixel_array.shape == (128, 128) and 0 < int(ds.pixel_array.max()) <= 4095
    assert len({ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID}) == 3
    assert np.asarray(load_image(out / clean["image"])).std() > 10  # a real image after the windowing

    scan = scan_folder(out, "dicom/train")
    rejected = summary.expected_ingest["train"]["rejected"]
    assert rejected > 0 and len(scan.files) == 40 - rejected and len(scan.problems) == rejected

    dataset_id = _new_dataset(client, admin, out)
    for split, n in (("train", 40), ("test", 8)):
        body = {"folder": f"dicom/{split}", "reports": f"{split}_reports.csv"}
        response = client.post(f"/v1/datasets/{dataset_id}/dicom-scan", json=body, headers=admin)
        assert response.status_code == 200, response.text
        result = response.json()
        expected = summary.expected_ingest[split]
        assert result["files"] == n and result["accepted"] == expected["accepted"]
        assert len(result["problems"]) == expected["rejected"]
    sidecar = {r["sop_uid"]: r for r in read_rows(out / "train_reports.csv")}
    with app.state.sessions() as session:
        stored = list(session.scalars(select(Sample).where(Sample.dataset_id == dataset_id)))
    assert len(stored) == 48 - rejected
    for sample in stored:
        if sample.sop_uid in sidecar:
            entry = sidecar[sample.sop_uid]
            assert sample.labels == (entry["labels"].split("|") if entry["labels"] else [])
            assert sample.meta["modality"] == "CR" and sample.meta["body_part"] == "CHEST"


# --- the command line ---------------------------------------------------------------------------------


def test_cli_synth_writes_the_set_and_prints_a_json_summary(tmp_path: Path) -> None:
    out = tmp_path / "cli"
    result = CliRunner().invoke(cli_app, ["synth", str(out), "--train", "30", "--test", "6", "--seed", "2"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["n_train"] == 30 and summary["n_test"] == 6 and summary["pairs_per_s"] > 0
    assert len(read_rows(out / "train.csv")) == 30 and (out / "findings.json").exists()
    bad = CliRunner().invoke(cli_app, ["synth", str(out), "--noise-rate", "0.8", "--corrupt-rate", "0.5"])
    assert bad.exit_code == 2 and "noise_rate + corrupt_rate" in bad.output

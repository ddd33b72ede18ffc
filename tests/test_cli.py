"""The ``chexcurate`` command line: each command does its job, bad input exits 2 naming the problem."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from service.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def embeddings(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("emb") / "emb.npz"
    result = runner.invoke(app, ["synth-embeddings", str(path), "--rows", "3000", "--dim", "64", "--seed", "1"])
    assert result.exit_code == 0, result.output
    return path


def test_synth_embeddings_writes_the_bulk_format(embeddings: Path) -> None:
    with np.load(embeddings) as data:
        assert data["sample_id"].dtype == np.int64 and len(data["sample_id"]) == 3000
        assert data["embedding"].dtype == np.float16 and data["embedding"].shape == (3000, 64)
        assert {"finding", "finding_names", "duplicate_of", "noisy"} <= set(data.files)


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_curate_exports_subset_with_provenance(embeddings: Path, tmp_path: Path, suffix: str) -> None:
    out = tmp_path / f"subset{suffix}"
    result = runner.invoke(app, ["curate", str(embeddings), "--out", str(out), "--k", "4", "--warmup-samples", "500"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    # the service's export convention: the provenance first (a JSONL record, a CSV comment), steps from 1
    if suffix == ".jsonl":
        first, *lines = out.read_text().splitlines()
        inline = json.loads(first)["provenance"]
        rows = [json.loads(line) for line in lines]
    else:
        first, *lines = out.read_text().splitlines()
        inline = json.loads(first.removeprefix("# "))["provenance"]
        rows = list(csv.DictReader(lines))
    assert len(rows) == summary["subset_size"] > 0
    assert min(int(r["step"]) for r in rows) >= 1 and {int(r["epoch"]) for r in rows} == {1}
    assert {r["band"] for r in rows} <= {"support", "central_kept"}
    assert len({int(r["sample_id"]) for r in rows}) == len(rows)
    provenance = json.loads(Path(str(out) + ".provenance.json").read_text())
    assert provenance["config"]["k"] == 4 and provenance["subset_size"] == len(rows)
    assert len(provenance["source_sha256"]) == 64 and len(provenance["prototypes"]) == 4
    assert inline == provenance


def write_npz(path: Path, **arrays) -> Path:
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"sample_id": np.arange(3)}, "missing array"),
        (
            {"sample_id": np.array([1, 1, 2]), "embedding": np.ones((3, 4), np.float32)},
            "duplicate sample ids",
        ),
        ({"sample_id": np.arange(3), "embedding": np.ones((2, 4), np.float32)}, "3 sample ids but 2"),
        ({"sample_id": np.arange(2), "embedding": np.ones((2, 4), np.int32)}, "float16/float32"),
        ({"sample_id": np.arange(8), "embedding": np.full((8, 4), np.nan, np.float32)}, "contain NaN"),
        ({"sample_id": np.arange(3), "embedding": np.ones((3, 4), np.float32)}, "cannot make k=6"),
    ],
)
def test_curate_rejects_bad_files_and_writes_nothing(tmp_path: Path, arrays, message) -> None:
    source = write_npz(tmp_path / "bad.npz", **arrays)
    out = tmp_path / "subset.jsonl"
    result = runner.invoke(app, ["curate", str(source), "--out", str(out), "--warmup-samples", "6"])
    assert result.exit_code == 2
    assert message in result.output
    assert not out.exists()


def test_curate_rejects_unreadable_file_bad_export_and_bad_config(embeddings: Path, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a zip")
    cases = [
        (["curate", str(garbage), "--out", str(tmp_path / "a.jsonl")], "not a readable .npz"),
        (["curate", str(embeddings), "--out", str(tmp_path / "a.parquet")], "must end in .jsonl or .csv"),
        (["curate", str(embeddings), "--out", str(tmp_path / "missing" / "a.csv")], "does not exist"),
        (["curate", str(embeddings), "--k", "0"], "invalid curation config"),
    ]
    for args, message in cases:
        result = runner.invoke(app, args)
        assert result.exit_code == 2, args
        assert message in result.output, result.output
    assert list(tmp_path.glob("a.*")) == []


def test_demo_runs_service_trainer_and_eval_end_to_end(tmp_path: Path) -> None:
    """The whole embedded path, small: synth set, ``chexcurate serve`` on SQLite, trainer, stats, plot, eval."""
    args = ["demo", "--out-dir", str(tmp_path), "--train", "160", "--test", "60", "--size", "32", "--epochs", "3"]
    result = runner.invoke(app, [*args, "--batch-size", "40", "--max-central", "1", "--no-progress"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert {
        "subset_ratio",
        "compute_fraction",
        "band_counts",
        "label_enrichment",
        "near_duplicates",
        "noisy_pairs",
        "zero_shot_macro_auc",
    } <= set(summary)
    assert 0 < summary["subset_size"] < summary["pairs"] and 0 < summary["subset_ratio"] < 1
    assert summary["compute_fraction"] < 1
    assert sum(summary["band_counts"].values()) == summary["pairs"]  # one curation epoch: a decision per pair
    assert summary["trainer"]["finished"] and summary["trainer"]["rows"]["subset"] > 0
    assert summary["zero_shot_macro_auc"] is None or 0 <= summary["zero_shot_macro_auc"] <= 1
    for share in (summary["near_duplicates"], summary["noisy_pairs"]):
        assert 0 <= share["subset_share"] <= 1 and 0 <= share["dataset_share"] < 1
    assert "what the subset keeps" in result.stdout
    assert "chexcurate demo --serve" in result.output  # the explorer's hint
    assert summary["files"]["database"].startswith("sqlite:///")
    assert (tmp_path / "stats.png").read_bytes()[:4] == b"\x89PNG"
    lines = (tmp_path / "subset.jsonl").read_text().splitlines()
    assert "provenance" in json.loads(lines[0]) and len(lines) == summary["subset_size"] + 1
    assert (tmp_path / "trainer" / "latest.pt").exists()


def test_demo_serve_opens_the_explorer_on_the_demos_database(tmp_path: Path, monkeypatch, capsys) -> None:
    """``--serve``: the demo's SQLite database behind the explorer, with a printed admin token that signs in (the
    server itself is captured instead of run, so the test does not block)."""
    import re

    import uvicorn
    from fastapi.testclient import TestClient

    from service.cli.demo import _serve_explorer
    from service.migrate import upgrade

    url = f"sqlite:///{tmp_path / 'demo.db'}"
    upgrade(url)
    served: dict = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: served.update(app=app, **options))
    _serve_explorer(url, 18765)
    printed = capsys.readouterr().err
    assert "http://127.0.0.1:18765/ui" in printed and served["port"] == 18765
    token = re.search(r"chx_[\w-]+", printed).group(0)
    with TestClient(served["app"]) as browser:
        form = browser.get("/ui/login")
        csrf = re.search(r'name="csrf" value="([^"]+)"', form.text).group(1)
        assert browser.post("/ui/login", data={"token": token, "csrf": csrf}).status_code == 200  # to /ui/runs
        assert "No runs yet" in browser.get("/ui/runs").text


def test_curate_with_modes_names_them_in_summary_and_provenance(embeddings: Path, tmp_path: Path) -> None:
    out = tmp_path / "modes.jsonl"
    args = ["curate", str(embeddings), "--out", str(out), "--warmup-samples", "500", "--target-ratio", "0.25"]
    args += ["--dedup-epsilon", "0.01", "--prototype-mode", "hierarchical", "--hierarchy", "50,6"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["subset_size"] == 750 and set(summary["modes"]) == {"target_ratio", "dedup", "hierarchical"}
    assert summary["modes"]["dedup"]["removed"] > 0 and summary["modes"]["hierarchical"]["levels"] == [50, 6]
    provenance = json.loads(Path(str(out) + ".provenance.json").read_text())
    assert provenance["modes"] == summary["modes"] and provenance["config"]["target_ratio"] == 0.25


def test_curate_refuses_bad_modes(embeddings: Path, tmp_path: Path) -> None:
    out = str(tmp_path / "a.jsonl")
    cases = [
        (["--target-ratio", "1.5"], "target_ratio"),
        (["--dedup-same-patient"], "dedup_same_patient needs dedup_epsilon"),
        (["--dedup-epsilon", "0.01", "--dedup-same-patient"], "needs a patient_id array"),
        (["--prototype-mode", "hierarchical", "--hierarchy", "6,x"], "comma-separated integers"),
    ]
    for extra, message in cases:
        result = runner.invoke(app, ["curate", str(embeddings), "--out", out, *extra])
        assert result.exit_code == 2, extra
        assert message in result.output, result.output
    assert not Path(out).exists()


def test_dedup_sweep_reports_pairs_and_examples_per_eps(embeddings: Path) -> None:
    result = runner.invoke(app, ["dedup-sweep", str(embeddings), "--eps", "0.0001", "--eps", "0.01", "--examples", "2"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout.strip().splitlines()[-1])
    small, large = report["sweep"]
    assert small["epsilon"] == 0.0001 and large["epsilon"] == 0.01
    assert 0 <= small["pairs"] <= large["pairs"] and large["removed"] > 0 and len(large["examples"]) == 2
    assert all(e["cosine"] >= 0.99 for e in large["examples"])
    bad = runner.invoke(app, ["dedup-sweep", str(embeddings), "--eps", "0.9"])
    assert bad.exit_code == 2 and "--eps values" in bad.output

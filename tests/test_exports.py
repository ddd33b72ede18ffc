"""Exports of a run's subset, each read back by its consumer's own reader (csv, open_clip's tab-separated CSV,
webdataset, pyarrow, numpy), with the same provenance whether streamed by the API or written by the CLI."""

from __future__ import annotations

import csv
import io
import json
import uuid
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import webdataset as wds
from PIL import Image
from typer.testing import CliRunner

from service.exports import uid_of

N, D = 2500, 32
#: every central row kept, so most of the set is in the subset and the webdataset export spans several shards
CONFIG = {"k": 3, "batch_size": 256, "warmup_samples": 256, "max_central": 100_000, "seed": 1}
OCTET = {"Content-Type": "application/octet-stream"}


@pytest.fixture(scope="module")
def curated(client, admin, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("export-set")
    lines = ["external_id,image,report,labels,patient_id,study_id,split"]
    for i in range(N):
        (root / "img").mkdir(exist_ok=True)
        Image.new("L", (8, 8), i % 251).save(root / "img" / f"{i}.png")
        label = "Effusion|Edema" if i % 7 == 0 else "No Finding"
        lines.append(
            f"x{i},img/{i}.png,report of image {i},{label},p{i % 300},s{i},{'test' if i % 10 == 0 else 'train'}"
        )
    name = f"exp-{uuid.uuid4().hex[:8]}"
    dataset = client.post("/v1/datasets", json={"name": name, "root": str(root)}, headers=admin).json()["id"]
    up = client.post(
        f"/v1/datasets/{dataset}/samples",
        content="\n".join(lines).encode(),
        headers={**admin, "Content-Type": "text/csv"},
    )
    assert up.json()["accepted"] == N, up.text
    set_id = client.post(
        f"/v1/datasets/{dataset}/embedding-sets", json={"name": "e", "model_id": "enc-1"}, headers=admin
    ).json()["id"]
    emb = np.random.default_rng(2).normal(size=(N, D)).astype(np.float32)
    buffer = io.BytesIO()
    np.savez(buffer, external_id=np.array([f"x{i}" for i in range(N)]), embedding=emb)
    client.post(f"/v1/embedding-sets/{set_id}/embeddings", content=buffer.getvalue(), headers={**admin, **OCTET})
    run = client.post(
        "/v1/runs", json={"dataset_id": dataset, "config": CONFIG, "embedding_set_id": set_id}, headers=admin
    ).json()["id"]
    summary = client.post(f"/v1/runs/{run}/offline", headers=admin).json()
    assert 1000 < summary["subset_size"] < N
    lines = client.get(f"/v1/runs/{run}/subset?format=jsonl", headers=admin).text.splitlines()
    rows = [json.loads(line) for line in lines[1:]]
    return {"root": root, "run": run, "name": name, "rows": rows, "size": summary["subset_size"], "dataset": dataset}


def get(client, admin, curated, fmt: str, **params):
    answer = client.get(f"/v1/runs/{curated['run']}/subset", params={"format": fmt, **params}, headers=admin)
    assert answer.status_code == 200, answer.text
    return answer


def check_provenance(provenance: dict, curated: dict, fmt: str) -> None:
    assert provenance["run_id"] == curated["run"] and provenance["format"] == fmt
    assert provenance["config"]["k"] == 3 and provenance["seed"] == 1 and provenance["model_id"] == "enc-1"
    assert provenance["prototype_version"] == 1 and provenance["subset_size"] == curated["size"]
    assert provenance["steps_from"] == 1 and provenance["dataset"] == curated["name"]


def test_jsonl_and_csv_agree(client, admin, curated) -> None:
    rows = curated["rows"]
    assert len(rows) == curated["size"] and min(r["step"] for r in rows) == 1
    assert [r["sample_id"] for r in rows] == sorted(r["sample_id"] for r in rows)
    first, *lines = get(client, admin, curated, "csv").text.splitlines()
    check_provenance(json.loads(first.removeprefix("# "))["provenance"], curated, "csv")
    table = list(csv.DictReader(lines))
    assert [(int(r["sample_id"]), r["external_id"], int(r["step"])) for r in table] == [
        (r["sample_id"], r["external_id"], r["step"]) for r in rows
    ]
    jsonl = get(client, admin, curated, "jsonl")
    check_provenance(json.loads(jsonl.text.splitlines()[0])["provenance"], curated, "jsonl")
    described = client.get(f"/v1/runs/{curated['run']}/subset/provenance?format=jsonl", headers=admin).json()
    assert jsonl.headers["link"].startswith(f"</v1/runs/{curated['run']}/subset/provenance")
    check_provenance(described, curated, "jsonl")


def test_openclip_csv_reads_with_a_tab_separator(client, admin, curated) -> None:
    text = get(client, admin, curated, "openclip-csv").text
    table = list(csv.DictReader(io.StringIO(text), delimiter="\t"))
    assert len(table) == curated["size"] and set(table[0]) == {"filepath", "title"}
    by_path = {str(curated["root"] / r["image_uri"]): r for r in curated["rows"]}
    for line in table[:50]:
        assert Path(line["filepath"]).is_file() and line["title"].startswith("report of image ")
        assert line["title"] == f"report of image {by_path[line['filepath']]['external_id'][1:]}"


def test_webdataset_reads_back_with_the_webdataset_package(client, admin, curated, tmp_path: Path) -> None:
    whole = get(client, admin, curated, "webdataset")
    assert whole.headers["x-shards"] == str(-(-curated["size"] // 1000))
    path = tmp_path / "all.tar"
    path.write_bytes(whole.content)
    samples = list(wds.WebDataset(str(path), shardshuffle=False))
    assert len(samples) == curated["size"]
    sample = samples[0]
    meta = json.loads(sample["json"])
    assert {"png", "txt", "json"} <= set(sample) and meta["uid"] == uid_of(curated["name"], meta["external_id"])
    assert (
        Image.open(io.BytesIO(sample["png"])).size == (8, 8)
        and sample["txt"].decode() == f"report of image {meta['external_id'][1:]}"
    )
    assert meta["labels"] and meta["patient_id"] and meta["split"] in ("train", "test")
    shard = tmp_path / "shard1.tar"
    shard.write_bytes(get(client, admin, curated, "webdataset", shard=1).content)
    assert [s["__key__"] for s in wds.WebDataset(str(shard), shardshuffle=False)] == [
        s["__key__"] for s in samples[1000:2000]
    ]


def test_parquet_ids_and_chexficient_read_back(client, admin, curated) -> None:
    table = pq.read_table(io.BytesIO(get(client, admin, curated, "parquet").content))
    assert table.num_rows == curated["size"]
    check_provenance(json.loads(table.schema.metadata[b"chexcurate.provenance"]), curated, "parquet")
    assert table.column("external_id").to_pylist() == [r["external_id"] for r in curated["rows"]]
    assert table.column("labels").to_pylist()[0] in (["No Finding"], ["Effusion", "Edema"])

    uids = np.load(io.BytesIO(get(client, admin, curated, "ids").content), allow_pickle=False)
    assert uids.dtype == np.dtype("u8,u8") and len(uids) == curated["size"]
    assert (np.sort(uids) == uids).all()
    expected = sorted(
        (int(u[:16], 16), int(u[16:], 16)) for u in (uid_of(curated["name"], r["external_id"]) for r in curated["rows"])
    )
    assert [tuple(int(x) for x in pair) for pair in uids.tolist()] == expected

    indices = [json.loads(line) for line in get(client, admin, curated, "chexficient").text.splitlines()]
    pool = sorted(s["id"] for page in range(0, N, 1000) for s in client.get(
        f"/v1/datasets/{curated['dataset']}/samples", params={"limit": 1000, "offset": page}, headers=admin
    ).json()["items"])  # fmt: skip
    assert [pool[i] for i in indices] == [r["sample_id"] for r in curated["rows"]]


def test_the_cli_writes_the_same_exports_with_a_provenance_beside_each(
    client, admin, curated, pg_url, tmp_path, monkeypatch
) -> None:
    from service.cli import app
    from service.config import get_settings

    monkeypatch.setenv("CHEX_DATABASE_URL", pg_url)
    get_settings.cache_clear()
    runner = CliRunner()
    try:
        for fmt in ("jsonl", "csv", "openclip-csv", "parquet", "ids", "chexficient", "webdataset"):
            out = tmp_path / f"out-{fmt}"
            result = runner.invoke(app, ["export", str(curated["run"]), "--format", fmt, "--out", str(out)])
            assert result.exit_code == 0, result.output
            check_provenance(json.loads((tmp_path / f"out-{fmt}.provenance.json").read_text()), curated, fmt)
            if fmt in ("openclip-csv", "ids", "chexficient"):
                assert out.read_bytes() == get(client, admin, curated, fmt).content
        shards = sorted((tmp_path / "out-webdataset").glob("shard-*.tar"))
        assert len(shards) == -(-curated["size"] // 1000)
        counts = [sum(1 for _ in wds.WebDataset(str(s), shardshuffle=False)) for s in shards]
        assert counts[:-1] == [1000] * (len(shards) - 1) and sum(counts) == curated["size"]
        lines = (tmp_path / "out-jsonl").read_text().splitlines()
        assert [json.loads(line) for line in lines[1:]] == curated["rows"]
        bad = runner.invoke(app, ["export", "999999", "--format", "jsonl", "--out", str(tmp_path / "x")])
        assert bad.exit_code == 2 and "unknown_run" in bad.output and not (tmp_path / "x").exists()
        bad = runner.invoke(app, ["export", str(curated["run"]), "--format", "xml"])
        assert bad.exit_code == 2 and "unknown format" in bad.output
    finally:
        get_settings.cache_clear()


def test_a_shard_of_a_format_without_shards_is_a_json_422(client, admin, curated) -> None:
    answer = client.get(f"/v1/runs/{curated['run']}/subset", params={"format": "csv", "shard": 0}, headers=admin)
    assert (answer.status_code, answer.json()["error"]) == (422, "invalid_request")
    assert client.get(f"/v1/runs/{curated['run']}/subset?format=parquet&shard=-1", headers=admin).status_code == 422

"""GET /v1/runs/{id}/subset: the kept samples with their provenance, as JSONL or CSV."""

from __future__ import annotations

import csv
import io
import json

import pytest

from service.curation import Band
from service.models import Decision

from .test_admin_stats import SeededRun, seed_curated_run

COLUMNS = ["sample_id", "external_id", "image_uri", "band", "prototype", "distance", "epoch", "step"]


@pytest.fixture(scope="module")
def seeded(app) -> SeededRun:
    with app.state.sessions() as session:
        return seed_curated_run(session)


def expected_rows(seeded: SeededRun) -> list[dict]:
    ids = seeded.sample_ids
    rows = [
        ("s1", "central_kept", 0, 0.1, 1, 1),
        ("s5", "support", 1, 0.5, 1, 2),
        ("s6", "support", 1, 0.6, 1, 2),
    ]
    return sorted(
        (
            dict(zip(COLUMNS, (ids[ext], ext, f"images/{ext}.png", band, proto, dist, epoch, step), strict=True))
            for ext, band, proto, dist, epoch, step in rows
        ),
        key=lambda r: r["sample_id"],
    )


def check_provenance(provenance: dict, seeded: SeededRun, fmt: str) -> None:
    assert provenance["run_id"] == seeded.run_id and provenance["dataset_id"] == seeded.dataset_id
    assert provenance["config"]["k"] == 2 and provenance["config"]["curation_epochs"] == 1
    assert provenance["seed"] == 7
    assert (provenance["model_id"], provenance["checkpoint_step"], provenance["prototype_version"]) == (
        "clip-test",
        1200,
        3,
    )
    assert provenance["phase"] == "subset" and provenance["subset_complete"] is True
    assert provenance["curation_epochs"] == [1]
    assert provenance["subset_size"] == 3
    assert provenance["columns"] == COLUMNS
    assert provenance["format"] == fmt
    assert provenance["exported_at"]


def test_jsonl_export(client, admin, seeded) -> None:
    response = client.get(f"/v1/runs/{seeded.run_id}/subset", headers=admin)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/x-ndjson")
    assert f"run-{seeded.run_id}-subset.jsonl" in response.headers["content-disposition"]
    first, *rows = [json.loads(line) for line in response.text.splitlines()]
    check_provenance(first["provenance"], seeded, "jsonl")
    assert list(first) == ["provenance"]
    assert rows == expected_rows(seeded)


def test_csv_export(client, admin, seeded) -> None:
    response = client.get(f"/v1/runs/{seeded.run_id}/subset", params={"format": "csv"}, headers=admin)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/csv")
    comment, body = response.text.split("\n", 1)
    assert comment.startswith("# ")
    check_provenance(json.loads(comment[2:])["provenance"], seeded, "csv")
    rows = list(csv.DictReader(io.StringIO(body)))
    typed = [
        {**r, **{k: int(r[k]) for k in ("sample_id", "prototype", "epoch", "step")}, "distance": float(r["distance"])}
        for r in rows
    ]
    assert typed == expected_rows(seeded)


def test_a_sample_kept_in_two_curation_epochs_is_exported_once(client, admin, app) -> None:
    from service.models import Run

    with app.state.sessions() as session:
        fresh = seed_curated_run(session)
        run = session.get(Run, fresh.run_id)
        run.config = {**run.config, "curation_epochs": 2}
        # epoch 2 is a curation epoch now: s4 joins the subset, s1 is kept again (first decision wins)
        session.add(
            Decision(
                run_id=fresh.run_id,
                sample_id=fresh.sample_ids["s1"],
                epoch=2,
                step=4,
                manifest_id="m-again",
                prototype=1,
                distance=0.01,
                band=int(Band.SUPPORT),
                kept=True,
                prototype_version=4,
            )
        )
        session.commit()
    lines = client.get(f"/v1/runs/{fresh.run_id}/subset", headers=admin).text.splitlines()
    rows = {r["external_id"]: r for r in map(json.loads, lines[1:])}
    assert sorted(rows) == ["s1", "s4", "s5", "s6"]
    assert (rows["s1"]["epoch"], rows["s1"]["step"], rows["s1"]["band"]) == (1, 1, "central_kept")
    assert json.loads(lines[0])["provenance"]["subset_size"] == 4
    stats = client.get(f"/v1/runs/{fresh.run_id}/stats", headers=admin).json()
    assert stats["subset_size"] == 4 and stats["curation_epochs"] == [1, 2]
    assert stats["compute_fraction"] == pytest.approx((2 + 8 * 4 / 8) / 10)


def test_export_of_an_empty_subset_is_just_provenance(client, admin, app) -> None:
    with app.state.sessions() as session:
        fresh = seed_curated_run(session, with_decisions=False)
    jsonl = client.get(f"/v1/runs/{fresh.run_id}/subset", headers=admin).text.splitlines()
    assert len(jsonl) == 1 and json.loads(jsonl[0])["provenance"]["subset_size"] == 0
    text = client.get(f"/v1/runs/{fresh.run_id}/subset?format=csv", headers=admin).text
    assert text.splitlines()[1] == ",".join(COLUMNS) and len(text.splitlines()) == 2


@pytest.mark.parametrize("fmt", ["xml", "", "JSONL"])
def test_an_unknown_format_is_a_json_422(client, admin, seeded, fmt) -> None:
    response = client.get(f"/v1/runs/{seeded.run_id}/subset", params={"format": fmt}, headers=admin)
    assert response.status_code == 422
    body = response.json()
    assert body["error"] == "invalid_request"
    assert body["detail"][0]["loc"] == ["query", "format"]


def test_a_large_subset_streams_in_chunks_in_sample_order(client, admin, app) -> None:
    from sqlalchemy import insert

    from service.exports.source import ROWS_PER_CHUNK
    from service.models import Run, Sample

    n = 2 * ROWS_PER_CHUNK + 345
    with app.state.sessions() as session:
        fresh = seed_curated_run(session, with_decisions=False)
        dataset_id = fresh.dataset_id
        rows = [
            {
                "dataset_id": dataset_id,
                "external_id": f"bulk-{i}",
                "image_uri": f"bulk/{i}.png",
                "report": "r",
                "labels": [],
                "content_hash": f"{i:064d}",
                "status": "accepted",
            }
            for i in range(n)
        ]
        ids = list(session.scalars(insert(Sample).returning(Sample.id, sort_by_parameter_order=True), rows))
        session.execute(
            insert(Decision),
            [
                {
                    "run_id": fresh.run_id,
                    "sample_id": sample_id,
                    "epoch": 1,
                    "step": i // 640,
                    "manifest_id": f"m{i // 640}",
                    "prototype": i % 2,
                    "distance": i / n,
                    "band": int(Band.SUPPORT) if i % 3 else int(Band.CENTRAL_DROPPED),
                    "kept": bool(i % 3),
                    "prototype_version": 1,
                }
                for i, sample_id in enumerate(ids)
            ],
        )
        session.get(Run, fresh.run_id).phase = "subset"
        session.commit()
    with client.stream("GET", f"/v1/runs/{fresh.run_id}/subset?format=csv", headers=admin) as response:
        assert response.status_code == 200
        lines = [line for line in response.iter_lines() if line]
    kept = [sample_id for i, sample_id in enumerate(ids) if i % 3]
    assert json.loads(lines[0][2:])["provenance"]["subset_size"] == len(kept)
    assert [int(line.split(",", 1)[0]) for line in lines[2:]] == sorted(kept)

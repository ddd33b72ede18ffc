"""GET /v1/runs/{id}/stats and stats.png on rows inserted directly, against hand-computed numbers."""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass

import numpy as np
import pytest
from sqlalchemy.orm import Session

from service.curation import Band, CurationConfig
from service.models import Dataset, Decision, PrototypeVersion, Run, Sample

# (external id, labels, status): 8 accepted samples, one rejected one that must count nowhere
SAMPLES = [
    ("s1", ["no finding"], "accepted"),
    ("s2", ["no finding"], "accepted"),
    ("s3", ["no finding"], "accepted"),
    ("s4", ["no finding"], "accepted"),
    ("s5", ["pneumothorax"], "accepted"),
    ("s6", ["pneumothorax", "effusion", "pneumothorax"], "accepted"),  # a repeated label counts once
    ("s7", ["effusion"], "accepted"),
    ("s8", [], "accepted"),
    ("s9", ["pneumothorax"], "rejected"),
]
# (external id, epoch, step, prototype, distance, band); kept follows from the band
DECISIONS = [
    ("s1", 1, 1, 0, 0.1, Band.CENTRAL_KEPT),
    ("s2", 1, 1, 0, 0.2, Band.CENTRAL_DROPPED),
    ("s3", 1, 1, 0, 0.3, Band.CENTRAL_DROPPED),
    ("s4", 1, 2, 1, 0.4, Band.CENTRAL_DROPPED),
    ("s5", 1, 2, 1, 0.5, Band.SUPPORT),
    ("s6", 1, 2, 1, 0.6, Band.SUPPORT),
    ("s7", 1, 2, 0, 0.9, Band.OUTLIER),
    ("s4", 2, 3, 1, 0.05, Band.SUPPORT),  # epoch 2 is not a curation epoch (curation_epochs=1): ignored
]
FIRST = np.array([[1, 0, 0], [0, 1, 0]], dtype=np.float32)
MIDDLE = np.array([[0.8, 0.6, 0], [0, 0.8, 0.6]], dtype=np.float32)
LATEST = np.array([[0.6, 0.8, 0], [0, 0, 1]], dtype=np.float32)


@dataclass(frozen=True)
class SeededRun:
    run_id: int
    dataset_id: int
    sample_ids: dict[str, int]


def seed_curated_run(session: Session, with_decisions: bool = True) -> SeededRun:
    """A dataset and a run after its curation epoch, written directly (no manifests)."""
    dataset = Dataset(name=f"admin-{uuid.uuid4().hex[:10]}", root="/data/cxr")
    session.add(dataset)
    session.flush()
    samples = {
        ext: Sample(
            dataset_id=dataset.id,
            external_id=ext,
            image_uri=f"images/{ext}.png",
            report=f"report {ext}",
            labels=labels,
            content_hash=ext.ljust(64, "0"),
            status=status,
        )
        for ext, labels, status in SAMPLES
    }
    session.add_all(samples.values())
    config = CurationConfig(k=2, warmup_samples=4, epochs=10, curation_epochs=1, seed=7)
    run = Run(
        dataset_id=dataset.id,
        config=config.model_dump(),
        seed=config.seed,
        phase="subset" if with_decisions else "warmup",
        epoch=2 if with_decisions else 0,
        step=3 if with_decisions else 0,
        prototype_version=3 if with_decisions else 0,
        model_id="clip-test" if with_decisions else None,
        checkpoint_step=1200 if with_decisions else None,
        progress={"done": 5, "total": 8} if with_decisions else {},
    )
    session.add(run)
    session.flush()
    if with_decisions:
        for version, (vectors, usage) in enumerate([(FIRST, [0, 0]), (MIDDLE, [2, 1]), (LATEST, [1, 2])], start=1):
            session.add(
                PrototypeVersion(
                    run_id=run.id, version=version, k=2, dim=3, vectors=vectors.tobytes(), usage=usage, step=version - 1
                )
            )
        for ext, epoch, step, prototype, distance, band in DECISIONS:
            session.add(
                Decision(
                    run_id=run.id,
                    sample_id=samples[ext].id,
                    epoch=epoch,
                    step=step,
                    manifest_id=f"m-{run.id}-{step}",
                    prototype=prototype,
                    distance=distance,
                    band=int(band),
                    kept=band in (Band.SUPPORT, Band.CENTRAL_KEPT),
                    prototype_version=step,
                )
            )
    session.commit()
    return SeededRun(run.id, dataset.id, {ext: s.id for ext, s in samples.items()})


@pytest.fixture(scope="module")
def seeded(app) -> SeededRun:
    with app.state.sessions() as session:
        return seed_curated_run(session)


def test_stats_match_hand_computed_numbers(client, admin, seeded) -> None:
    response = client.get(f"/v1/runs/{seeded.run_id}/stats", headers=admin)
    assert response.status_code == 200, response.text
    s = response.json()
    assert (s["phase"], s["epoch"], s["step"]) == ("subset", 2, 3)
    assert s["curation_epochs"] == [1]
    assert s["samples_total"] == 8  # the rejected sample is not part of the dataset's pool
    assert s["samples_seen"] == 7  # s8 never got a decision
    assert s["subset_size"] == 3  # s1, s5, s6; s4's kept decision is in epoch 2
    assert s["subset_ratio"] == pytest.approx(3 / 8)
    assert s["subset_complete"] is True
    assert s["compute_fraction"] == pytest.approx((1 + 9 * 3 / 8) / 10)
    assert s["band_counts"] == {"outlier": 1, "support": 2, "central_kept": 1, "central_dropped": 3}
    assert s["prototype_version"] == 3
    assert (s["model_id"], s["checkpoint_step"]) == ("clip-test", 1200)
    assert s["progress"] == {"done": 5, "total": 8}


def test_prototype_usage_distance_and_drift(client, admin, seeded) -> None:
    s = client.get(f"/v1/runs/{seeded.run_id}/stats", headers=admin).json()
    p0, p1 = s["prototypes"]
    assert (p0["id"], p0["usage"], p0["decisions"]) == (0, 1, 4)  # usage of the latest version
    assert p0["mean_distance"] == pytest.approx((0.1 + 0.2 + 0.3 + 0.9) / 4)
    assert (p1["id"], p1["usage"], p1["decisions"]) == (1, 2, 3)
    assert p1["mean_distance"] == pytest.approx((0.4 + 0.5 + 0.6) / 3)
    drift = s["prototype_drift"]
    assert (drift["from_version"], drift["to_version"]) == (1, 3)
    # |(0.6, 0.8, 0) - (1, 0, 0)| = sqrt(0.8); |(0, 0, 1) - (0, 1, 0)| = sqrt(2)
    assert drift["per_prototype"] == pytest.approx([math.sqrt(0.8), math.sqrt(2)], rel=1e-6)
    assert drift["mean"] == pytest.approx((math.sqrt(0.8) + math.sqrt(2)) / 2, rel=1e-6)


def test_label_enrichment_counts_samples_not_labels(client, admin, seeded) -> None:
    e = client.get(f"/v1/runs/{seeded.run_id}/stats", headers=admin).json()["label_enrichment"]
    assert set(e) == {"no finding", "pneumothorax", "effusion"}
    # dataset (8 accepted): no finding 4, pneumothorax 2 (s5, s6), effusion 2 (s6, s7); subset s1, s5, s6
    expected = {"no finding": (4 / 8, 1 / 3), "pneumothorax": (2 / 8, 2 / 3), "effusion": (2 / 8, 1 / 3)}
    for label, (dataset_share, subset_share) in expected.items():
        assert e[label]["dataset_share"] == pytest.approx(dataset_share)
        assert e[label]["subset_share"] == pytest.approx(subset_share)
        assert e[label]["ratio"] == pytest.approx(subset_share / dataset_share)


def test_stats_of_a_run_without_decisions(client, admin, app) -> None:
    with app.state.sessions() as session:
        fresh = seed_curated_run(session, with_decisions=False)
    s = client.get(f"/v1/runs/{fresh.run_id}/stats", headers=admin).json()
    assert (s["samples_total"], s["samples_seen"], s["subset_size"], s["subset_ratio"]) == (8, 0, 0, 0.0)
    assert s["band_counts"] == {"outlier": 0, "support": 0, "central_kept": 0, "central_dropped": 0}
    assert s["prototypes"] == [] and s["prototype_drift"] is None
    assert s["compute_fraction"] == pytest.approx(1 / 10)
    assert s["subset_complete"] is False
    assert {v["subset_share"] for v in s["label_enrichment"].values()} == {0.0}
    png = client.get(f"/v1/runs/{fresh.run_id}/stats.png", headers=admin)
    assert png.status_code == 200 and png.content.startswith(b"\x89PNG")


def test_labels_that_are_not_a_list_count_as_no_label(client, admin, app) -> None:
    from sqlalchemy import update

    with app.state.sessions() as session:
        fresh = seed_curated_run(session)
        session.execute(update(Sample).where(Sample.id == fresh.sample_ids["s8"]).values(labels={"not": "a list"}))
        session.execute(update(Sample).where(Sample.id == fresh.sample_ids["s7"]).values(labels="effusion"))
        session.commit()
    s = client.get(f"/v1/runs/{fresh.run_id}/stats", headers=admin).json()
    assert s["samples_total"] == 8
    assert set(s["label_enrichment"]) == {"no finding", "pneumothorax", "effusion"}
    assert s["label_enrichment"]["effusion"]["dataset_share"] == pytest.approx(1 / 8)  # only s6 now


def test_stats_png(client, admin, seeded) -> None:
    response = client.get(f"/v1/runs/{seeded.run_id}/stats.png", headers=admin)
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/png"
    assert response.content.startswith(b"\x89PNG\r\n\x1a\n") and len(response.content) > 10_000


def test_distance_histograms_match_numpy(app, seeded) -> None:
    from service import stats
    from service.runs.access import load_run

    with app.state.sessions() as session:
        run = load_run(session, seeded.run_id)
        edges, hists = stats.distance_histograms(session, run, bins=4)
    curated = [d for d in DECISIONS if d[1] == 1]
    distance = np.array([d[4] for d in curated])
    assert edges == pytest.approx(np.linspace(0.1, 0.9 + 1e-9, 5))
    for band in Band:
        expected = np.histogram(distance[[d[5] == band for d in curated]], bins=edges)[0]
        np.testing.assert_array_equal(hists.get(int(band), np.zeros(4, dtype=np.int64)), expected)


@pytest.mark.parametrize("suffix", ["stats", "stats.png", "subset"])
def test_admin_routes_need_an_admin_token(client, make_token, seeded, suffix) -> None:
    url = f"/v1/runs/{seeded.run_id}/{suffix}"
    missing = client.get(url)
    assert missing.status_code == 401 and missing.json()["error"] == "unauthenticated"
    trainer = client.get(url, headers=make_token("trainer", [seeded.run_id]))
    assert trainer.status_code == 403 and trainer.json()["error"] == "forbidden"
    wrong = client.get(url, headers={"Authorization": "Bearer chx_not-a-token"})
    assert wrong.status_code == 401


@pytest.mark.parametrize("suffix", ["stats", "stats.png", "subset", "subset?format=csv"])
def test_unknown_run_is_a_json_404(client, admin, suffix) -> None:
    response = client.get(f"/v1/runs/987654321/{suffix}", headers=admin)
    assert response.status_code == 404
    assert response.json() == {"error": "unknown_run", "detail": "run 987654321 does not exist"}


@pytest.mark.parametrize("run_id", ["0", "-1", "abc", str(2**63)])
def test_bad_run_ids_are_422(client, admin, run_id) -> None:
    response = client.get(f"/v1/runs/{run_id}/stats", headers=admin)
    assert response.status_code == 422 and response.json()["error"] == "invalid_request"

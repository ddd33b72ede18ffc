"""The offline curation job over stored embeddings (SPEC §2.5) on the real Postgres, and on SQLite."""

from __future__ import annotations

import numpy as np
import pytest
from sqlalchemy import func, select

from service.arrays import unit_rows
from service.bulk import upsert_embeddings
from service.db import make_engine, session_factory
from service.errors import ApiError
from service.migrate import upgrade
from service.models import Decision, Manifest, PrototypeVersion, Run
from tests.runs_helpers import make_dataset, npz
from workers.curation import Band, CurationConfig, curate_offline
from workers.jobs import OFFLINE_MANIFEST, run_offline_curation
from workers.jobs.stored_embeddings import read_unit_features
from workers.synthetic import long_tailed_embeddings

ROWS, DIM = 3000, 64
CONFIG = {"warmup_samples": 500, "batch_size": 200, "seed": 7}
OCTET = {"Content-Type": "application/octet-stream"}


def stored_embeddings(n: int, seed: int = 5) -> np.ndarray:
    """Clustered long-tailed rows at random norms (an encoder's raw output), as float16."""
    features = long_tailed_embeddings(n, DIM, seed=seed).features
    norms = np.random.default_rng(seed).uniform(0.5, 3.0, size=(n, 1))
    return (features * norms).astype(np.float16)


@pytest.fixture(scope="module")
def dataset(app):
    with app.state.sessions() as session:
        dataset_id, ids = make_dataset(session, ROWS)
    return dataset_id, np.asarray(ids, dtype=np.int64), stored_embeddings(ROWS)


def new_run(client, admin, dataset, config=CONFIG) -> int:
    dataset_id, ids, emb = dataset
    run_id = client.post("/v1/runs", json={"dataset_id": dataset_id, "config": config}, headers=admin).json()["id"]
    # uploaded out of order and in two parts: the job must not depend on how rows arrived
    order = np.random.default_rng(1).permutation(len(ids))
    for part in np.array_split(order, 2):
        r = client.post(
            f"/v1/runs/{run_id}/embeddings",
            content=npz(sample_id=ids[part], embedding=emb[part]),
            headers={**admin, **OCTET},
        )
        assert r.status_code == 200, r.text
    return run_id


def decisions(db, run_id: int) -> dict[int, tuple[int, int, bool, int]]:
    db.expire_all()
    rows = db.execute(
        select(Decision.sample_id, Decision.band, Decision.kept, Decision.step, Decision.prototype).where(
            Decision.run_id == run_id
        )
    ).all()
    out = {sid: (band, kept, step, proto) for sid, band, kept, step, proto in rows}
    assert len(out) == len(rows), "a sample has more than one decision"
    return out


@pytest.fixture(scope="module")
def curated(app, client, admin, dataset):
    """One curated run, the job's summary and the progress reports it made."""
    run_id = new_run(client, admin, dataset)
    reports: list[tuple[str, int, int]] = []
    seen_in_db: list[dict] = []

    def progress(stage: str, done: int, total: int) -> None:
        reports.append((stage, done, total))
        if stage == "select" and done == 1:  # what an admin would see now, from another session
            with app.state.sessions() as other:
                seen_in_db.append(dict(other.get(Run, run_id).progress))

    summary = run_offline_curation(app.state.sessions, run_id, progress)
    return run_id, summary, reports, seen_in_db


def test_every_stored_embedding_gets_exactly_one_decision(db, dataset, curated) -> None:
    run_id, summary, _, _ = curated
    _, ids, _ = dataset
    got = decisions(db, run_id)
    assert sorted(got) == ids.tolist()
    n_batches = -(-ROWS // CONFIG["batch_size"])
    assert {step for _, _, step, _ in got.values()} == set(range(1, n_batches + 1))
    meta = db.execute(
        select(Decision.epoch, Decision.manifest_id, Decision.prototype_version)
        .where(Decision.run_id == run_id)
        .distinct()
    ).all()
    assert meta == [(1, OFFLINE_MANIFEST, 1)]
    kept = sum(k for _, k, _, _ in got.values())
    assert summary["rows"] == ROWS and summary["subset_size"] == kept and summary["batches"] == n_batches
    assert 0.1 < summary["subset_ratio"] < 0.5
    assert sum(summary["band_counts"].values()) == ROWS
    assert summary["band_counts"]["outlier"] > 0 and summary["band_counts"]["central_dropped"] > 0


def test_run_is_done_with_prototypes_version_one(db, curated) -> None:
    run_id, summary, _, _ = curated
    db.expire_all()
    run = db.get(Run, run_id)
    assert (run.phase, run.epoch, run.prototype_version, run.step) == ("done", 1, 1, summary["batches"])
    versions = db.scalars(select(PrototypeVersion).where(PrototypeVersion.run_id == run_id)).all()
    assert [v.version for v in versions] == [1]
    protos = np.frombuffer(versions[0].vectors, np.float32).reshape(versions[0].k, versions[0].dim)
    np.testing.assert_allclose(np.linalg.norm(protos, axis=1), 1.0, atol=1e-5)
    assert sum(versions[0].usage) == summary["subset_size"]


def test_matches_the_in_memory_engine(db, dataset, curated) -> None:
    """Same config and seed, the same features (unit rows of the stored float16, in sample-id order)."""
    run_id, _, _, _ = curated
    _, ids, emb = dataset
    expected = curate_offline(unit_rows(emb).astype(np.float16), CurationConfig(**CONFIG))
    got = decisions(db, run_id)
    assert {int(s) for s in ids[expected.keep]} == {s for s, (_, kept, _, _) in got.items() if kept}
    for i, sid in enumerate(ids.tolist()):
        assert got[sid] == (expected.band[i], expected.keep[i], expected.batch[i] + 1, expected.prototype[i])


def test_progress_is_reported_and_persisted(db, curated) -> None:
    run_id, summary, reports, seen_in_db = curated
    stages = list(dict.fromkeys(stage for stage, _, _ in reports))
    assert stages == ["load", "kmeans", "select", "write"]
    assert ("load", ROWS, ROWS) in reports and ("write", ROWS, ROWS) in reports
    assert reports[-1] == ("write", ROWS, ROWS)
    # committed while the job ran: visible to another session mid-selection
    assert seen_in_db and seen_in_db[0]["stage"] == "select" and seen_in_db[0]["job"] == "offline_curation"
    assert set(seen_in_db[0]["seconds"]) == {"load", "kmeans"}
    db.expire_all()
    final = db.get(Run, run_id).progress
    assert final["stage"] == "done" and final["done"] == final["total"] == ROWS
    assert final["subset_size"] == summary["subset_size"]
    assert set(summary["seconds"]) == {"load", "kmeans", "select", "write", "total"}


def test_rerun_replaces_the_results_identically(app, db, curated) -> None:
    run_id, summary, _, _ = curated
    before = decisions(db, run_id)
    again = run_offline_curation(app.state.sessions, run_id)
    assert decisions(db, run_id) == before
    assert {k: again[k] for k in ("subset_size", "band_counts")} == {
        k: summary[k] for k in ("subset_size", "band_counts")
    }
    assert db.scalar(select(func.count()).where(PrototypeVersion.run_id == run_id)) == 1


def test_same_seed_same_subset_other_seed_another(app, client, admin, db, dataset, curated) -> None:
    kept = {s for s, d in decisions(db, curated[0]).items() if d[1]}
    twin = new_run(client, admin, dataset)
    run_offline_curation(app.state.sessions, twin)
    assert {s for s, d in decisions(db, twin).items() if d[1]} == kept
    other = new_run(client, admin, dataset, {**CONFIG, "seed": 8})
    run_offline_curation(app.state.sessions, other)
    assert {s for s, d in decisions(db, other).items() if d[1]} != kept


def test_subset_export_and_stats_see_the_offline_run(client, admin, curated) -> None:
    run_id, summary, _, _ = curated
    stats = client.get(f"/v1/runs/{run_id}/stats", headers=admin).json()
    assert stats["phase"] == "done" and stats["subset_complete"]
    assert stats["subset_size"] == summary["subset_size"] and stats["samples_seen"] == ROWS
    assert stats["progress"]["stage"] == "done"
    lines = client.get(f"/v1/runs/{run_id}/subset", headers=admin).text.splitlines()
    assert len(lines) == 1 + summary["subset_size"]  # provenance, then one row per kept sample


def test_refuses_unknown_empty_and_online_runs(app, client, admin, db, dataset) -> None:
    with pytest.raises(ApiError) as unknown:
        run_offline_curation(app.state.sessions, 10**9)
    assert unknown.value.status == 404

    dataset_id, ids, _ = dataset
    empty = client.post("/v1/runs", json={"dataset_id": dataset_id, "config": CONFIG}, headers=admin).json()["id"]
    with pytest.raises(ApiError) as no_rows:
        run_offline_curation(app.state.sessions, empty)
    assert no_rows.value.code == "no_embeddings"
    db.expire_all()
    assert db.get(Run, empty).progress == {}  # refused before the job starts: nothing written

    online = new_run(client, admin, dataset)
    db.add(
        Manifest(id="m-online", run_id=online, phase="curation", epoch=1, step=1, sample_ids=[], expires_at=func.now())
    )
    db.add(
        Decision(
            run_id=online,
            sample_id=int(ids[0]),
            epoch=1,
            step=1,
            manifest_id="m-online",
            prototype=0,
            distance=0.1,
            band=int(Band.SUPPORT),
            kept=True,
            prototype_version=1,
        )
    )
    db.commit()
    with pytest.raises(ApiError) as busy:
        run_offline_curation(app.state.sessions, online)
    assert busy.value.code == "run_is_online"
    assert db.scalar(select(func.count()).where(Decision.run_id == online)) == 1  # untouched


def test_embedded_sqlite(tmp_path) -> None:
    """The embedded default has no COPY: the same job through the ORM gives the engine's answer."""
    engine = make_engine(f"sqlite:///{tmp_path / 'embedded.db'}")
    upgrade(str(engine.url))
    sessions = session_factory(engine)
    config = {"warmup_samples": 100, "batch_size": 64, "seed": 3}
    emb = stored_embeddings(400, seed=9)
    with sessions() as session:
        dataset_id, ids = make_dataset(session, 400)
        run = Run(dataset_id=dataset_id, config=CurationConfig(**config).model_dump(), seed=3)
        session.add(run)
        session.flush()
        upsert_embeddings(session, run.id, np.asarray(ids, dtype=np.int64), emb, 0)
        session.commit()
        run_id = run.id
    summary = run_offline_curation(sessions, run_id)
    expected = curate_offline(unit_rows(emb).astype(np.float16), CurationConfig(**config))
    with sessions() as session:
        kept = set(session.scalars(select(Decision.sample_id).where(Decision.run_id == run_id, Decision.kept)))
        stored = session.get(Run, run_id)
        assert stored is not None and stored.phase == "done"
    assert kept == {ids[i] for i in np.flatnonzero(expected.keep)}
    assert summary["subset_size"] == len(kept)
    engine.dispose()


@pytest.mark.parametrize("chunk_rows", [1, 7, 256, 5000])
def test_reader_chunks_the_copy_stream_anywhere(app, dataset, curated, chunk_rows) -> None:
    """Chunk edges fall inside rows, on the header and next to the trailer: the matrix is the same."""
    _, ids, emb = dataset
    with app.state.sessions() as session:
        got_ids, features = read_unit_features(session, curated[0], chunk_rows=chunk_rows)
    np.testing.assert_array_equal(got_ids, ids)
    np.testing.assert_array_equal(features, unit_rows(emb).astype(np.float16))

"""Prototype refresh from stored embeddings (service.runs.prototypes) and the one reader under it."""

from __future__ import annotations

import numpy as np
import pytest
from sqlalchemy import select

import service.storage.embedding_reader as reader
from service.curation import init_prototypes
from service.db import make_engine, session_factory
from service.errors import ApiError
from service.migrate import upgrade
from service.models import Dataset, Embedding, PrototypeVersion, Run, Sample
from service.runs.prototypes import refresh_prototypes, training_sample
from tests.runs_helpers import make_dataset, npz

OCTET = {"Content-Type": "application/octet-stream"}
N, DIM, K = 300, 32, 4


def clustered(n: int, dim: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = 3 * rng.standard_normal((K, dim))
    return (centres[rng.integers(0, K, n)] + rng.standard_normal((n, dim))).astype(np.float32)


def unit_f16(emb: np.ndarray) -> np.ndarray:
    """What the reader must produce: the stored float16 rows, widened, divided by their norm."""
    x = np.asarray(emb, dtype=np.float16).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture
def run(client, db, admin):
    dataset_id, ids = make_dataset(db, N)
    run_id = client.post(
        "/v1/runs", json={"dataset_id": dataset_id, "config": {"k": K, "warmup_samples": 20}}, headers=admin
    ).json()["id"]
    emb = clustered(N, DIM)
    body = npz(sample_id=np.asarray(ids, dtype=np.int64), embedding=emb)
    assert client.post(f"/v1/runs/{run_id}/embeddings", content=body, headers={**admin, **OCTET}).status_code == 200
    return run_id, np.asarray(ids, dtype=np.int64), emb


def test_reader_gives_unit_rows_in_id_order_with_one_or_several_parts(app, run, monkeypatch) -> None:
    run_id, ids, emb = run
    meta, one = reader.read_embeddings(app.state.sessions, run_id, parts=1)
    monkeypatch.setattr(reader, "MIN_PART_ROWS", 1)  # split even this small run over 3 connections
    imported = []
    original = reader._read_part_in_snapshot
    monkeypatch.setattr(reader, "_read_part_in_snapshot", lambda *a: imported.append(a[1]) or original(*a))
    meta3 = reader.scan_embeddings(app.state.sessions, run_id, _array_sink, parts=3, chunk_rows=7)
    three = _array_sink.last.features  # type: ignore[attr-defined]
    np.testing.assert_array_equal(meta.sample_ids, ids)
    np.testing.assert_allclose(one, unit_f16(emb), atol=1e-6)
    np.testing.assert_array_equal(one, three)
    assert len(imported) == 2 and len(set(imported)) == 1  # two more parts, one exported snapshot
    assert (meta.rows, meta.dim, meta.max_step) == (N, DIM, 0) == (meta3.rows, meta3.dim, meta3.max_step)
    np.testing.assert_array_equal(reader.stored_ids(app.state.sessions, run_id), ids)
    subset = ids[[3, 50, 299]]
    meta_s, rows = reader.read_embeddings(app.state.sessions, run_id, np.append(subset, 10**12))
    np.testing.assert_array_equal(meta_s.sample_ids, subset)  # an id without an embedding is simply absent
    np.testing.assert_allclose(rows, unit_f16(emb[[3, 50, 299]]), atol=1e-6)


def _array_sink(meta: reader.EmbeddingSet) -> reader.ArraySink:
    _array_sink.last = reader.ArraySink(meta.rows, meta.dim)  # type: ignore[attr-defined]
    return _array_sink.last  # type: ignore[attr-defined]


def test_reader_refuses_empty_runs_mixed_widths_and_zero_rows(app, client, db, admin) -> None:
    dataset_id, ids = make_dataset(db, 4)
    run_id = client.post(
        "/v1/runs", json={"dataset_id": dataset_id, "config": {"k": 2, "warmup_samples": 4}}, headers=admin
    ).json()["id"]
    with pytest.raises(ApiError) as empty:
        reader.read_embeddings(app.state.sessions, run_id)
    assert (empty.value.status, empty.value.code) == (409, "no_embeddings")
    ones = np.ones(8, np.float16).tobytes()
    db.add_all(
        [
            Embedding(run_id=run_id, sample_id=ids[0], dim=8, vector=ones, step=0),
            Embedding(run_id=run_id, sample_id=ids[1], dim=8, vector=np.zeros(8, np.float16).tobytes(), step=0),
        ]
    )
    db.commit()
    with pytest.raises(ApiError) as zero:
        reader.read_embeddings(app.state.sessions, run_id)
    assert (zero.value.status, zero.value.code) == (422, "zero_rows") and str(ids[1]) in zero.value.detail
    db.add(Embedding(run_id=run_id, sample_id=ids[2], dim=4, vector=np.ones(4, np.float16).tobytes(), step=0))
    db.commit()
    with pytest.raises(ApiError) as mixed:
        reader.read_embeddings(app.state.sessions, run_id)
    assert (mixed.value.status, mixed.value.code) == (409, "mixed_widths")


def test_reader_on_sqlite_matches_postgres_layout(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'chex.db'}"
    upgrade(url)
    engine = make_engine(url)
    sessions = session_factory(engine)
    emb = clustered(20, DIM, seed=4)
    with sessions() as s:
        dataset = Dataset(name="d", root="/tmp")
        s.add(dataset)
        s.flush()
        samples = [
            Sample(dataset_id=dataset.id, external_id=f"s{i}", image_uri=f"{i}.png", content_hash="0" * 64,
                   status="accepted")
            for i in range(20)
        ]  # fmt: skip
        s.add_all(samples)
        run = Run(dataset_id=dataset.id, config={}, seed=0)
        s.add(run)
        s.flush()
        s.add_all(
            Embedding(run_id=run.id, sample_id=x.id, dim=DIM, vector=emb[i].astype(np.float16).tobytes(), step=i % 3)
            for i, x in enumerate(samples)
        )
        s.commit()
        run_id, ids = run.id, [x.id for x in samples]
    meta, rows = reader.read_embeddings(sessions, run_id)
    np.testing.assert_array_equal(meta.sample_ids, ids)
    np.testing.assert_allclose(rows, unit_f16(emb), atol=1e-6)
    assert (meta.max_step, meta.fingerprint) == (2, 0)
    result = refresh_prototypes(sessions, run_id, k=3, seed=0, iterations=5)
    assert result.version == 1 and result.rows == 20
    engine.dispose()


def test_refresh_stores_the_next_unit_prototype_version(app, db, run) -> None:
    run_id, _, emb = run
    first = refresh_prototypes(app.state.sessions, run_id, k=K, seed=3, iterations=10)
    second = refresh_prototypes(app.state.sessions, run_id, k=K, seed=3, iterations=10)
    assert (first.version, second.version) == (1, 2)
    assert (first.k, first.dim, first.rows) == (K, DIM, N)
    db.expire_all()
    versions = db.scalars(select(PrototypeVersion).where(PrototypeVersion.run_id == run_id)).all()
    assert [v.version for v in versions] == [1, 2] and db.get(Run, run_id).prototype_version == 2
    protos = [np.frombuffer(v.vectors, np.float32).reshape(v.k, v.dim) for v in versions]
    assert protos[0].shape == (K, DIM) and versions[0].usage == [0] * K and versions[0].step == 0
    np.testing.assert_allclose(np.linalg.norm(protos[0], axis=1), 1.0, atol=1e-6)
    np.testing.assert_array_equal(protos[0], protos[1])  # deterministic for one seed
    # the warm-up k-means on the stored rows (to the last bit of the row normalisation): the database
    # path adds nothing to the maths
    np.testing.assert_allclose(protos[0], init_prototypes(unit_f16(emb), K, seed=3, iterations=10), atol=1e-6)


def test_refresh_on_a_seeded_sample_reads_only_those_rows(app, db, run) -> None:
    run_id, ids, emb = run
    chosen = training_sample(app.state.sessions, run_id, 120, seed=5)
    assert chosen is not None and len(chosen) == 120 and set(chosen) <= set(ids)
    np.testing.assert_array_equal(chosen, training_sample(app.state.sessions, run_id, 120, seed=5))
    assert training_sample(app.state.sessions, run_id, N + 1, seed=5) is None  # more than stored: all of them
    result = refresh_prototypes(app.state.sessions, run_id, k=K, seed=5, iterations=10, sample_rows=120)
    assert result.rows == 120
    stored = db.get(PrototypeVersion, (run_id, result.version))
    want = init_prototypes(unit_f16(emb[np.searchsorted(ids, chosen)]), K, seed=5, iterations=10)
    np.testing.assert_allclose(np.frombuffer(stored.vectors, np.float32).reshape(K, DIM), want, atol=1e-6)


def test_refresh_refuses_unknown_runs_and_too_few_rows(app, run) -> None:
    run_id, _, _ = run
    with pytest.raises(ApiError) as unknown:
        refresh_prototypes(app.state.sessions, 10**12, k=2, seed=0)
    assert (unknown.value.status, unknown.value.code) == (404, "unknown_run")
    with pytest.raises(ApiError) as few:
        refresh_prototypes(app.state.sessions, run_id, k=5, seed=0, sample_rows=3)
    assert (few.value.status, few.value.code) == (409, "too_few_embeddings")
    with pytest.raises(ValueError, match="k must be at least 1"):
        refresh_prototypes(app.state.sessions, run_id, k=0, seed=0)
    with pytest.raises(ValueError, match="sample_rows must be at least 1"):
        refresh_prototypes(app.state.sessions, run_id, k=2, seed=0, sample_rows=0)

"""GET /v1/runs/{id}/samples/{sid}/neighbours and the per-run FAISS index behind it, on the real Postgres."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import service.jobs.neighbours as nb
from service.curation import Band
from service.models import Decision, Sample
from tests.runs_helpers import make_dataset, npz

OCTET = {"Content-Type": "application/octet-stream"}
N, EMBEDDED, DIM = 60, 50, 24


def clustered(n: int, dim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((4, dim))
    return (centres[rng.integers(0, 4, n)] + 0.6 * rng.standard_normal((n, dim))).astype(np.float32)


def upload(client, admin, run_id: int, ids, emb) -> None:
    body = npz(sample_id=np.asarray(ids, dtype=np.int64), embedding=emb)
    r = client.post(f"/v1/runs/{run_id}/embeddings", content=body, headers={**admin, **OCTET})
    assert r.status_code == 200, r.text


def brute_force(ids, emb, sample_id: int, k: int) -> list[tuple[int, float]]:
    """Cosine ranking in float64 of the stored (float16) vectors: the answer the index must give."""
    x = np.asarray(emb, dtype=np.float16).astype(np.float64)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    at = list(ids).index(sample_id)
    sims = x @ x[at]
    order = [i for i in np.argsort(-sims, kind="stable") if i != at][:k]
    return [(int(ids[i]), float(sims[i])) for i in order]


def assert_same_hits(got: list[tuple[int, float]], want: list[tuple[int, float]]) -> None:
    assert [i for i, _ in got] == [i for i, _ in want]
    np.testing.assert_allclose([s for _, s in got], [s for _, s in want], atol=1e-5)


@pytest.fixture
def index_dir(app, tmp_path, monkeypatch) -> Path:
    """A fresh cache (and file directory) for each test: no index leaks between tests."""
    monkeypatch.setattr(app.state, "neighbour_cache", nb.NeighbourIndexCache(tmp_path), raising=False)
    return tmp_path


@pytest.fixture
def run(client, db, admin, index_dir):
    """A run whose first EMBEDDED of N samples have stored embeddings."""
    dataset_id, ids = make_dataset(db, N)
    run_id = client.post(
        "/v1/runs", json={"dataset_id": dataset_id, "config": {"k": 2, "warmup_samples": 10}}, headers=admin
    ).json()["id"]
    emb = clustered(EMBEDDED, DIM, seed=run_id)
    upload(client, admin, run_id, ids[:EMBEDDED], emb)
    return run_id, ids, emb


def test_neighbours_match_brute_force_cosine(client, admin, run) -> None:
    run_id, ids, emb = run
    for sid in (ids[0], ids[17], ids[EMBEDDED - 1]):
        r = client.get(f"/v1/runs/{run_id}/samples/{sid}/neighbours?k=7", headers=admin)
        assert r.status_code == 200, r.text
        body = r.json()
        got = [(n["sample_id"], n["similarity"]) for n in body["neighbours"]]
        assert_same_hits(got, brute_force(ids[:EMBEDDED], emb, sid, 7))
        assert body["sample_id"] == sid and body["k"] == 7 and sid not in [i for i, _ in got]
        assert body["index"] == {"kind": "flat", "rows": EMBEDDED, "dim": DIM, "max_step": 0}
        assert body["neighbours"][0]["external_id"] == f"s{ids.index(got[0][0])}"


def test_default_k_is_10_and_k_above_the_rows_returns_all_others(client, admin, run) -> None:
    run_id, ids, _ = run
    assert len(client.get(f"/v1/runs/{run_id}/samples/{ids[3]}/neighbours", headers=admin).json()["neighbours"]) == 10
    body = client.get(f"/v1/runs/{run_id}/samples/{ids[3]}/neighbours?k=100", headers=admin).json()
    assert len(body["neighbours"]) == EMBEDDED - 1


def test_the_samples_own_decision_and_its_neighbours_decisions_are_reported(client, admin, db, run) -> None:
    run_id, ids, emb = run
    sid = ids[5]
    first = brute_force(ids[:EMBEDDED], emb, sid, 1)[0][0]
    db.add_all(
        [
            Decision(
                run_id=run_id, sample_id=sid, epoch=1, step=2, manifest_id="m1", prototype=1, distance=0.25,
                band=int(Band.CENTRAL_DROPPED), kept=False, prototype_version=2,
            ),
            Decision(  # a later epoch's decision is the one reported
                run_id=run_id, sample_id=sid, epoch=2, step=9, manifest_id="m2", prototype=0, distance=0.5,
                band=int(Band.SUPPORT), kept=True, prototype_version=7,
            ),
            Decision(
                run_id=run_id, sample_id=first, epoch=1, step=3, manifest_id="m3", prototype=1, distance=0.9,
                band=int(Band.OUTLIER), kept=False, prototype_version=3,
            ),
        ]
    )  # fmt: skip
    db.commit()
    body = client.get(f"/v1/runs/{run_id}/samples/{sid}/neighbours?k=3", headers=admin).json()
    assert body["decision"] == {
        "epoch": 2, "step": 9, "band": "support", "prototype": 0, "distance": 0.5, "kept": True,
        "prototype_version": 7,
    }  # fmt: skip
    assert body["external_id"] == "s5" and body["image_uri"] == "img/5.png"
    top = body["neighbours"][0]
    assert top["sample_id"] == first and top["decision"]["band"] == "outlier" and top["decision"]["kept"] is False
    assert all(n["decision"] is None for n in body["neighbours"][1:])


def test_cache_is_reused_and_rebuilt_after_new_or_rewritten_embeddings(app, client, admin, run) -> None:
    run_id, ids, emb = run
    cache = app.state.neighbour_cache
    sessions = app.state.sessions
    first = cache.get(sessions, run_id)
    assert cache.get(sessions, run_id) is first  # same key: no rebuild
    # new samples embedded: more rows, a new index that holds them
    extra = clustered(N - EMBEDDED, DIM, seed=99)
    upload(client, admin, run_id, ids[EMBEDDED:], extra)
    second = cache.get(sessions, run_id)
    assert second is not first and second.key.rows == N and ids[-1] in second
    # the same ids re-uploaded at the same step with other vectors: same count and step, new fingerprint
    moved = clustered(N - EMBEDDED, DIM, seed=7)
    upload(client, admin, run_id, ids[EMBEDDED:], moved)
    third = cache.get(sessions, run_id)
    assert third is not second and (third.key.rows, third.key.max_step) == (second.key.rows, second.key.max_step)
    everything = np.concatenate([emb, moved])
    assert_same_hits(nb.neighbours(third, ids[-1], 5), brute_force(ids, everything, ids[-1], 5))


def test_index_is_persisted_and_reloaded_without_a_rebuild(app, run, index_dir, monkeypatch) -> None:
    run_id, ids, _ = run
    sessions = app.state.sessions
    built = app.state.neighbour_cache.get(sessions, run_id)
    files = list(index_dir.glob("*.faiss"))
    assert [f.name for f in files] == [built.key.filename(nb.database_namespace(sessions))]

    def no_build(*_args, **_kwargs):
        raise AssertionError("a restarted worker must read the file, not rebuild")

    monkeypatch.setattr(nb, "build_index", no_build)
    restarted = nb.NeighbourIndexCache(index_dir)  # a new process: empty memory, same directory
    loaded = restarted.get(sessions, run_id)
    assert loaded is not built and loaded.key == built.key and loaded.kind == "flat"
    np.testing.assert_array_equal(loaded.sample_ids, built.sample_ids)
    assert nb.neighbours(loaded, ids[4], 6) == nb.neighbours(built, ids[4], 6)


def test_unreadable_index_file_is_rebuilt_and_stale_files_removed(client, admin, app, run, index_dir) -> None:
    run_id, ids, _ = run
    sessions = app.state.sessions
    built = app.state.neighbour_cache.get(sessions, run_id)
    path = index_dir / built.key.filename(nb.database_namespace(sessions))
    path.write_bytes(b"not a faiss index")
    rebuilt = nb.NeighbourIndexCache(index_dir).get(sessions, run_id)
    assert nb.neighbours(rebuilt, ids[1], 4) == nb.neighbours(built, ids[1], 4)
    upload(client, admin, run_id, ids[EMBEDDED:], clustered(N - EMBEDDED, DIM, seed=3))
    newer = app.state.neighbour_cache.get(sessions, run_id)
    assert [f.name for f in index_dir.glob("*.faiss")] == [newer.key.filename(nb.database_namespace(sessions))]


def test_ivf_index_with_every_list_probed_matches_flat_and_round_trips(app, run, tmp_path) -> None:
    run_id, ids, emb = run
    sessions = app.state.sessions
    ivf = nb.build_index(sessions, run_id, kind="ivf", nlist=4, nprobe=4)
    assert ivf.kind == "ivf"
    for sid in ids[:EMBEDDED:7]:
        assert_same_hits(nb.neighbours(ivf, sid, 5), brute_force(ids[:EMBEDDED], emb, sid, 5))
    nb.save_index(ivf, tmp_path / "x.faiss")
    loaded = nb.load_index(tmp_path / "x.faiss", ivf.key)
    assert loaded.kind == "ivf" and nb.neighbours(loaded, ids[2], 5) == nb.neighbours(ivf, ids[2], 5)


def test_neighbours_leave_the_sample_out_even_among_exact_duplicates(app, client, admin, db, index_dir) -> None:
    dataset_id, ids = make_dataset(db, 6)
    run_id = client.post(
        "/v1/runs", json={"dataset_id": dataset_id, "config": {"k": 2, "warmup_samples": 4}}, headers=admin
    ).json()["id"]
    emb = np.ones((6, 8), np.float32)
    emb[4:] = -1  # four identical rows, two opposite ones
    upload(client, admin, run_id, ids, emb)
    state = app.state.neighbour_cache.get(app.state.sessions, run_id)
    hits = nb.neighbours(state, ids[0], 3)
    assert len(hits) == 3 and ids[0] not in [i for i, _ in hits]
    assert {i for i, _ in hits} == set(ids[1:4]) and all(s == pytest.approx(1.0) for _, s in hits)
    assert sorted(i for i, _ in nb.neighbours(state, ids[0], 5)[3:]) == ids[4:]  # ties: any order
    with pytest.raises(KeyError):
        nb.neighbours(state, 10**12, 3)
    with pytest.raises(ValueError, match="k must be at least 1"):
        nb.neighbours(state, ids[0], 0)


def test_unknown_run_sample_or_missing_embedding_is_a_json_404(client, admin, db, run) -> None:
    run_id, ids, _ = run
    other_dataset, other_ids = make_dataset(db, 2)
    cases = [
        (f"/v1/runs/{10**12}/samples/{ids[0]}/neighbours", "unknown_run"),
        (f"/v1/runs/{run_id}/samples/{10**12}/neighbours", "unknown_sample"),
        (f"/v1/runs/{run_id}/samples/{other_ids[0]}/neighbours", "unknown_sample"),  # another dataset's sample
        (f"/v1/runs/{run_id}/samples/{ids[EMBEDDED]}/neighbours", "no_embedding"),  # in the dataset, not embedded
    ]
    for url, code in cases:
        r = client.get(url, headers=admin)
        assert r.status_code == 404 and r.json()["error"] == code, (url, r.text)
        assert r.headers["content-type"].startswith("application/json")
    assert db.get(Sample, other_ids[0]).dataset_id == other_dataset


@pytest.mark.parametrize("k", ["0", "101", "-1", "ten", "1.5"])
def test_k_outside_1_to_100_is_a_json_422(client, admin, run, k) -> None:
    run_id, ids, _ = run
    r = client.get(f"/v1/runs/{run_id}/samples/{ids[0]}/neighbours?k={k}", headers=admin)
    assert r.status_code == 422 and r.json()["error"] == "invalid_request"
    assert r.json()["detail"][0]["loc"] == ["query", "k"]


def test_bad_ids_are_422(client, admin, run) -> None:
    run_id, ids, _ = run
    for url in (f"/v1/runs/0/samples/{ids[0]}/neighbours", f"/v1/runs/{run_id}/samples/{2**63}/neighbours"):
        assert client.get(url, headers=admin).status_code == 422


def test_neighbours_need_an_admin_token(client, make_token, run) -> None:
    run_id, ids, _ = run
    url = f"/v1/runs/{run_id}/samples/{ids[0]}/neighbours"
    assert client.get(url).status_code == 401
    assert client.get(url).json()["error"] == "unauthenticated"
    assert client.get(url, headers={"Authorization": "Bearer nope"}).status_code == 401
    r = client.get(url, headers=make_token("trainer", [run_id]))  # even a trainer scoped to the run
    assert r.status_code == 403 and r.json()["error"] == "forbidden"


def test_index_can_be_built_ahead_and_needs_embeddings(client, admin, db, run) -> None:
    run_id, _, _ = run
    built = client.post(f"/v1/runs/{run_id}/neighbour-index", headers=admin)
    assert built.status_code == 200, built.text
    assert built.json() == {"kind": "flat", "rows": EMBEDDED, "dim": DIM, "max_step": built.json()["max_step"]}
    dataset_id, _ = make_dataset(db, 4)
    bare = client.post(
        "/v1/runs", json={"dataset_id": dataset_id, "config": {"k": 2, "warmup_samples": 2}}, headers=admin
    )
    r = client.post(f"/v1/runs/{bare.json()['id']}/neighbour-index", headers=admin)
    assert r.status_code == 409 and r.json()["error"] == "no_embeddings"
    assert client.post(f"/v1/runs/{10**12}/neighbour-index", headers=admin).status_code == 404

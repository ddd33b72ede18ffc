"""The selection rules (docs/ENGINE.md) and edge cases of ``select_batch`` on hand-built batches."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.curation import Band, CurationConfig, select_batch
from tests.reference import reference_fps


def unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def batch(seed: int, n: int = 300, dim: int = 32, k: int = 4) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    protos = unit(rng.standard_normal((k, dim)))
    feats = unit(protos[rng.integers(0, k, n)] + 0.4 * rng.standard_normal((n, dim)))
    return feats, protos


def test_bands_follow_per_prototype_quantiles() -> None:
    feats, protos = batch(0)
    config = CurationConfig(k=4)
    sel = select_batch(feats, protos, config, seed=0)
    for k in range(4):
        members = sel.prototype == k
        d = sel.distance[members]
        t_out, t_sup = np.quantile(d, 0.95), np.quantile(d, 0.85)
        bands = sel.band[members]
        assert ((bands == Band.OUTLIER) == (d > t_out)).all()
        assert ((bands == Band.SUPPORT) == ((d > t_sup) & (d <= t_out))).all()
        assert np.isin(bands[d <= t_sup], [Band.CENTRAL_KEPT, Band.CENTRAL_DROPPED]).all()
        assert (bands == Band.CENTRAL_KEPT).sum() == min(10, (d <= t_sup).sum())
    assert (sel.keep == np.isin(sel.band, [Band.SUPPORT, Band.CENTRAL_KEPT])).all()
    assert not sel.fallback


def test_assignment_is_nearest_prototype() -> None:
    feats, protos = batch(1)
    sel = select_batch(feats, protos, CurationConfig(k=4), seed=0)
    dists = np.linalg.norm(feats[:, None, :].astype(np.float64) - protos[None], axis=2)
    np.testing.assert_array_equal(sel.prototype, dists.argmin(axis=1))
    np.testing.assert_allclose(sel.distance, dists.min(axis=1), atol=1e-6)


def test_same_seed_same_result_and_seed_changes_fps_start() -> None:
    feats, protos = batch(2)
    config = CurationConfig(k=4)
    a, b = select_batch(feats, protos, config, seed=7), select_batch(feats, protos, config, seed=7)
    assert (a.keep == b.keep).all() and (a.band == b.band).all()
    others = [select_batch(feats, protos, config, seed=s).keep for s in range(8, 14)]
    assert any((o != a.keep).any() for o in others)


@pytest.mark.parametrize("sampler", ["fps", "density", "random"])
def test_each_sampler_caps_central_rows(sampler: str) -> None:
    feats, protos = batch(3)
    config = CurationConfig(k=4, max_central=5, central_sampler=sampler)
    sel = select_batch(feats, protos, config, seed=1)
    per_proto = np.bincount(sel.prototype[sel.band == Band.CENTRAL_KEPT], minlength=4)
    central = np.bincount(sel.prototype[sel.band >= Band.CENTRAL_KEPT], minlength=4)
    np.testing.assert_array_equal(per_proto, np.minimum(central, 5))


def test_farthest_point_property() -> None:
    """Each central pick (after the seeded start) is the farthest from the picks before it."""
    feats, protos = batch(4, n=400)
    config = CurationConfig(k=4, max_central=12)
    sel = select_batch(feats, protos, config, seed=3)
    for k in range(4):
        central = np.flatnonzero((sel.prototype == k) & (sel.band >= Band.CENTRAL_KEPT))
        chosen = set(np.flatnonzero((sel.prototype == k) & (sel.band == Band.CENTRAL_KEPT)).tolist())
        assert len(central) > 12
        start = int(np.floor(np.random.default_rng(3).random(4)[k] * len(central)))
        order = reference_fps(feats[central].astype(np.float64), 12, start, central.tolist())
        assert set(order) == chosen
        pts = feats.astype(np.float64)
        for t in range(1, len(order)):
            gaps = {i: np.linalg.norm(pts[order[:t]] - pts[i], axis=1).min() for i in central if i not in order[:t]}
            assert gaps[order[t]] == max(gaps.values())


def test_fewer_rows_than_prototypes() -> None:
    feats, protos = batch(5, n=3, k=6)
    sel = select_batch(feats, protos, CurationConfig(k=6), seed=0)
    assert len(np.unique(sel.prototype)) <= 3
    # each populated prototype: its nearest member is central and kept
    for k in np.unique(sel.prototype):
        d = sel.distance[sel.prototype == k]
        assert sel.keep[sel.prototype == k][np.argmin(d)]


def test_prototype_with_one_member_keeps_it_as_central() -> None:
    protos = unit(np.eye(3, 8))
    feats = unit(np.vstack([np.eye(3, 8)[[0] * 20], np.eye(3, 8)[[1]] + 0.1]))
    feats[:20] = unit(feats[:20] + 0.05 * np.random.default_rng(0).standard_normal((20, 8)))
    sel = select_batch(feats, protos, CurationConfig(k=3), seed=0)
    assert sel.prototype[20] == 1
    assert sel.band[20] == Band.CENTRAL_KEPT and sel.keep[20]


def test_identical_rows_share_prototype_distance_and_band() -> None:
    feats, protos = batch(6, n=200)
    feats[50:120] = feats[50]
    sel = select_batch(feats, protos, CurationConfig(k=4), seed=0)
    assert len(set(sel.prototype[50:120])) == 1
    assert len(set(sel.distance[50:120])) == 1
    coarse = np.where(sel.band[50:120] >= Band.CENTRAL_KEPT, Band.CENTRAL_KEPT, sel.band[50:120])
    assert len(set(coarse)) == 1


def test_all_rows_identical_keeps_only_max_central_copies() -> None:
    row = unit(np.ones((1, 16)))
    feats = np.repeat(row, 50, axis=0)
    protos = unit(np.eye(2, 16) + 0.1)
    sel = select_batch(feats, protos, CurationConfig(k=2, max_central=4), seed=0)
    assert (sel.band >= Band.CENTRAL_KEPT).all()  # every distance equals both quantiles
    kept = np.flatnonzero(sel.keep)
    start = int(np.floor(np.random.default_rng(0).random(2)[sel.prototype[0]] * 50))
    # ties in FPS go to the lowest rows after the seeded start
    expected = sorted([start] + [i for i in range(50) if i != start][:3])
    assert kept.tolist() == expected


def test_ties_in_distance_are_banded_together() -> None:
    """Rows at exactly the same distance fall in the same band: comparisons are <= / > on equal values."""
    protos = unit(np.eye(1, 4))
    ring = np.array([[0.6, 0.8, 0, 0], [0.6, 0, 0.8, 0], [0.6, 0, 0, 0.8], [0.6, -0.8, 0, 0]])
    feats = np.vstack([ring] * 5 + [[[1.0, 0, 0, 0]]] * 3).astype(np.float32)
    sel = select_batch(feats, protos, CurationConfig(k=1, max_central=30), seed=0)
    assert len(set(sel.band[:20])) == 1
    assert sel.keep.all()


def test_argmin_ties_go_to_lowest_prototype() -> None:
    protos = unit(np.array([[1.0, 1.0], [1.0, -1.0]]))
    feats = np.array([[1.0, 0.0]], dtype=np.float32)
    assert select_batch(feats, protos, CurationConfig(k=2), seed=0).prototype.tolist() == [0]


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 60),
    k=st.integers(1, 6),
    m=st.integers(1, 5),
    q=st.tuples(st.floats(0.01, 0.98), st.floats(0.005, 0.019)),
    seed=st.integers(0, 2**31),
)
def test_never_empty_and_fallback_never_needed(n, k, m, q, seed) -> None:
    rng = np.random.default_rng(seed)
    protos = unit(rng.standard_normal((k, 8)))
    feats = rng.standard_normal((n, 8)).astype(np.float32)
    config = CurationConfig(k=k, max_central=m, support_quantile=q[0], outlier_quantile=q[0] + q[1])
    sel = select_batch(feats, protos, config, seed=seed)
    # every populated prototype's nearest member is central, so at least one row per prototype is kept
    assert sel.keep.sum() >= len(np.unique(sel.prototype))
    assert not sel.fallback
    assert sum(sel.band_counts().values()) == n


@pytest.mark.parametrize(
    ("feats", "protos", "message"),
    [
        (np.zeros(4, np.float32), np.eye(2, 4), "2-D"),
        (np.zeros((0, 4), np.float32), np.eye(2, 4), "empty"),
        (np.ones((3, 5), np.float32), np.eye(2, 4), "width 4, expected 5"),
        (np.ones((3, 4), np.int64), np.eye(2, 4), "float dtype"),
        (
            np.array([[1, 0, 0, 0], [np.nan, 0, 0, 0], [0, np.inf, 0, 0]], np.float32),
            np.eye(2, 4),
            r"\[1, 2\]",
        ),
        (np.ones((3, 4), np.float32), 2 * np.eye(2, 4), "not L2-normalised"),
        (np.ones((3, 4), np.float32), np.eye(3, 4), "config.k is 2 but 3 prototypes"),
        (np.ones((3, 4), np.float32), np.array([[np.nan, 0, 0, 0], [1, 0, 0, 0]]), "prototypes rows"),
    ],
)
def test_bad_input_names_the_problem(feats, protos, message) -> None:
    with pytest.raises(ValueError, match=message):
        select_batch(feats, protos, CurationConfig(k=2), seed=0)

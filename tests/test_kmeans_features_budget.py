"""Warm-up prototypes, curation features and the compute fraction."""

from __future__ import annotations

import numpy as np
import pytest

from service.curation import compute_fraction, curation_features, init_prototypes


def test_init_prototypes_are_unit_deterministic_and_find_clusters() -> None:
    rng = np.random.default_rng(0)
    centers = np.eye(4, 32) * 3
    feats = (centers[rng.integers(0, 4, 400)] + 0.1 * rng.standard_normal((400, 32))).astype(np.float32)
    a = init_prototypes(feats, 4, seed=1)
    b = init_prototypes(feats, 4, seed=1)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-6)
    assert sorted(np.abs(a @ np.eye(4, 32).T).argmax(axis=1).tolist()) == [0, 1, 2, 3]
    assert a.dtype == np.float32 and a.shape == (4, 32)


def test_init_prototypes_k_equal_to_rows_and_too_many() -> None:
    feats = np.eye(3, 8, dtype=np.float32)
    assert init_prototypes(feats, 3, seed=0).shape == (3, 8)
    with pytest.raises(ValueError, match="k=4 prototypes need at least 4 warm-up features, got 3"):
        init_prototypes(feats, 4, seed=0)
    with pytest.raises(ValueError, match="contain NaN"):
        init_prototypes(np.full((5, 4), np.nan, np.float32), 2, seed=0)


def test_curation_features_concatenate_normalised_halves() -> None:
    u = np.array([[3.0, 4.0], [1.0, 0.0]])
    v = np.array([[0.0, 2.0, 0.0], [0.0, 0.0, 5.0]])
    f = curation_features(u, v)
    assert f.shape == (2, 5) and f.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(f, axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(f[0] * np.sqrt(2), [0.6, 0.8, 0, 1, 0], atol=1e-6)


@pytest.mark.parametrize(
    ("u", "v", "message"),
    [
        (np.ones((2, 3)), np.ones((3, 3)), "2 rows but text_emb has 3"),
        (np.zeros((1, 3)), np.ones((1, 3)), r"image_emb rows \[0\] have zero norm"),
        (np.ones((2, 3)), np.array([[1.0, np.inf, 0], [1, 1, 1]]), r"text_emb rows \[0\]"),
        (np.ones(3), np.ones(3), "2-D"),
    ],
)
def test_curation_features_bad_input(u, v, message) -> None:
    with pytest.raises(ValueError, match=message):
        curation_features(u, v)


def test_compute_fraction_matches_paper_arithmetic() -> None:
    assert compute_fraction(0.227, 20, 1) == pytest.approx((1 + 19 * 0.227) / 20)
    assert compute_fraction(0.227, 20, 1) == pytest.approx(0.2657, abs=1e-4)
    assert compute_fraction(1.0, 5, 2) == 1.0
    assert compute_fraction(0.0, 4, 0) == 0.0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((1.2, 20, 1), "subset_ratio"),
        ((0.2, 0, 0), "epochs must be at least 1"),
        ((0.2, 3, 4), "curation_epochs"),
    ],
)
def test_compute_fraction_bad_input(args, message) -> None:
    with pytest.raises(ValueError, match=message):
        compute_fraction(*args)

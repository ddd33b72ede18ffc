"""Sinkhorn-balanced EMA update against the per-prototype loop reference."""

from __future__ import annotations

import numpy as np
import pytest

from service.curation import CurationConfig, sinkhorn, update_prototypes
from tests.reference import reference_update


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize(("n", "dim", "k", "seed"), [(640, 64, 6, 0), (97, 16, 9, 1), (5, 8, 6, 2), (1, 4, 3, 3)])
def test_matches_reference(n, dim, k, seed) -> None:
    rng = np.random.default_rng(seed)
    protos = unit(rng.standard_normal((k, dim)))
    kept = unit(protos[rng.integers(0, k, n)] + 0.5 * rng.standard_normal((n, dim)))
    config = CurationConfig(k=k, warmup_samples=max(k, 1))
    new, usage = update_prototypes(protos, kept, config)
    ref_new, ref_usage = reference_update(protos, kept, decay=0.9, epsilon=0.5, iterations=3)
    np.testing.assert_array_equal(usage, ref_usage)
    np.testing.assert_allclose(new, ref_new, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(new, axis=1), 1.0, atol=1e-6)
    assert usage.sum() == n


def test_unused_prototypes_do_not_move_and_used_ones_move_towards_their_rows() -> None:
    protos = unit(np.eye(3, 8))
    kept = unit(np.tile(np.eye(3, 8)[0] + np.eye(3, 8)[1] * 0.5, (4, 1)))
    new, usage = update_prototypes(protos, kept, CurationConfig(k=3))
    assert usage.sum() == 4
    for k in range(3):
        if usage[k] == 0:
            np.testing.assert_allclose(new[k], protos[k], atol=1e-7)
        else:
            assert new[k] @ kept[0] > protos[k] @ kept[0]


def test_sinkhorn_balances_prototype_mass() -> None:
    rng = np.random.default_rng(0)
    scores = rng.uniform(-1, 1, (200, 5))
    plan = sinkhorn(scores, epsilon=0.5, iterations=50)
    np.testing.assert_allclose(plan.sum(axis=1), 1.0, atol=1e-9)
    np.testing.assert_allclose(plan.sum(axis=0), 200 / 5, rtol=1e-3)


def test_sinkhorn_is_stable_for_small_epsilon() -> None:
    plan = sinkhorn(np.array([[1.0, -1.0], [0.9, 1.0]]), epsilon=1e-3, iterations=3)
    assert np.isfinite(plan).all()


def test_bad_input() -> None:
    protos = unit(np.eye(2, 4))
    with pytest.raises(ValueError, match="kept_features is empty"):
        update_prototypes(protos, np.zeros((0, 4), np.float32), CurationConfig(k=2))
    with pytest.raises(ValueError, match="width 3, expected 4"):
        update_prototypes(protos, np.ones((2, 3), np.float32), CurationConfig(k=2))
    with pytest.raises(ValueError, match="not L2-normalised"):
        update_prototypes(protos * 3, np.ones((2, 4), np.float32), CurationConfig(k=2))

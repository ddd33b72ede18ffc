"""Near-duplicate removal: pairs and groups by hand, the online memory rule, the sweep, one kept per group."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.curation import CurationConfig, curate_offline, dedup_against_memory, dedup_keep, epsilon_sweep
from service.curation.dedup import duplicate_groups, duplicate_pairs, one_per_group
from service.synth.embeddings import long_tailed_embeddings


def _unit(*angles_deg: float) -> np.ndarray:
    a = np.radians(np.asarray(angles_deg))
    return np.stack([np.cos(a), np.sin(a)], axis=1).astype(np.float32)


def test_pairs_by_hand() -> None:
    # cos(0) = 1, cos(10 deg) = 0.985, cos(60 deg) = 0.5, cos(90 deg) = 0: eps 0.02 links 0-1 and 1-2 only
    f = _unit(0, 10, 20, 80, 90)
    same = np.zeros(5, dtype=np.int64)
    pairs = duplicate_pairs(f, same, 0.02)
    assert list(zip(pairs.i.tolist(), pairs.j.tolist(), strict=True)) == [(0, 1), (1, 2), (3, 4)]
    assert duplicate_groups(5, pairs).tolist() == [0, 0, 0, 1, 1]
    # a different prototype breaks the 1-2 link: duplicates only count within a prototype
    split = np.array([0, 0, 1, 1, 1])
    pairs = duplicate_pairs(f, split, 0.02)
    assert list(zip(pairs.i.tolist(), pairs.j.tolist(), strict=True)) == [(0, 1), (3, 4)]


def test_threshold_is_inclusive() -> None:
    f = np.array([[1.0, 0.0], [0.5, np.sqrt(3) / 2]], dtype=np.float32)  # cos = 0.5 exactly
    assert len(duplicate_pairs(f, np.zeros(2, dtype=np.int64), 0.5).i) == 1
    assert len(duplicate_pairs(f, np.zeros(2, dtype=np.int64), 0.49).i) == 0


def test_same_patient_only() -> None:
    f = _unit(0, 1, 2, 3)
    patient = np.array([7, 7, 8, -1])  # -1: unknown, matches no one
    pairs = duplicate_pairs(f, np.zeros(4, dtype=np.int64), 0.01, patient)
    assert list(zip(pairs.i.tolist(), pairs.j.tolist(), strict=True)) == [(0, 1)]


def test_keep_lowest_priority_per_group() -> None:
    f = _unit(0, 1, 2, 90, 91)
    keep = dedup_keep(f, np.zeros(5, dtype=np.int64), 0.01, priority=np.array([4, 0, 3, 2, 1]))
    assert keep.tolist() == [False, True, False, False, True]


def test_memory_rule_by_hand() -> None:
    memory = _unit(0)
    batch = _unit(1, 45, 46, 90)  # 1 duplicates the memory row; 45 and 46 are one group; 90 alone
    eligible = dedup_against_memory(batch, np.zeros(4, dtype=np.int64), memory, np.zeros(1, dtype=np.int64), 0.01)
    assert eligible.tolist() == [False, True, False, True]
    # against another prototype's memory row, nothing is a duplicate of it
    other = dedup_against_memory(batch, np.zeros(4, dtype=np.int64), memory, np.ones(1, dtype=np.int64), 0.01)
    assert other.tolist() == [True, True, False, True]
    # with no memory, the batch rule alone
    alone = dedup_against_memory(batch, np.zeros(4, dtype=np.int64), memory[:0], np.zeros(0, dtype=np.int64), 0.01)
    assert alone.tolist() == [True, True, False, True]


def test_sweep_by_hand() -> None:
    f = _unit(0, 5, 10, 90)
    points = epsilon_sweep(f, np.zeros(4, dtype=np.int64), [0.001, 0.005, 0.05])
    # cos 5 deg = 0.9962, cos 10 deg = 0.9848: eps 0.001 none, 0.005 two pairs (0-1, 1-2), 0.05 three
    assert [(p.pairs, p.removed, p.groups) for p in points] == [(0, 0, 0), (2, 2, 1), (3, 2, 1)]
    assert points[2].examples[0][:2] == (0, 2)  # the least similar pair that still counts comes first


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(2, 300), eps=st.floats(0.001, 0.3))
def test_exactly_one_per_group(seed: int, n: int, eps: float) -> None:
    rng = np.random.default_rng(seed)
    base = rng.standard_normal((max(1, n // 3), 8))
    f = base[rng.integers(0, len(base), n)] + 0.05 * rng.standard_normal((n, 8))
    f = (f / np.linalg.norm(f, axis=1, keepdims=True)).astype(np.float32)
    proto = rng.integers(0, 3, n)
    pairs = duplicate_pairs(f, proto, eps)
    groups = duplicate_groups(n, pairs)
    keep = one_per_group(groups, rng.permutation(n))
    assert np.array_equal(np.bincount(groups[keep], minlength=groups.max() + 1), np.ones(groups.max() + 1))
    # every pair found is within a prototype and above the threshold; no kept pair is a duplicate pair
    assert (proto[pairs.i] == proto[pairs.j]).all()
    assert np.allclose((f[pairs.i] * f[pairs.j]).sum(axis=1), pairs.similarity, atol=1e-5)
    assert not (keep[pairs.i] & keep[pairs.j]).any()


def test_offline_dedup_removes_synthetic_follow_ups() -> None:
    data = long_tailed_embeddings(1500, dim=64, seed=0, duplicate_rate=0.3)
    config = CurationConfig(k=6, batch_size=256, warmup_samples=1500, dedup_epsilon=0.05)
    result = curate_offline(data.features, config)
    assert result.duplicate is not None
    removed = result.duplicate
    # true copies: a follow-up of an original study, neither side's report swapped (the generator also marks
    # follow-ups of follow-ups, whose base row is redrawn after the copy is taken: those are no copies)
    base = data.duplicate_of
    copy = np.flatnonzero(base >= 0)
    copy = copy[(base[base[copy]] < 0) & ~data.noisy[copy] & ~data.noisy[base[copy]]]
    assert len(copy) > 200
    assert removed[copy].all()  # every jittered copy found, its original kept
    assert not removed[base[copy]].any()
    assert removed[base < 0].mean() < 0.02
    assert not (result.keep & removed).any()
    assert result.modes["dedup"]["removed"] == int(removed.sum())


def test_dedup_validation() -> None:
    with pytest.raises(ValueError, match="dedup_same_patient needs dedup_epsilon"):
        CurationConfig(dedup_same_patient=True)
    with pytest.raises(ValueError, match="dedup_epsilon"):
        CurationConfig(dedup_epsilon=0.9)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(1, 120), m=st.integers(0, 60), eps=st.floats(0.001, 0.2))
def test_online_rule_leaves_no_duplicate_of_the_batch_or_memory(seed: int, n: int, m: int, eps: float) -> None:
    rng = np.random.default_rng(seed)
    base = rng.standard_normal((max(1, (n + m) // 4), 6))
    rows = base[rng.integers(0, len(base), n + m)] + 0.03 * rng.standard_normal((n + m, 6))
    rows = (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)
    proto = rng.integers(0, 2, n + m)
    memory, batch = rows[:m], rows[m:]
    eligible = dedup_against_memory(batch, proto[m:], memory, proto[:m], eps)
    kept = np.concatenate([memory, batch[eligible]])
    labels = np.concatenate([proto[:m], proto[m:][eligible]])
    pairs = duplicate_pairs(kept, labels, eps)
    assert not (pairs.j >= m).any()  # every remaining pair is between two memory rows (kept before)
    # a batch row left out shares its group with a memory row or a kept batch row (groups: chains of pairs)
    everyone = duplicate_pairs(rows, proto, eps)
    groups = duplicate_groups(n + m, everyone)
    kept_groups = set(groups[:m]) | set(groups[m:][eligible])
    assert {int(g) for g in groups[m:][~eligible]} <= {int(g) for g in kept_groups}
    # and exactly one batch row is kept per group that holds no memory row
    fresh = ~np.isin(groups[m:], groups[:m])
    per_group = np.bincount(groups[m:][eligible & fresh], minlength=groups.max() + 1)
    assert set(per_group[np.unique(groups[m:][fresh])].tolist()) <= {1}

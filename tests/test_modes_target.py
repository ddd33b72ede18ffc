"""Budget targeting: the cap arithmetic by hand, the planner against band selection, the target hit across seeds."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.curation import CurationConfig, TargetTally, curate_offline, select_batch, select_toward, wanted_rows
from service.curation.target import capped_totals, plan_caps, settle_exact, water_level
from service.synth.embeddings import SyntheticEmbeddings, long_tailed_embeddings


def budgets(test: Callable[..., None]) -> Callable[..., None]:
    """The property tests' draws: seeds, set sizes, super-batch sizes and requested ratios."""
    drawn = given(
        seed=st.integers(0, 10_000),
        n=st.integers(400, 3000),
        batch=st.sampled_from([64, 128, 256]),
        target=st.floats(0.10, 0.50),
    )(test)
    return settings(max_examples=25, deadline=None)(drawn)


def test_capped_totals_by_hand() -> None:
    # central counts 1, 3, 5: m=1 -> 3, m=2 -> 1+2+2, m=3 -> 1+3+3, m=5 -> 9, beyond: 9
    assert capped_totals(np.array([5, 1, 3]), np.array([0, 1, 2, 3, 4, 5, 9])).tolist() == [0, 3, 5, 7, 8, 9, 9]


def test_water_level_by_hand() -> None:
    counts = np.array([5, 1, 3])
    assert [water_level(counts, b) for b in (0, 2, 3, 4, 5, 7, 8, 9, 100)] == [0, 0, 1, 1, 2, 3, 4, 5, 5]


def test_wanted_rows_tracks_the_running_ratio() -> None:
    assert wanted_rows(0.25, seen=0, kept=0, batch=100) == 25
    assert wanted_rows(0.25, seen=100, kept=30, batch=100) == 20  # 30 over: the next step asks for less
    assert wanted_rows(0.25, seen=100, kept=0, batch=10) == 10  # clipped to the batch
    assert wanted_rows(0.1, seen=100, kept=50, batch=10) == 0


def test_plan_caps_by_hand() -> None:
    # one prototype, distances 1..10: q_sup 0.5 -> t_sup = 5.5, q_out 0.9 -> t_out = 9.1
    # central {1..5}, support {6..9}, outlier {10}; kept(m) = 4 + min(5, m)
    d = np.arange(1, 11, dtype=np.float64)
    c = np.zeros(10, dtype=np.int64)
    everyone = np.ones(10, dtype=bool)
    plan = plan_caps(d, c, 1, everyone, 0.5, 0.9, wanted=7)
    assert (plan.max_central, plan.support_quantile, plan.expected, plan.bound) == (3, 0.5, 7, "none")
    high = plan_caps(d, c, 1, everyone, 0.5, 0.9, wanted=10)
    assert (high.max_central, high.expected, high.bound) == (5, 9, "high")  # outliers never kept
    # wanted 2 < kept(m=1) = 5 at q_sup 0.5: q_sup rises until m = 1 keeps at most 2
    low = plan_caps(d, c, 1, everyone, 0.5, 0.9, wanted=2)
    assert low.support_quantile > 0.5 and low.max_central == 1 and low.expected <= 2 and low.bound == "none"
    # nothing wanted: even m = 1 at the highest q_sup (0.85: t_sup = 8.65) keeps one central row and support {9}
    floor = plan_caps(d, c, 1, everyone, 0.5, 0.9, wanted=0)
    assert (floor.max_central, floor.expected, floor.bound) == (1, 2, "low")
    assert floor.support_quantile == pytest.approx(0.85)
    tally = TargetTally(0.5)
    for step, seen, kept in ((plan, 10, 7), (high, 10, 9), (floor, 10, 1)):
        tally.add(step, seen, kept)
    assert tally.report() == {
        "target_ratio": 0.5,
        "achieved_ratio": 17 / 30,
        "steps": 3,
        "bound_hits": 2,
        "bound_hits_low": 1,
        "bound_hits_high": 1,
    }


def test_plan_matches_band_selection() -> None:
    data = long_tailed_embeddings(640, dim=32, seed=3)
    config = CurationConfig(k=6, warmup_samples=640)
    protos = curate_offline(data.features, config).prototypes
    for wanted in (20, 64, 128, 300, 500):
        sel, plan = select_toward(data.features, protos, config, seed=(0, 1), wanted=wanted)
        assert plan.bound == "none"
        assert abs(plan.expected - wanted) <= config.k  # the cap moves the count by at most K a step
        assert int(sel.keep.sum()) == wanted  # and the rest is settled on central rows


def test_select_toward_keeps_band_semantics() -> None:
    data = long_tailed_embeddings(300, dim=16, seed=1)
    config = CurationConfig(k=4, warmup_samples=300)
    protos = curate_offline(data.features, config).prototypes
    sel, plan = select_toward(data.features, protos, config, seed=0, wanted=90)
    same = select_batch(
        data.features,
        protos,
        config.model_copy(update={"max_central": plan.max_central, "support_quantile": plan.support_quantile}),
        seed=0,
    )
    assert int(sel.keep.sum()) == 90
    changed = sel.keep != same.keep
    assert changed.sum() == abs(plan.expected - 90) < config.k  # only the settled rows differ, all central
    assert np.isin(same.band[changed], [2, 3]).all() and np.isin(sel.band[changed], [2, 3]).all()
    assert np.array_equal(sel.band == 1, same.band == 1) and not sel.keep[sel.band == 0].any()


def test_settle_exact_by_hand() -> None:
    keep = np.array([True, True, False, False, True])
    kept_central = np.array([True, True, False, False, False])
    dropped_central = np.array([False, False, True, True, False])
    up, left = settle_exact(keep, kept_central, dropped_central, 5, seed=0)
    assert up.sum() == 5 and left == 0
    down, left = settle_exact(keep, kept_central, dropped_central, 1, seed=0)
    assert down.tolist() == [False, False, False, False, True] and left == 0
    stuck, left = settle_exact(keep, kept_central, dropped_central, 0, seed=0)
    assert stuck.sum() == 1 and left == 1  # the support row is not the controller's to drop


def budget_case(seed: int, n: int, batch: int, target: float) -> tuple[SyntheticEmbeddings, CurationConfig]:
    data = long_tailed_embeddings(n, dim=16, seed=seed)
    return data, CurationConfig(k=6, batch_size=batch, warmup_samples=min(n, 512), target_ratio=target, seed=seed)


@budgets
def test_offline_target_is_exact(seed: int, n: int, batch: int, target: float) -> None:
    data, config = budget_case(seed, n, batch, target)
    result = curate_offline(data.features, config)
    report = result.modes["target_ratio"]
    assert report["unsettled_rows"] == 0
    assert int(result.keep.sum()) == round(target * n)
    assert not result.keep[result.band == 0].any()


@budgets
def test_online_controller_lands_within_one_point(seed: int, n: int, batch: int, target: float) -> None:
    """Step by step as a run does it (fixed prototypes), no end-of-epoch settling: within +-1 percentage point."""
    data, config = budget_case(seed, n, batch, target)
    protos = curate_offline(data.features, config.model_copy(update={"target_ratio": None})).prototypes
    seen = kept = 0
    for step, start in enumerate(range(0, n, batch)):
        rows = data.features[start : start + batch]
        wanted = wanted_rows(target, seen, kept, len(rows))
        sel, _ = select_toward(rows, protos, config, seed=(seed, step), wanted=wanted)
        seen, kept = seen + len(rows), kept + int(sel.keep.sum())
    assert abs(kept / n - target) <= 0.01


def test_target_ratio_validation() -> None:
    with pytest.raises(ValueError, match="target_ratio"):
        CurationConfig(target_ratio=0.0)
    with pytest.raises(ValueError, match="below outlier_quantile"):
        CurationConfig(target_ratio=0.9, outlier_quantile=0.8, support_quantile=0.5)
    assert CurationConfig().modes() == {}
    assert CurationConfig(target_ratio=0.2).modes() == {"target_ratio": {"target_ratio": 0.2}}


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    b=st.integers(1, 60),
    k=st.integers(1, 5),
    share=st.floats(0.0, 1.0),
    sampler=st.sampled_from(["fps", "density", "random"]),
)
def test_planned_count_is_what_band_selection_keeps(seed: int, b: int, k: int, share: float, sampler: str) -> None:
    """n(m) from the central counts equals select_batch's kept count at the planned (q_sup, m), on any batch."""
    rng = np.random.default_rng(seed)
    f = rng.standard_normal((b, 6)).astype(np.float32)
    protos = rng.standard_normal((k, 6))
    protos = (protos / np.linalg.norm(protos, axis=1, keepdims=True)).astype(np.float32)
    eligible = rng.random(b) < 0.8
    config = CurationConfig(k=k, warmup_samples=k, central_sampler=sampler, target_ratio=0.5)
    wanted = round(share * b)
    sel, plan = select_toward(f, protos, config, seed=seed, wanted=wanted, eligible=eligible)
    knobs = {"max_central": plan.max_central, "support_quantile": plan.support_quantile}
    plain = select_batch(f, protos, config.model_copy(update=knobs), seed=seed, eligible=eligible)
    if not plain.fallback:
        assert int(plain.keep.sum()) == plan.expected
    assert not (sel.keep & ~eligible).any() and not sel.keep[sel.band == 0].any()
    if plan.bound == "none" and not plain.fallback:
        assert int(sel.keep.sum()) == wanted

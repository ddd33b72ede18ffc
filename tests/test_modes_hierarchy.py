"""Balanced prototypes: the allocation by hand, exact sizes, and balance across clusters of unequal size."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.curation import Band, CurationConfig, balanced_sample, curate_offline, hierarchical_kmeans
from service.curation.hierarchy import Hierarchy, allocate, assign_finest


def test_allocate_by_hand() -> None:
    rng = np.random.default_rng(0)
    assert allocate(np.array([100, 2, 50]), 30, rng).tolist() == [14, 2, 14]
    assert allocate(np.array([100, 2, 50]), 200, rng).tolist() == [100, 2, 50]  # more than there is: all
    odd = allocate(np.array([10, 10, 10]), 7, rng)
    assert sorted(odd.tolist()) == [2, 2, 3]


def test_balanced_sample_two_levels_by_hand() -> None:
    # four finest clusters (sizes 40, 40, 10, 2) under two top clusters {0, 1} and {2, 3}
    hierarchy = Hierarchy(
        centroids=[np.zeros((4, 2), np.float32), np.zeros((2, 2), np.float32)], parents=[np.array([0, 0, 1, 1])]
    )
    finest = np.repeat(np.arange(4), [40, 40, 10, 2])
    keep = balanced_sample(finest, hierarchy, 20, seed=0)
    # 10 per top cluster; top 0 gives 5 + 5, top 1 gives 8 + 2 (cluster 3 has only 2)
    assert np.bincount(finest[keep], minlength=4).tolist() == [5, 5, 8, 2]


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 1000), n=st.integers(60, 800), share=st.floats(0.05, 0.9))
def test_balanced_sample_size_is_exact(seed: int, n: int, share: float) -> None:
    rng = np.random.default_rng(seed)
    f = rng.standard_normal((n, 8)).astype(np.float32)
    hierarchy = hierarchical_kmeans(f, (12, 3), seed, 10)
    finest = assign_finest(f, hierarchy)
    eligible = rng.random(n) < 0.9
    size = round(share * n)
    keep = balanced_sample(finest, hierarchy, size, seed, eligible)
    assert keep.sum() == min(size, eligible.sum())
    assert not (keep & ~eligible).any()


def test_balanced_mode_evens_out_separated_modes() -> None:
    # three far-apart blobs of 900, 90 and 10 rows: a 60-row balanced subset takes all of the small blob's rows
    # that are no flat outliers (never kept), and splits the rest evenly over the other two
    rng = np.random.default_rng(0)
    centres = np.eye(3, 16) * 10
    sizes = [900, 90, 10]
    blob = np.repeat(np.arange(3), sizes)
    f = (centres[blob] + rng.standard_normal((1000, 16))).astype(np.float32)
    config = CurationConfig(
        k=3, batch_size=200, warmup_samples=1000, prototype_mode="hierarchical", hierarchy=(30, 3), target_ratio=0.06
    )
    result = curate_offline(f, config)
    taken = np.bincount(blob[result.keep], minlength=3)
    small = int(((blob == 2) & (result.band != Band.OUTLIER)).sum())
    assert 5 <= small <= 10 and taken.sum() == 60 and taken[2] == small
    assert abs(int(taken[0]) - int(taken[1])) <= 1 and not result.keep[result.band == Band.OUTLIER].any()
    assert result.modes["hierarchical"] == {"levels": [30, 3], "size": 60, "finest_clusters_used": 30}


def test_hierarchy_validation() -> None:
    with pytest.raises(ValueError, match="needs prototype_mode"):
        CurationConfig(hierarchy=(30, 6))
    with pytest.raises(ValueError, match="shrink"):
        CurationConfig(prototype_mode="hierarchical", hierarchy=(6, 30))
    with pytest.raises(ValueError, match="exceeds warmup_samples"):
        CurationConfig(prototype_mode="hierarchical", hierarchy=(3000, 6), warmup_samples=2560)
    assert CurationConfig(prototype_mode="hierarchical").levels == (512, 51, 6)
    assert CurationConfig(prototype_mode="hierarchical", warmup_samples=100).levels == (20, 6)

"""Grouped quantiles are bit-identical to ``np.quantile`` (linear) on every group."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from service.curation.groups import grouped_quantiles


@settings(max_examples=300, deadline=None)
@given(
    values=st.lists(st.floats(0, 4, allow_nan=False, width=32), min_size=1, max_size=80),
    n_groups=st.integers(1, 7),
    qs=st.lists(st.floats(0.001, 0.999), min_size=1, max_size=3),
    seed=st.integers(0, 1000),
)
def test_matches_numpy_quantile_exactly(values, n_groups, qs, seed) -> None:
    vals = np.asarray(values, dtype=np.float64)
    labels = np.random.default_rng(seed).integers(0, n_groups, len(vals))
    got = grouped_quantiles(vals, labels, n_groups, tuple(qs))
    for g in range(n_groups):
        members = vals[labels == g]
        for i, q in enumerate(qs):
            if len(members):
                assert got[i, g] == np.quantile(members, q)
            else:
                assert np.isnan(got[i, g])


def test_paper_quantiles_on_known_values() -> None:
    vals = np.arange(21, dtype=np.float64)  # (n-1)q = 17 and 19: exact order statistics
    got = grouped_quantiles(vals, np.zeros(21, np.intp), 1, (0.85, 0.95))
    assert got[:, 0].tolist() == [17.0, 19.0]

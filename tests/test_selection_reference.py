"""The engine against the plain per-prototype loop, band for band, on 600 random batches."""

from __future__ import annotations

import numpy as np
import pytest

from service.curation import CurationConfig, select_batch
from tests.dyadic import clustered_dyadic_batch, dyadic_features, dyadic_prototypes
from tests.reference import reference_select

SAMPLERS = ("fps", "density", "random")
QUANTILES = ((0.85, 0.95), (0.5, 0.9), (0.1, 0.2), (0.7, 0.75))


def random_case(case: int):
    rng = np.random.default_rng(1000 + case)
    n = int(rng.choice([1, 2, 3, 5, 8, 13, 40, 64, 97, 160]))
    dim = int(rng.choice([2, 3, 4, 8, 16, 33, 64]))
    k = int(rng.integers(1, 9))
    if case % 2:
        feats, protos = clustered_dyadic_batch(rng, n, dim, k)
    else:
        feats = dyadic_features(rng, n, dim, levels=int(rng.choice([1, 2, 8])))
        protos = dyadic_prototypes(rng, k, dim)
    q_sup, q_out = QUANTILES[case % len(QUANTILES)]
    config = CurationConfig(
        k=k,
        support_quantile=q_sup,
        outlier_quantile=q_out,
        max_central=int(rng.integers(1, 12)),
        central_sampler=SAMPLERS[case % 3],
        density_neighbors=int(rng.integers(1, 7)),
    )
    return feats, protos, config, case


@pytest.mark.parametrize("chunk", range(6))
def test_engine_matches_reference_loop(chunk: int) -> None:
    for case in range(chunk * 100, (chunk + 1) * 100):
        feats, protos, config, seed = random_case(case)
        got = select_batch(feats, protos, config, seed=seed)
        assigned, dist, band, keep = reference_select(
            feats,
            protos,
            q_sup=config.support_quantile,
            q_out=config.outlier_quantile,
            max_central=config.max_central,
            sampler=config.central_sampler,
            neighbors=config.density_neighbors,
            seed=seed,
        )
        where = f"case {case}: B={len(feats)} D={feats.shape[1]} K={config.k} {config.central_sampler}"
        np.testing.assert_array_equal(got.prototype, assigned, err_msg=where)
        np.testing.assert_array_equal(got.distance, dist, err_msg=where)
        np.testing.assert_array_equal(got.band, band, err_msg=where)
        np.testing.assert_array_equal(got.keep, keep, err_msg=where)

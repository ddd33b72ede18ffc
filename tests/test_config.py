"""``CurationConfig`` holds the paper's defaults and rejects inconsistent knobs."""

from __future__ import annotations

import pytest

from service.curation import CurationConfig


def test_defaults_are_the_papers() -> None:
    c = CurationConfig()
    assert (c.k, c.outlier_quantile, c.support_quantile, c.max_central) == (6, 0.95, 0.85, 10)
    assert (c.central_sampler, c.ema_decay, c.sinkhorn_epsilon, c.sinkhorn_iterations) == ("fps", 0.9, 0.5, 3)
    assert (c.kmeans_iterations, c.batch_size, c.epochs, c.curation_epochs) == (20, 640, 20, 1)


def test_round_trips_through_json() -> None:
    c = CurationConfig(k=9, central_sampler="density")
    assert CurationConfig.model_validate_json(c.model_dump_json()) == c


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"k": 0}, "k"),
        ({"outlier_quantile": 1.0}, "outlier_quantile"),
        ({"support_quantile": 0.0}, "support_quantile"),
        ({"support_quantile": 0.95, "outlier_quantile": 0.9}, "must be below outlier_quantile"),
        ({"max_central": 0}, "max_central"),
        ({"central_sampler": "kmeans++"}, "central_sampler"),
        ({"ema_decay": 1.0}, "ema_decay"),
        ({"sinkhorn_epsilon": 0}, "sinkhorn_epsilon"),
        ({"sinkhorn_iterations": 0}, "sinkhorn_iterations"),
        ({"curation_epochs": 3, "epochs": 2}, "exceeds epochs"),
        ({"warmup_samples": 3}, "at least k"),
        ({"seed": -1}, "seed"),
        ({"unknown_knob": 1}, "unknown_knob"),
    ],
)
def test_rejects_invalid_values(kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        CurationConfig(**kwargs)


def test_is_immutable() -> None:
    with pytest.raises(ValueError, match="frozen"):
        CurationConfig().k = 3  # type: ignore[misc]

"""The torch backend takes the same decisions as the CPU backend: exactly on representable inputs,
within float32 rounding on real ones. CUDA checks run only where a device is visible."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.test_selection_reference import random_case
from workers.curation import (
    CpuBackend,
    CurationConfig,
    TorchBackend,
    default_backend,
    select_batch,
    update_prototypes,
)

#: the CUDA cases: ``pytest -m gpu`` selects them (bench/gpu_pass.py runs them on a device machine)
CUDA = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")]


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def real_batch(seed: int, n: int = 640, dim: int = 1024, k: int = 6):
    rng = np.random.default_rng(seed)
    protos = unit(rng.standard_normal((k, dim)))
    feats = unit(protos[rng.integers(0, k, n)] + 0.6 * rng.standard_normal((n, dim)))
    return feats, protos


def assert_same_decisions(a, b) -> None:
    np.testing.assert_array_equal(a.prototype, b.prototype)
    np.testing.assert_array_equal(a.band, b.band)
    np.testing.assert_array_equal(a.keep, b.keep)


def test_default_backend_is_cpu_without_cuda() -> None:
    expected = "torch" if torch.cuda.is_available() else "cpu"
    assert default_backend().name == expected


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=CUDA)])
def test_torch_backend_matches_cpu_exactly_on_dyadic_batches(device: str) -> None:
    torch_backend = TorchBackend(device)
    for case in range(0, 600, 3):
        feats, protos, config, seed = random_case(case)
        a = select_batch(feats, protos, config, seed, CpuBackend())
        b = select_batch(feats, protos, config, seed, torch_backend)
        assert_same_decisions(a, b)
        np.testing.assert_array_equal(a.distance, b.distance)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=CUDA)])
@pytest.mark.parametrize("sampler", ["fps", "density", "random"])
def test_torch_backend_within_1e5_on_real_batches(device: str, sampler: str) -> None:
    config = CurationConfig(central_sampler=sampler)
    for seed in range(5):
        feats, protos = real_batch(seed)
        a = select_batch(feats, protos, config, seed, CpuBackend())
        b = select_batch(feats, protos, config, seed, TorchBackend(device))
        np.testing.assert_allclose(a.distance, b.distance, atol=1e-5)
        assert_same_decisions(a, b)
        new_a, usage_a = update_prototypes(protos, feats[a.keep], config, CpuBackend())
        new_b, usage_b = update_prototypes(protos, feats[b.keep], config, TorchBackend(device))
        np.testing.assert_allclose(new_a, new_b, atol=1e-5)
        np.testing.assert_array_equal(usage_a, usage_b)

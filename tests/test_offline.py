"""Offline curation over a whole embedding set, and the synthetic long-tailed generator it is tried on."""

from __future__ import annotations

import numpy as np
import pytest

from service.curation import CurationConfig, compute_fraction, curate_offline
from service.enrichment import enrichment_from_counts, flagged_share
from service.synth.embeddings import finding_prevalence, long_tailed_embeddings


@pytest.fixture(scope="module")
def synth():
    return long_tailed_embeddings(6000, 128, seed=3)


def test_generator_is_long_tailed_seeded_and_flagged(synth) -> None:
    prevalence = synth.prevalence
    assert prevalence[0] == pytest.approx(0.4, abs=0.03)
    assert prevalence.min() <= 0.005
    assert len(synth.names) >= 12
    assert 0.2 < (synth.duplicate_of >= 0).mean() < 0.4
    assert 0.01 < synth.noisy.mean() < 0.06
    dup = np.flatnonzero(synth.duplicate_of >= 0)
    assert (synth.duplicate_of[dup] < dup).all()  # a follow-up of an earlier study
    np.testing.assert_allclose(np.linalg.norm(synth.features, axis=1), 1.0, atol=1e-5)
    again = long_tailed_embeddings(6000, 128, seed=3)
    np.testing.assert_array_equal(again.features, synth.features)
    close = np.linalg.norm(synth.features[dup] - synth.features[synth.duplicate_of[dup]], axis=1)
    assert np.median(close) < 0.1


def test_prevalence_head_share() -> None:
    p = finding_prevalence(12)
    assert p.sum() == pytest.approx(1.0)
    assert p[0] == pytest.approx(0.4, abs=0.01)
    assert (np.diff(p) < 0).all()


def test_offline_curation_keeps_a_fraction_and_covers_every_row(synth) -> None:
    config = CurationConfig(batch_size=640, warmup_samples=2000)
    progress: list[tuple[int, int]] = []
    result = curate_offline(synth.features, config, progress=lambda d, t: progress.append((d, t)))
    n_batches = -(-6000 // 640)
    assert progress[-1] == (n_batches, n_batches)
    assert sorted(np.unique(result.batch).tolist()) == list(range(n_batches))
    assert sum(result.band_counts().values()) == 6000
    # per batch: at most 10 central rows per prototype plus the 85-95% band
    assert 0.10 < result.subset_ratio < 0.30
    assert compute_fraction(result.subset_ratio, 20, 1) < 0.35
    again = curate_offline(synth.features, config)
    np.testing.assert_array_equal(again.keep, result.keep)


def label_enrichment(labels: np.ndarray, keep: np.ndarray, names) -> dict:
    """Enrichment of one label per row: the counts per label, in the dataset and in the kept rows."""
    return enrichment_from_counts(
        np.bincount(labels, minlength=len(names)),
        len(labels),
        np.bincount(labels[keep], minlength=len(names)),
        int(keep.sum()),
        names,
    )


def test_rare_findings_are_enriched(synth) -> None:
    result = curate_offline(synth.features, CurationConfig(warmup_samples=2000))
    enrichment = label_enrichment(synth.finding, result.keep, synth.names)
    rare = [enrichment[n]["ratio"] for n in synth.names[-4:]]
    assert np.nanmean(rare) > 1.5
    assert enrichment[synth.names[0]]["ratio"] < 1.0


def test_report_helpers_on_known_values() -> None:
    labels = np.array([0, 0, 0, 1])
    keep = np.array([True, False, False, True])
    e = label_enrichment(labels, keep, ["a", "b"])
    assert e["a"] == {"dataset_share": 0.75, "subset_share": 0.5, "ratio": pytest.approx(2 / 3)}
    assert e["b"]["ratio"] == 2.0
    assert flagged_share(np.array([True, False, False, False]), keep) == {
        "dataset_share": 0.25,
        "subset_share": 0.5,
        "ratio": 2.0,
    }


def test_offline_rejects_too_few_rows_for_k() -> None:
    with pytest.raises(ValueError, match="k=6 prototypes need at least 6"):
        curate_offline(np.eye(4, 8, dtype=np.float32), CurationConfig(warmup_samples=6))

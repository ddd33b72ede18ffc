"""Summaries of a curated subset: label enrichment and shares of flagged rows (the admin statistics, the demo)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray


def enrichment_from_counts(
    dataset_counts: NDArray[np.int64],
    dataset_rows: int,
    subset_counts: NDArray[np.int64],
    subset_rows: int,
    names: Sequence[str],
) -> dict[str, dict[str, float]]:
    """Per label: its share of the dataset, its share of the subset, and their ratio (NaN where the dataset has
    none), from per-label row counts (SQL aggregates; a multi-label row counts once per label)."""
    dataset = np.asarray(dataset_counts, dtype=np.float64) / max(dataset_rows, 1)
    subset = np.asarray(subset_counts, dtype=np.float64) / max(subset_rows, 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(dataset > 0, subset / dataset, np.nan)
    return {
        name: {"dataset_share": float(d), "subset_share": float(s), "ratio": float(r)}
        for name, d, s, r in zip(names, dataset, subset, ratio, strict=True)
    }


def flagged_share(flag: NDArray[np.bool_], keep: NDArray[np.bool_]) -> dict[str, float]:
    """Share of flagged rows in the dataset and in the subset (e.g. near-duplicates, noisy pairs)."""
    dataset = float(flag.mean()) if len(flag) else 0.0
    subset = float(flag[keep].mean()) if keep.any() else 0.0
    return {
        "dataset_share": dataset,
        "subset_share": subset,
        "ratio": subset / dataset if dataset else float("nan"),
    }

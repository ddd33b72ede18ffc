"""Training compute relative to full-data training."""

from __future__ import annotations


def compute_fraction(subset_ratio: float, epochs: int, curation_epochs: int) -> float:
    """(curation_epochs + (epochs - curation_epochs) * subset_ratio) / epochs."""
    if not 0.0 <= subset_ratio <= 1.0:
        raise ValueError(f"subset_ratio must be in [0, 1], got {subset_ratio}")
    if epochs < 1:
        raise ValueError(f"epochs must be at least 1, got {epochs}")
    if not 0 <= curation_epochs <= epochs:
        raise ValueError(f"curation_epochs must be in [0, epochs={epochs}], got {curation_epochs}")
    return (curation_epochs + (epochs - curation_epochs) * subset_ratio) / epochs

"""Curation statistics as a PNG (matplotlib, Agg): bands, distances by band, label enrichment."""

from __future__ import annotations

import io
from collections.abc import Mapping

import numpy as np
from numpy.typing import NDArray

from .curation import BAND_LABELS

BAND_COLOURS = ("#c0392b", "#27ae60", "#2980b9", "#95a5a6")  # outlier, support, central kept, central dropped


def band_figure_png(
    counts: NDArray[np.int64],
    edges: NDArray[np.floating],
    hists: Mapping[int, NDArray[np.int64]],
    enrichment: Mapping[str, Mapping[str, float]] | None = None,
    title: str = "curation",
) -> bytes:
    """The figure from aggregates: rows per band code, and per band a histogram of d over ``edges``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = 3 if enrichment else 2
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 4), constrained_layout=True)
    axes[0].bar(BAND_LABELS, counts, color=BAND_COLOURS)
    axes[0].set_title("rows per band")
    axes[0].tick_params(axis="x", rotation=20)
    drawn = False
    for code, label in enumerate(BAND_LABELS):
        hist = hists.get(code)
        if hist is not None and hist.any():
            axes[1].hist(edges[:-1], bins=edges, weights=hist, alpha=0.6, label=label, color=BAND_COLOURS[code])
            drawn = True
    axes[1].set_title("distance to prototype by band")
    axes[1].set_xlabel("d")
    if drawn:
        axes[1].legend()
    if enrichment:
        names = list(enrichment)
        ratios = [enrichment[n]["ratio"] for n in names]
        axes[2].barh(names, ratios, color="#8e44ad")
        axes[2].axvline(1.0, color="black", lw=0.8)
        axes[2].set_title("subset share / dataset share")
        axes[2].invert_yaxis()
    fig.suptitle(title)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()

"""Admin answers: per-run statistics."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from .runs import Phase, RunError

#: docs/DATA.md, "Exports"
ExportFormat = Literal["jsonl", "csv", "openclip-csv", "webdataset", "parquet", "ids", "chexficient"]


class BandCounts(BaseModel):
    """Decisions per band over the curation epochs."""

    outlier: int = 0
    support: int = 0
    central_kept: int = 0
    central_dropped: int = 0


class PrototypeStats(BaseModel):
    id: int = Field(description="prototype index k")
    usage: int | None = Field(description="kept rows assigned to it by the latest prototype update")
    decisions: int = Field(description="curation decisions that chose this prototype")
    mean_distance: float | None = Field(description="mean d_i over those decisions; null when there are none")


class PrototypeDrift(BaseModel):
    from_version: int
    to_version: int
    per_prototype: list[float] = Field(description="||p_k(to) - p_k(from)|| per prototype")
    mean: float


class LabelShare(BaseModel):
    dataset_share: float = Field(description="share of the dataset's accepted samples carrying the label")
    subset_share: float = Field(description="share of the curated subset carrying the label")
    ratio: float | None = Field(description="subset_share / dataset_share (enrichment > 1)")


class RunStats(BaseModel):
    run_id: int
    dataset_id: int
    phase: Phase
    epoch: int
    step: int
    curation_epochs: list[int] = Field(description="the epochs whose decisions these statistics cover")
    samples_total: int = Field(description="accepted samples of the run's dataset, less those left out of this run")
    samples_seen: int = Field(description="distinct samples with a decision in the curation epochs")
    subset_size: int = Field(description="distinct samples kept in the curation epochs")
    subset_ratio: float = Field(description="subset_size / samples_total")
    subset_complete: bool = Field(description="true once the curation epochs are over (phase subset or done)")
    compute_fraction: float = Field(
        description="(curation_epochs + (epochs - curation_epochs) * subset_ratio) / epochs; final once complete"
    )
    band_counts: BandCounts
    prototypes: list[PrototypeStats]
    prototype_drift: PrototypeDrift | None = Field(description="null before the first prototype version")
    label_enrichment: dict[str, LabelShare]
    prototype_version: int
    model_id: str | None
    checkpoint_step: int | None
    progress: dict[str, Any]
    modes: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="modes beyond the paper the run uses (docs/MODES.md): parameters and outcome; {} if none",
    )
    error: RunError | None = Field(None, description="the failing step of the run, when there is one")

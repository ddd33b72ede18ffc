"""Runs, manifests and curated batches."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..curation.config import MAX_DEDUP_EPSILON
from ..limits import BIGINT_MAX
from .datasets import MAX_SAMPLES_PER_REQUEST, SampleIdIn

Phase = Literal["warmup", "curation", "subset", "done"]


class RunError(BaseModel):
    """Why a run does not move on: its failing step and the error (``stopped``: leases answer 409 until an admin
    repairs the run)."""

    step: str = Field(description="warmup_kmeans or curation_step")
    code: str
    detail: str
    failures: int = Field(description="times in a row the step failed")
    stopped: bool
    at: str
    sample_ids: list[int] | None = Field(None, description="samples whose stored embeddings are unusable, if known")


class RunCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dataset_id: int = Field(ge=1, le=BIGINT_MAX)
    config: dict[str, Any] = Field(default_factory=dict, description="CurationConfig fields; omitted ones default")
    model_id: str | None = Field(None, max_length=500, description="the trainer's embedding model")
    embedding_set_id: int | None = Field(
        None, ge=1, le=BIGINT_MAX, description="a named embedding set of the dataset for offline curation to read"
    )


class RunOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    dataset_id: int
    config: dict[str, Any]
    seed: int
    phase: Phase
    epoch: int
    step: int
    prototype_version: int
    model_id: str | None
    checkpoint_step: int | None
    embedding_set_id: int | None = None
    created_at: datetime
    error: RunError | None = Field(None, description="the failing step, when there is one")
    epoch_size: int | None = Field(None, description="rows of the current epoch (GET of one run only)")
    epoch_done: int | None = Field(None, description="rows of the current epoch acknowledged (GET of one run only)")


class ManifestRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model_id: str | None = Field(None, max_length=500)
    checkpoint_step: int | None = Field(None, ge=0, le=BIGINT_MAX)


class UnreadableReport(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field("unreadable image", max_length=2000)
    manifest_id: str | None = Field(None, max_length=36, description="the manifest holding the sample's lease")


class ExclusionEntry(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    sample_id: int
    source: Literal["trainer", "admin"]
    reason: str
    created_at: datetime


class RepairRequest(BaseModel):
    """An admin's repair of a run: leave samples out of it, optionally re-initialise its prototypes, and let its
    failed step run again."""

    model_config = ConfigDict(extra="forbid")

    exclude_samples: list[SampleIdIn] = Field(
        default_factory=list,
        max_length=MAX_SAMPLES_PER_REQUEST,
        description="samples left out of this run: their stored embeddings in it are deleted and they are not "
        "handed out again (e.g. the sample_ids of a bad_stored_embeddings error)",
    )
    reason: str = Field("excluded by an admin", min_length=1, max_length=2000)
    reinit_prototypes: bool = Field(
        False, description="k-means over warmup_samples of the run's stored embeddings as its next prototype version"
    )


class ManifestItem(BaseModel):
    sample_id: int
    external_id: str
    image_uri: str
    report: str


class ManifestOut(BaseModel):
    manifest_id: str | None = Field(description="null when nothing can be handed out right now or the run is done")
    run_id: int
    phase: Phase
    epoch: int
    step: int | None
    items: list[ManifestItem]
    expires_at: datetime | None
    wait_seconds: float | None = Field(None, description="when no items: ask again after this long")


class StoredOut(BaseModel):
    manifest_id: str
    phase: Phase
    epoch: int
    step: int
    stored: int


class CuratedBatch(BaseModel):
    manifest_id: str
    phase: Phase
    epoch: int
    step: int
    prototype_version: int = Field(description="the prototypes the selection used")
    new_prototype_version: int = Field(description="the version after this step's EMA update")
    keep: list[bool]
    bands: list[str]
    prototypes: list[int]
    distances: list[float]
    kept: int


class AckOut(BaseModel):
    manifest_id: str
    phase: Phase
    epoch: int
    step: int
    acknowledged: int


class BulkOut(BaseModel):
    run_id: int
    rows: int
    dim: int


#: epsilons one sweep may try, and borderline pairs it may show for each
MAX_SWEEP_POINTS = 20
MAX_SWEEP_EXAMPLES = 20


class DedupSweepRequest(BaseModel):
    """What to try before committing a run to a near-duplicate threshold (docs/MODES.md)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    epsilons: list[Annotated[float, Field(gt=0.0, le=MAX_DEDUP_EPSILON)]] = Field(
        default_factory=lambda: [0.001, 0.005, 0.01, 0.02, 0.05], min_length=1, max_length=MAX_SWEEP_POINTS
    )
    same_patient: bool = Field(False, description="only pairs of the same patient count")
    examples: int = Field(3, ge=0, le=MAX_SWEEP_EXAMPLES, description="least similar counting pairs shown per eps")

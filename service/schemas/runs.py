"""Runs, manifests and curated batches."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Phase = Literal["warmup", "curation", "subset", "done"]


class RunCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dataset_id: int = Field(ge=1)
    config: dict[str, Any] = Field(default_factory=dict, description="CurationConfig fields; omitted ones default")
    model_id: str | None = Field(None, max_length=500, description="the trainer's embedding model")


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
    created_at: datetime
    epoch_size: int | None = Field(None, description="rows of the current epoch (GET of one run only)")
    epoch_done: int | None = Field(None, description="rows of the current epoch acknowledged (GET of one run only)")


class ManifestRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model_id: str | None = Field(None, max_length=500)
    checkpoint_step: int | None = Field(None, ge=0)


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

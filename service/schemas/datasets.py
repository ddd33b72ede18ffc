"""Datasets, samples and ingest results."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..limits import BIGINT_MAX

SampleStatus = Literal["accepted", "rejected", "unreadable"]
#: a sample id as a request body carries it: bounded to the column, so an absurd one is a 422
SampleIdIn = Annotated[int, Field(ge=1, le=BIGINT_MAX)]
#: most sample ids one exclusion or repair request may name
MAX_SAMPLES_PER_REQUEST = 10_000


class DatasetCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Names end up in URLs, exports and file names: keep them to a safe alphabet.
    name: str = Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    root: str = Field(min_length=1, max_length=4096, description="absolute directory on the server")


class DatasetOut(BaseModel):
    id: int
    name: str
    root: str
    created_at: datetime
    samples: int = Field(description="accepted samples")


class RowRejectionOut(BaseModel):
    line: int = Field(description="where the record starts in the body, 1-based (a CSV header is line 1)")
    external_id: str | None
    reason: str


class UploadResult(BaseModel):
    accepted: int = Field(description="new samples")
    updated: int
    unchanged: int
    rejected: list[RowRejectionOut]


class DicomScanRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    folder: str = Field(".", min_length=1, max_length=4096, description="directory relative to the dataset root")
    view_positions: list[Annotated[str, Field(max_length=16)]] | None = Field(
        None, min_length=1, max_length=16, description="keep only these ViewPosition values, e.g. ['PA', 'AP']"
    )
    reports: str | None = Field(
        None,
        max_length=4096,
        description="sidecar .csv/.jsonl relative to the root: sop_uid or study_uid, report, labels",
    )
    synthesize_reports: bool = False


class ScanIssueOut(BaseModel):
    path: str
    external_id: str | None
    reason: str


class DicomScanResult(BaseModel):
    files: int = Field(description="files seen under the folder")
    accepted: int
    updated: int
    unchanged: int
    skipped: list[ScanIssueOut] = Field(description="excluded on purpose (view filter, DICOMDIR, symlinked dirs)")
    problems: list[ScanIssueOut] = Field(description="not ingested: unreadable, wrong modality, no usable report")


class SampleOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    external_id: str
    image_uri: str
    report: str
    report_synthetic: bool
    labels: list[Any]
    meta: dict[str, Any]
    content_hash: str
    status: SampleStatus
    rejection_reason: str | None
    study_uid: str | None
    sop_uid: str | None
    patient_id: str | None
    study_id: str | None
    split: str | None
    created_at: datetime
    updated_at: datetime


class SamplePage(BaseModel):
    items: list[SampleOut]
    total: int
    limit: int
    offset: int


class ExclusionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sample_ids: list[SampleIdIn] = Field(min_length=1, max_length=MAX_SAMPLES_PER_REQUEST)
    reason: str = Field("excluded by an admin", min_length=1, max_length=2000)


class ExclusionOut(BaseModel):
    excluded: int = Field(description="samples now marked unreadable in the dataset")
    runs: list[int] = Field(description="unfinished runs of the dataset that will not hand them out again")

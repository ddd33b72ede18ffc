"""Importing a public CXR set from its published layout: the request, its options, the answer."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

ImportFormat = Literal["mimic-cxr", "chexpert-plus", "padchest", "openi", "nih"]
FORMATS: tuple[ImportFormat, ...] = ("mimic-cxr", "chexpert-plus", "padchest", "openi", "nih")
Sections = Literal["findings+impression", "impression", "findings"]
UncertainLabels = Literal["negative", "positive"]
#: a path under the dataset root, as a request names it (checked against the root before use)
RootPath = Annotated[str, Field(min_length=1, max_length=4096)]
#: rejections and skips listed one by one in an answer; all of them are counted by reason
LISTED_MAX = 1000


class ImportOptions(BaseModel):
    """The paper's preprocessing as defaults, each switchable, and where the set's files are if not where it
    publishes them (docs/DATA.md)."""

    model_config = ConfigDict(extra="forbid")

    frontal_only: bool = Field(True, description="keep frontal views only (PA / AP), skip the others")
    sections: Sections = Field(
        "findings+impression",
        description="the report: findings then impression (either alone when the other is missing), or one section",
    )
    reject_empty_reports: bool = Field(
        True, description="refuse rows whose report is empty or placeholders only (false: keep them, text-only use)"
    )
    labels: bool = Field(True, description="the set's labels become the sample's labels")
    uncertain_labels: UncertainLabels = Field(
        "negative", description="CheXpert-style -1 (uncertain) labels: not a label (U-Zeros) or a label (U-Ones)"
    )
    check_images: bool = Field(
        True, description="read and decode every image (false: check only its path, e.g. for text-only curation)"
    )
    table: RootPath | None = Field(None, description="the main table, if not its published name")
    split_file: RootPath | None = Field(None, description="mimic-cxr: the split table")
    labels_file: RootPath | None = Field(None, description="mimic-cxr: the CheXpert labels; chexpert-plus: labels")
    reports: RootPath | None = Field(None, description="mimic-cxr: the reports folder or a sectioned reports CSV")
    projections: RootPath | None = Field(None, description="openi: a table of each image's projection")
    images: str | None = Field(None, max_length=4096, description="folder of the images under the root")


class ImportRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format: ImportFormat
    options: ImportOptions = Field(default_factory=ImportOptions)


class ImportIssueOut(BaseModel):
    line: int = Field(description="row of the main table (1-based, the header is line 1), or file number")
    source: str = Field(description="the file the row comes from")
    external_id: str | None
    reason: str


class ImportResult(BaseModel):
    format: ImportFormat
    rows: int = Field(description="rows (images) read")
    accepted: int = Field(description="new samples")
    updated: int
    unchanged: int
    skipped: int = Field(description="left out on purpose by an option (e.g. lateral views with frontal_only)")
    rejected: int = Field(description="refused: unusable report, missing image, bad row, ...")
    skipped_by_reason: dict[str, int]
    rejected_by_reason: dict[str, int]
    skipped_rows: list[ImportIssueOut] = Field(description=f"the first {LISTED_MAX} skipped rows")
    rejected_rows: list[ImportIssueOut] = Field(description=f"the first {LISTED_MAX} refused rows")

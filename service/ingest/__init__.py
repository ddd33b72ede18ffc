"""Ingest: CSV / JSONL manifests and DICOM folders into samples.

The pure parts live in ``rows`` (parsing), ``reports`` (hygiene, templates), ``paths`` (path safety),
``images`` (image checks) and ``dicom`` (folder scan); ``store`` upserts. This module strings them together. The
caller owns the transaction: it commits after a whole upload was read, or rolls back, so a malformed
or oversized body writes nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy.orm import Session

from ..errors import ApiError
from ..limits import PathLimits, TextLimits
from ..models import Dataset
from ..schemas.datasets import DicomScanRequest, DicomScanResult, ScanIssueOut
from .dicom import ScanIssue, Sidecar, load_sidecar, scan_folder
from .images import image_of
from .paths import PathRejected
from .reports import resolve_report
from .rows import MalformedBody, RawRow, RowRejected, decoded_lines, iter_csv, iter_jsonl, row_input, unstorable_text
from .store import SampleIn, SampleWriter, UpsertCounts

DUPLICATE = "duplicate external_id in upload"
UID_MAX = 128  # Sample.sop_uid / study_uid are VARCHAR(128)
NO_SIDECAR_ENTRY = "no report: neither its SOP instance uid nor its study uid is in the reports sidecar"


@dataclass(frozen=True, slots=True)
class RowRejection:
    line: int
    external_id: str | None
    reason: str


@dataclass
class UploadOutcome:
    counts: UpsertCounts
    rejected: list[RowRejection] = field(default_factory=list)


@dataclass
class ScanOutcome:
    files: int
    counts: UpsertCounts
    problems: list[ScanIssue] = field(default_factory=list)
    skipped: list[ScanIssue] = field(default_factory=list)


def load_dataset(session: Session, dataset_id: int) -> Dataset:
    """The dataset, or 404 ``unknown_dataset``."""
    dataset = session.get(Dataset, dataset_id)
    if dataset is None:
        raise ApiError(404, "unknown_dataset", f"dataset {dataset_id} does not exist")
    return dataset


def parse_body(chunks: Iterable[bytes], fmt: str, limits: TextLimits = TextLimits()) -> Iterator[RawRow]:
    lines = decoded_lines(chunks, limits.line_bytes)
    return iter_csv(lines) if fmt == "csv" else iter_jsonl(lines, limits)


def check_row(
    root: Path, raw: RawRow, synthesize: bool, limits: PathLimits = PathLimits(), require_images: bool = True
) -> SampleIn:
    """A row that passes every check, or RowRejected with the first reason (cheap checks first)."""
    row = row_input(raw)
    report, synthetic = resolve_report(row.report, row.labels, synthesize)
    uri, content_hash = image_of(root, row.image, require_images, limits)
    return SampleIn(
        external_id=row.external_id,
        image_uri=uri,
        report=report,
        report_synthetic=synthetic,
        labels=row.labels or [],
        meta=row.meta,
        content_hash=content_hash,
        patient_id=row.patient_id,
        study_id=row.study_id,
        split=row.split,
    )


def _peek_id(raw: RawRow) -> str | None:
    """The row's id as row_input will read it, known even when the row is refused for another reason."""
    value = raw.fields.get("external_id")
    if isinstance(value, bool) or not isinstance(value, str | int):
        return None
    return str(value).strip() or None


def ingest_rows(
    session: Session,
    dataset_id: int,
    root: Path,
    rows: Iterable[RawRow],
    synthesize: bool,
    limits: PathLimits = PathLimits(),
    require_images: bool = True,
) -> UploadOutcome:
    """Check and upsert rows as they stream in; MalformedBody from ``rows`` propagates (caller rolls back)."""
    writer = SampleWriter(session, dataset_id)
    seen: set[str] = set()
    rejected: list[RowRejection] = []
    for raw in rows:
        external_id = _peek_id(raw)
        try:
            # The first row with an id wins; later ones are refused even if the first was refused too,
            # since which of them the client meant is unknowable.
            if external_id is not None and external_id in seen:
                raise RowRejected(DUPLICATE)
            if external_id is not None:
                seen.add(external_id)
            writer.add(check_row(root, raw, synthesize, limits, require_images))
        except RowRejected as exc:
            rejected.append(RowRejection(raw.line, external_id, exc.reason))
    writer.flush()
    return UploadOutcome(writer.counts, rejected)


def ingest_dicom_folder(
    session: Session,
    dataset_id: int,
    root: Path,
    folder: str,
    view_positions: list[str] | None,
    reports: str | None,
    synthesize: bool,
    progress: Callable[[int, int], None] | None = None,
    limits: PathLimits = PathLimits(),
    text_limits: TextLimits = TextLimits(),
) -> ScanOutcome:
    """Scan ``folder`` and upsert its usable images with their sidecar reports.

    The sidecar is read first: a malformed one (MalformedBody) or a bad path (PathRejected) fails the
    request before the long scan, and nothing is written.
    """
    sidecar = load_sidecar(root, reports, limits, text_limits) if reports else Sidecar()
    scan = scan_folder(root, folder, view_positions, progress, limits)
    writer = SampleWriter(session, dataset_id)
    seen: set[str] = set()
    problems = list(scan.problems)
    for found in scan.files:
        header = found.header
        entry = sidecar.lookup(header)
        try:
            if header.sop_uid in seen:
                raise RowRejected(DUPLICATE)
            seen.add(header.sop_uid)
            if entry is None:
                raise RowRejected(NO_SIDECAR_ENTRY if reports else "no report (no reports sidecar given)")
            labels = entry.labels
            report, synthetic = resolve_report(entry.report, labels, synthesize)
            if (problem := unstorable_text([header.sop_uid, header.study_uid, header.meta()])) is not None:
                raise RowRejected(f"a header field contains {problem}")
            if max(len(header.sop_uid), len(header.study_uid or "")) > UID_MAX:
                raise RowRejected(f"a UID is longer than {UID_MAX} characters (DICOM allows 64)")
        except RowRejected as exc:
            problems.append(ScanIssue(found.uri, exc.reason, header.sop_uid))
            continue
        writer.add(
            SampleIn(
                external_id=header.sop_uid,
                image_uri=found.uri,
                report=report,
                report_synthetic=synthetic,
                labels=labels or [],
                meta=header.meta(),
                content_hash=found.sha256,
                study_uid=header.study_uid,
                sop_uid=header.sop_uid,
                study_id=header.study_uid,
            )
        )
    writer.flush()
    return ScanOutcome(scan.seen, writer.counts, problems, scan.skipped)


def run_dicom_scan(
    session: Session,
    dataset_id: int,
    root: Path,
    request: DicomScanRequest,
    progress: Callable[[int, int], None] | None = None,
    limits: PathLimits = PathLimits(),
    text_limits: TextLimits = TextLimits(),
) -> DicomScanResult:
    """A whole DICOM scan request, committed, as the API answers it (the route and the worker task share it)."""
    try:
        outcome = ingest_dicom_folder(
            session,
            dataset_id,
            root,
            request.folder,
            request.view_positions,
            request.reports,
            request.synthesize_reports,
            progress,
            limits,
            text_limits,
        )
    except PathRejected as exc:
        raise ApiError(422, "invalid_path", exc.reason) from exc
    except MalformedBody as exc:
        raise ApiError(400, "malformed_sidecar", f"reports sidecar {request.reports}: {exc}", line=exc.line) from exc
    session.commit()

    def issue(i: ScanIssue) -> ScanIssueOut:
        return ScanIssueOut(path=i.path, external_id=i.external_id, reason=i.reason)

    return DicomScanResult(
        files=outcome.files,
        accepted=outcome.counts.accepted,
        updated=outcome.counts.updated,
        unchanged=outcome.counts.unchanged,
        skipped=[issue(i) for i in outcome.skipped],
        problems=[issue(i) for i in outcome.problems],
    )

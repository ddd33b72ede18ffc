"""A public CXR set imported from its published layout: the paper's preprocessing applied, samples upserted.

Streamed (one row at a time, upserted in batches) and idempotent (the upsert is keyed by external id: importing
again updates what changed and duplicates nothing). Every row that is not stored says why: skipped on purpose by an
option (a lateral view with ``frontal_only``), or refused (no usable report, no image, a bad row). The caller owns
the transaction: a set whose layout is wrong (LayoutError) or whose table is unreadable (MalformedBody) writes
nothing.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy.orm import Session

from ..errors import ApiError
from ..limits import PathLimits, TextLimits
from ..schemas.imports import LISTED_MAX, ImportIssueOut, ImportOptions, ImportRequest, ImportResult
from .formats import READERS, Context, LayoutError, Record, Refusal
from .images import image_of
from .reports import clean_report, rejection_reason, synthesize_report
from .rows import EXTERNAL_ID_MAX, GROUP_ID_MAX, SPLIT_MAX, MalformedBody, RowRejected, unstorable_text
from .store import SampleIn, SampleWriter

#: how often (rows) progress is reported
PROGRESS_EVERY = 200

Issue = Callable[[str, ImportIssueOut], None]  # ("skipped" | "rejected", the row)
Progress = Callable[[int, int], None] | None


def compose_report(record: Record, options: ImportOptions) -> str:
    """The report as the options ask: findings then impression (either alone when the other is missing), one
    section, or the whole text for a set (or report) without sections."""
    wanted = {
        "findings+impression": (record.findings, record.impression),
        "impression": (record.impression,),
        "findings": (record.findings,),
    }[options.sections]
    joined = " ".join(clean_report(part) for part in wanted if clean_report(part))
    return joined or clean_report(record.text)


def skip_reason(record: Record, options: ImportOptions) -> str | None:
    """Why an option leaves this image out on purpose, or None."""
    if options.frontal_only and record.frontal is False:
        return f"view {record.view} is not frontal (frontal_only)"
    if options.frontal_only and record.frontal is None:
        return "view unknown: the layout names no projection for this image (frontal_only; see docs/DATA.md)"
    return None


def to_sample(ctx: Context, record: Record, require_images: bool) -> SampleIn:
    """The stored sample, or RowRejected with the first reason."""
    options = ctx.options
    labels = list(record.labels or [])
    if options.uncertain_labels == "positive":
        labels += [u for u in record.uncertain if u not in labels]
    if record.synthesize:
        report, synthetic = synthesize_report(labels), True
    else:
        report, synthetic = compose_report(record, options), False
        reason = rejection_reason(report)
        if reason is not None and options.reject_empty_reports:
            raise RowRejected(reason)
    if len(record.external_id) > EXTERNAL_ID_MAX:
        raise RowRejected(f"external_id longer than {EXTERNAL_ID_MAX} characters")
    for name, value, limit in (
        ("patient_id", record.patient_id, GROUP_ID_MAX),
        ("study_id", record.study_id, GROUP_ID_MAX),
        ("split", record.split, SPLIT_MAX),
    ):
        if value is not None and len(value) > limit:
            raise RowRejected(f"{name} longer than {limit} characters")
    meta = {**record.meta, **({"view": record.view} if record.view else {})}
    if record.uncertain and options.labels:
        meta["uncertain_labels"] = record.uncertain
    if (
        problem := unstorable_text([record.external_id, report, labels, meta, record.patient_id, record.study_id])
    ) is not None:
        raise RowRejected(f"a field contains {problem}")
    uri, content_hash = image_of(ctx.root, record.image, require_images, ctx.paths)
    return SampleIn(
        external_id=record.external_id,
        image_uri=uri,
        report=report,
        report_synthetic=synthetic,
        labels=labels if options.labels else [],
        meta=meta,
        content_hash=content_hash,
        patient_id=record.patient_id,
        study_id=record.study_id,
        split=record.split,
    )


@dataclass
class _Tally:
    """Counts by reason, the first rows listed, and every row handed to ``on_issue``."""

    on_issue: Issue | None
    counts: dict[str, Counter[str]] = field(default_factory=lambda: {"skipped": Counter(), "rejected": Counter()})
    listed: dict[str, list[ImportIssueOut]] = field(default_factory=lambda: {"skipped": [], "rejected": []})

    def add(self, kind: str, issue: ImportIssueOut) -> None:
        self.counts[kind][issue.reason.split(":", 1)[0]] += 1
        if len(self.listed[kind]) < LISTED_MAX:
            self.listed[kind].append(issue)
        if self.on_issue is not None:
            self.on_issue(kind, issue)


def import_set(
    session: Session, dataset_id: int, ctx: Context, request: ImportRequest, progress: Progress, on_issue: Issue | None
) -> ImportResult:
    """Read the set's layout, apply the options, upsert the samples (not committed: the caller commits)."""
    source = READERS[request.format](ctx)
    writer = SampleWriter(session, dataset_id)
    tally = _Tally(on_issue)
    seen: set[str] = set()
    rows = 0
    for item in source.items:
        rows += 1
        if progress is not None and rows % PROGRESS_EVERY == 0:
            progress(*source.progress())
        if isinstance(item, Refusal):
            tally.add("rejected", ImportIssueOut(line=item.line, source=item.source, external_id=item.external_id,
                                                 reason=item.reason))  # fmt: skip
            continue
        issue = ImportIssueOut(line=item.line, source=item.source, external_id=item.external_id, reason="")
        if (reason := skip_reason(item, request.options)) is not None:
            tally.add("skipped", issue.model_copy(update={"reason": reason}))
            continue
        try:
            if item.external_id in seen:  # the first row with an id wins, as in an upload
                raise RowRejected("duplicate external_id in the set")
            seen.add(item.external_id)
            writer.add(to_sample(ctx, item, request.options.check_images))
        except RowRejected as exc:
            tally.add("rejected", issue.model_copy(update={"reason": exc.reason}))
    writer.flush()
    if progress is not None:
        total = source.progress()[1]
        progress(total, total)
    return ImportResult(
        format=request.format,
        rows=rows,
        accepted=writer.counts.accepted,
        updated=writer.counts.updated,
        unchanged=writer.counts.unchanged,
        skipped=sum(tally.counts["skipped"].values()),
        rejected=sum(tally.counts["rejected"].values()),
        skipped_by_reason=dict(tally.counts["skipped"]),
        rejected_by_reason=dict(tally.counts["rejected"]),
        skipped_rows=tally.listed["skipped"],
        rejected_rows=tally.listed["rejected"],
    )


def run_import(
    session: Session,
    dataset_id: int,
    root: Path,
    request: ImportRequest,
    progress: Progress = None,
    paths: PathLimits = PathLimits(),
    text: TextLimits = TextLimits(),
    on_issue: Issue | None = None,
) -> ImportResult:
    """A whole import, committed, as the API answers it (the route, the worker task and the CLI share it); a wrong
    layout is 422 ``invalid_layout``, an unreadable table or report 400 ``malformed_file``, and nothing is
    written."""
    try:
        result = import_set(
            session, dataset_id, Context(root, request.options, paths, text), request, progress, on_issue
        )
    except LayoutError as exc:
        session.rollback()
        raise ApiError(422, "invalid_layout", f"{request.format}: {exc.detail}") from exc
    except MalformedBody as exc:
        session.rollback()
        raise ApiError(400, "malformed_file", f"{request.format}: {exc}", line=exc.line) from exc
    except BaseException:
        session.rollback()
        raise
    session.commit()
    return result

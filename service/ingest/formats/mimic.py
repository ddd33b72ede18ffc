"""MIMIC-CXR-JPG 2.0.0: ``mimic-cxr-2.0.0-metadata.csv`` (one row per image), ``-split.csv``, ``-chexpert.csv``,
images ``files/pXX/pXXXXXXXX/sXXXXXXXX/<dicom_id>.jpg``, reports ``files/pXX/pXXXXXXXX/sXXXXXXXX.txt`` (from
mimic-cxr-reports.zip) or a sectioned CSV (``study, impression, findings, ...``, MIMIC-CXR's section script)."""

from __future__ import annotations

from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path

from ..paths import PathRejected, resolve_inside
from .common import (
    CHEXPERT_LABELS,
    Context,
    Item,
    Record,
    Refusal,
    Source,
    chexpert_labels,
    locate,
    open_table,
    read_lookup,
    report_sections,
    study_path,
)

METADATA = ("mimic-cxr-2.0.0-metadata.csv.gz", "mimic-cxr-2.0.0-metadata.csv")
SPLIT = ("mimic-cxr-2.0.0-split.csv.gz", "mimic-cxr-2.0.0-split.csv")
CHEXPERT = ("mimic-cxr-2.0.0-chexpert.csv.gz", "mimic-cxr-2.0.0-chexpert.csv")
SECTIONED = ("mimic_cxr_sectioned.csv.gz", "mimic_cxr_sectioned.csv")
#: frontal ViewPositions (the CheXficient authors' list: PA and AP, with their axial and decubitus variants)
FRONTAL = frozenset({"PA", "AP", "AP AXIAL", "AP LLD", "AP RLD", "PA LLD", "PA RLD"})
#: metadata columns kept in the sample's meta
META_COLUMNS = ("PerformedProcedureStepDescription", "ViewPosition", "Rows", "Columns", "StudyDate", "StudyTime")


def read(ctx: Context) -> Source:
    table = open_table(ctx, locate(ctx, ctx.options.table, *METADATA, what="MIMIC-CXR metadata table"),
                       ("dicom_id", "subject_id", "study_id", "ViewPosition"))  # fmt: skip
    splits = read_lookup(ctx, locate(ctx, ctx.options.split_file, *SPLIT, what="MIMIC-CXR split table"),
                         "dicom_id", ("split",))  # fmt: skip
    labels = (
        read_lookup(
            ctx,
            locate(ctx, ctx.options.labels_file, *CHEXPERT, what="MIMIC-CXR CheXpert labels"),
            "study_id",
            ("subject_id",),
        )  # fmt: skip
        if ctx.options.labels
        else {}
    )
    reports = _reports(ctx)
    return Source(_items(ctx, table.rows, table.source, splits, labels, reports), table.progress)


def _reports(ctx: Context) -> Reports:
    given = ctx.options.reports
    if given is None:
        for name in SECTIONED:
            if (ctx.root / name).is_file():
                given = name
                break
    if given is not None and given.endswith((".csv", ".csv.gz")):
        path = locate(ctx, given, what="MIMIC-CXR sectioned reports")
        rows = read_lookup(ctx, path, "study", ("impression", "findings"))
        return Reports(ctx, None, {k.removeprefix("s"): v for k, v in rows.items()})
    folder = locate(ctx, given, "files", what="MIMIC-CXR reports folder")
    return Reports(ctx, folder, None)


class Reports:
    """A study's findings and impression: from its ``.txt`` (sectioned on its headers) or the sectioned CSV."""

    def __init__(self, ctx: Context, folder: Path | None, sectioned: dict[str, dict[str, str]] | None) -> None:
        self.ctx, self.folder, self.sectioned = ctx, folder, sectioned
        self.text = lru_cache(maxsize=64)(self._text)  # metadata rows come grouped by study

    def of(self, subject: str, study: str) -> tuple[str, str, str]:
        """``(findings, impression, whole text)``; empty strings when the study has no report."""
        if self.sectioned is not None:
            row = self.sectioned.get(study, {})
            return row.get("findings", ""), row.get("impression", ""), ""
        return self.text(subject, study)

    def _text(self, subject: str, study: str) -> tuple[str, str, str]:
        assert self.folder is not None
        rel = str((self.folder / study_path(subject, study)).relative_to(self.ctx.root)) + ".txt"
        try:
            path = resolve_inside(self.ctx.root, rel, "report file", self.ctx.paths)[1]
            text = path.read_text(encoding="utf-8", errors="replace")
        except (PathRejected, OSError):
            return "", "", ""
        findings, impression = report_sections(text)
        return findings, impression, "" if findings or impression else text


def _items(
    ctx: Context,
    rows: Iterator[tuple[int, dict[str, str]]],
    source: str,
    splits: dict[str, dict[str, str]],
    labels: dict[str, dict[str, str]],
    reports: Reports,
) -> Iterator[Item]:
    for line, row in rows:
        dicom, subject, study = row.get("dicom_id", ""), row.get("subject_id", ""), row.get("study_id", "")
        if "__error__" in row or not (dicom and subject.isdigit() and study.isdigit()):
            yield Refusal(line, source, dicom or None, row.get("__error__", "missing dicom_id, subject_id or study_id"))
            continue
        view = row.get("ViewPosition", "").upper() or None
        findings, impression, text = reports.of(subject, study)
        positive, uncertain = chexpert_labels(labels[study], CHEXPERT_LABELS) if study in labels else ([], [])
        yield Record(
            line=line,
            source=source,
            external_id=dicom,
            image=f"files/{study_path(subject, study)}/{dicom}.jpg",
            findings=findings,
            impression=impression,
            text=text,
            labels=positive if study in labels else None,
            uncertain=uncertain,
            view=view,
            frontal=view in FRONTAL if view else None,
            patient_id=subject,
            study_id=study,
            split=splits.get(dicom, {}).get("split") or None,
            meta={c: row[c] for c in META_COLUMNS if row.get(c)},
        )

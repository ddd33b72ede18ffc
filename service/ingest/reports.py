"""Report hygiene and template reports for label-only data sets (pure functions).

The authors drop image-report pairs whose report carries no text: empty, de-identification
placeholders only (MIMIC's ``___``), "N/A"-style fillers, or section headers with nothing under
them. For label-only sets (NIH, VinDr, ChestDR) they build a report from the labels instead.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from .rows import RowRejected

#: labels that mean "nothing abnormal" (NIH's "No Finding", the COVID set's "Normal", ...)
NORMAL_LABELS = frozenset({"no finding", "no findings", "normal", "no abnormality", "no abnormalities"})

#: whole-report fillers, compared after lower-casing and turning punctuation into spaces
PLACEHOLDERS = frozenset(
    {
        "na", "n a", "none", "null", "nil", "nan", "tbd", "pending", "report pending", "unknown",
        "not available", "unavailable", "no report", "see report", "see prior report",
        "see previous report", "see prior", "x", "xx", "xxx",
    }
)  # fmt: skip

_SECTION_HEADER = re.compile(
    r"\b(?:final report|findings|impression|indication|history|comparison|technique|examination|exam)\s*:",
    re.IGNORECASE,
)
_NON_WORD = re.compile(r"[\W_]+")
_WHITESPACE = re.compile(r"\s+")

NORMAL_TEMPLATE = (
    "Findings: The lungs are clear. No pleural effusion or pneumothorax. The cardiomediastinal silhouette "
    "is within normal limits. Impression: No acute cardiopulmonary abnormality."
)


def clean_report(text: str) -> str:
    """Whitespace collapsed to single spaces: the text encoder sees no layout, and re-posts compare equal."""
    return _WHITESPACE.sub(" ", text).strip()


def _is_filler(segment: str) -> bool:
    core = _NON_WORD.sub(" ", segment.lower()).strip()
    return not core or core in PLACEHOLDERS


def rejection_reason(report: str) -> str | None:
    """Why this (cleaned) report is unusable, or None when it carries text."""
    if not report:
        return "empty report"
    # Every section ("Findings: ___ Impression: N/A") must be filler for the report to be filler.
    if all(_is_filler(segment) for segment in _SECTION_HEADER.split(report)):
        shown = report if len(report) <= 40 else report[:37] + "..."
        return f"placeholder-only report: {shown!r}"
    return None


def _label_text(label: str) -> str:
    return label.replace("_", " ").strip()  # NIH writes "Pleural_Thickening"


def _join(items: Sequence[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def synthesize_report(labels: Sequence[str]) -> str:
    """A deterministic template report from labels; no labels or only "normal" ones give the normal template."""
    findings = [_label_text(label) for label in labels if label.strip().lower() not in NORMAL_LABELS]
    findings = [f for f in findings if f]
    if not findings:
        return NORMAL_TEMPLATE
    listed = _join(findings)
    return f"Findings: {listed}. Impression: Findings consistent with {listed}."


def resolve_report(report: str, labels: list[str] | None, synthesize: bool) -> tuple[str, bool]:
    """``(report, synthetic)`` for a row, or RowRejected.

    A filler report counts as empty, so with ``synthesize`` a labelled row gets a template instead.
    ``labels=None`` means the row has no label field at all (a CSV empty cell reads the same), so there
    is nothing to synthesize from; an explicit empty list means "no findings" and gets the normal template.
    """
    text = clean_report(report)
    reason = rejection_reason(text)
    if reason is None:
        return text, False
    if synthesize and labels is not None:
        return synthesize_report(labels), True
    if synthesize:
        reason += " and no labels to synthesize one from"
    raise RowRejected(reason)

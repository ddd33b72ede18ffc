"""DICOM folder scan: headers, modality / view filter, pixel decode check, sidecar reports.

Plain functions over paths, so the API can call them in-process now and a worker later.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from pydicom import Dataset, dcmread
from pydicom.errors import InvalidDicomError

from ..limits import PathLimits, TextLimits
from .paths import PathRejected, resolve_inside
from .rows import (
    MalformedBody,
    RawRow,
    RowRejected,
    decoded_lines,
    iter_csv,
    iter_jsonl,
    parse_labels,
    unstorable_text,
)

#: plain radiographs only: CT scouts, MR localisers and the like are not chest X-rays
ALLOWED_MODALITIES = frozenset({"CR", "DX"})


class DicomProblem(Exception):
    """A file that is not ingested; ``skipped`` marks the ones the caller's own filter excluded."""

    def __init__(self, reason: str, skipped: bool = False) -> None:
        super().__init__(reason)
        self.reason, self.skipped = reason, skipped


@dataclass(frozen=True, slots=True)
class DicomHeader:
    sop_uid: str
    study_uid: str | None
    modality: str
    view_position: str | None
    photometric: str | None
    rows: int | None
    columns: int | None
    bits_stored: int | None
    transfer_syntax: str | None
    body_part: str | None

    def meta(self) -> dict[str, Any]:
        """Technical metadata for Sample.meta (no patient fields: nothing identifying leaves the file)."""
        return {
            "modality": self.modality,
            "view_position": self.view_position,
            "photometric_interpretation": self.photometric,
            "rows": self.rows,
            "columns": self.columns,
            "bits_stored": self.bits_stored,
            "transfer_syntax": self.transfer_syntax,
            "body_part": self.body_part,
        }


@dataclass(frozen=True, slots=True)
class ScanFile:
    uri: str
    sha256: str
    header: DicomHeader


@dataclass(frozen=True, slots=True)
class ScanIssue:
    path: str
    reason: str
    external_id: str | None = None


@dataclass
class ScanResult:
    files: list[ScanFile] = field(default_factory=list)
    problems: list[ScanIssue] = field(default_factory=list)
    skipped: list[ScanIssue] = field(default_factory=list)
    seen: int = 0


def _str(ds: Dataset, keyword: str) -> str | None:
    value = ds.get(keyword)
    text = str(value).strip() if value is not None else ""
    return text or None


def _int(ds: Dataset, keyword: str) -> int | None:
    value = ds.get(keyword)
    return int(value) if value not in (None, "") else None


def header_of(ds: Dataset) -> DicomHeader:
    sop_uid = _str(ds, "SOPInstanceUID")
    if sop_uid is None:
        raise DicomProblem("missing SOPInstanceUID")
    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    return DicomHeader(
        sop_uid=sop_uid,
        study_uid=_str(ds, "StudyInstanceUID"),
        modality=(_str(ds, "Modality") or "").upper(),
        view_position=(_str(ds, "ViewPosition") or "").upper() or None,
        photometric=_str(ds, "PhotometricInterpretation"),
        rows=_int(ds, "Rows"),
        columns=_int(ds, "Columns"),
        bits_stored=_int(ds, "BitsStored"),
        transfer_syntax=str(syntax) if syntax else None,
        body_part=_str(ds, "BodyPartExamined"),
    )


def check_pixels(fp: BinaryIO) -> Dataset:
    """Parse the whole file and decode its pixels; a truncated or undecodable image raises DicomProblem.

    Compressed syntaxes (JPEG 2000 through pylibjpeg-openjpeg, ...) are decoded for real, and for
    native ones pydicom checks the pixel data length, so both kinds of damage are caught here.
    """
    try:
        ds = dcmread(fp)
        ds.pixel_array  # noqa: B018 - decoding is the check
    except Exception as exc:  # pydicom and the decoder plugins raise many types; all mean "unreadable"
        raise DicomProblem(f"pixel data does not decode: {type(exc).__name__}: {exc}") from exc
    return ds


def to_uint8(ds: Dataset) -> np.ndarray:
    """Display pixels for a grey-scale radiograph: modality LUT, VOI LUT / window, MONOCHROME1 inverted."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    pixels = ds.pixel_array
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        pixels = pixels[0]
    values = apply_voi_lut(apply_modality_lut(pixels, ds), ds).astype(np.float64)
    lo, hi = float(values.min()), float(values.max())
    scaled = (values - lo) / (hi - lo) if hi > lo else np.zeros_like(values)
    if ds.get("PhotometricInterpretation") == "MONOCHROME1":  # 0 is white in MONOCHROME1
        scaled = 1.0 - scaled
    return np.rint(scaled * 255.0).astype(np.uint8)


def inspect_file(
    real_root: Path, uri: str, views: Collection[str] | None, limits: PathLimits = PathLimits()
) -> ScanFile:
    """Header first (cheap) for the filters, then the whole file for its hash and a decode check.

    The file is opened here and handed to pydicom as a stream, so no message can carry its server path.
    """
    _, real = resolve_inside(real_root, uri, "file", limits)
    try:
        with real.open("rb") as fp:
            ds = dcmread(fp, stop_before_pixels=True)
            header = header_of(ds)
            if header.modality not in ALLOWED_MODALITIES:
                raise DicomProblem(f"wrong modality: {header.modality or 'missing'}")
            if views is not None and header.view_position not in views:
                shown = header.view_position or "missing"
                raise DicomProblem(f"view position {shown} not in {sorted(views)}", skipped=True)
            fp.seek(0)
            data = fp.read()
    except DicomProblem:
        raise
    except OSError as exc:
        raise DicomProblem(f"unreadable file: {exc.strerror or type(exc).__name__}") from exc
    except InvalidDicomError as exc:
        raise DicomProblem("not a DICOM file") from exc
    except Exception as exc:  # pydicom raises many types for a damaged header; all mean "unreadable"
        raise DicomProblem(f"unreadable DICOM header: {type(exc).__name__}: {exc}") from exc
    check_pixels(io.BytesIO(data))
    return ScanFile(uri=uri, sha256=hashlib.sha256(data).hexdigest(), header=header)


def scan_folder(
    root: Path,
    folder: str = ".",
    view_positions: Iterable[str] | None = None,
    progress: Callable[[int, int], None] | None = None,
    limits: PathLimits = PathLimits(),
) -> ScanResult:
    """Every file under ``folder`` (relative to ``root``), in sorted order; no file is ever fatal.

    The tree is listed first (cheap) so ``progress(done, total)`` can report against a known total while the
    files are read and decoded (the slow part).
    """
    real_root = Path(os.path.realpath(root))
    _, start = resolve_inside(real_root, folder, "folder", limits)
    if not os.path.isdir(start):
        raise PathRejected(f"folder is not a directory: {folder}")
    views = {v.strip().upper() for v in view_positions} if view_positions is not None else None
    result = ScanResult()
    uris: list[str] = []
    for dirpath, dirnames, filenames in os.walk(start, followlinks=False):
        dirnames.sort()
        for name in dirnames:
            # os.walk does not descend into symlinked directories (cycles, escapes): say so.
            if os.path.islink(os.path.join(dirpath, name)):
                rel = os.path.relpath(os.path.join(dirpath, name), real_root)
                result.skipped.append(ScanIssue(rel, "symlinked directory not followed"))
        uris += [Path(os.path.relpath(os.path.join(dirpath, n), real_root)).as_posix() for n in sorted(filenames)]
    for done, uri in enumerate(uris, start=1):
        result.seen += 1
        if Path(uri).name.upper() == "DICOMDIR":
            result.skipped.append(ScanIssue(uri, "DICOMDIR index file"))
        else:
            try:
                result.files.append(inspect_file(real_root, uri, views, limits))
            except PathRejected as exc:
                result.problems.append(ScanIssue(uri, exc.reason))
            except DicomProblem as exc:
                (result.skipped if exc.skipped else result.problems).append(ScanIssue(uri, exc.reason))
        if progress is not None:
            progress(done, len(uris))
    return result


@dataclass(frozen=True, slots=True)
class SidecarEntry:
    report: str
    labels: list[str] | None


@dataclass
class Sidecar:
    """Reports keyed by SOP instance uid and by study uid; a file's own SOP uid wins over its study's."""

    by_sop: dict[str, SidecarEntry] = field(default_factory=dict)
    by_study: dict[str, SidecarEntry] = field(default_factory=dict)

    def lookup(self, header: DicomHeader) -> SidecarEntry | None:
        entry = self.by_sop.get(header.sop_uid)
        if entry is None and header.study_uid is not None:
            entry = self.by_study.get(header.study_uid)
        return entry


def _sidecar_header(header: list[str]) -> str | None:
    if "study_uid" not in header and "sop_uid" not in header:
        return "the header needs a study_uid or a sop_uid column"
    return None


SIDECAR_SUFFIXES = (".csv", ".jsonl", ".ndjson")


def _sidecar_rows(path: Path, limits: TextLimits) -> Iterable[RawRow]:
    try:
        fh = path.open("rb")
    except OSError as exc:
        raise PathRejected(f"reports file unreadable: {exc.strerror or type(exc).__name__}") from exc
    with fh:
        lines = decoded_lines(iter(lambda: fh.read(1 << 16), b""), limits.line_bytes)
        if path.suffix.lower() == ".csv":
            yield from iter_csv(lines, _sidecar_header)
        else:
            yield from iter_jsonl(lines, limits)


def load_sidecar(
    root: Path, rel: str, limits: PathLimits = PathLimits(), text_limits: TextLimits = TextLimits()
) -> Sidecar:
    """Parse a sidecar CSV (``.csv``) or JSONL (``.jsonl``, ``.ndjson``); MalformedBody names the bad line.

    A uid listed twice is a malformed sidecar: which report belongs to the image would be a guess.
    """
    _, real = resolve_inside(root, rel, "reports path", limits)
    if not os.path.isfile(real):
        raise PathRejected(f"reports path is not a file: {rel}")
    if real.suffix.lower() not in SIDECAR_SUFFIXES:
        raise PathRejected(f"reports file must end in one of {', '.join(SIDECAR_SUFFIXES)}: {rel}")
    sidecar, first_line = Sidecar(), dict[tuple[str, str], int]()
    for raw in _sidecar_rows(real, text_limits):
        if raw.error:
            raise MalformedBody(raw.error, raw.line)
        report = raw.fields.get("report") or ""
        if not isinstance(report, str):
            raise MalformedBody("report must be a string", raw.line)
        if (problem := unstorable_text(raw.fields)) is not None:
            raise MalformedBody(f"a field contains {problem}", raw.line)
        try:
            entry = SidecarEntry(report=report, labels=parse_labels(raw.fields.get("labels")))
        except RowRejected as exc:
            raise MalformedBody(exc.reason, raw.line) from exc
        # A row with a SOP uid describes that one image, even when it also names its study.
        kind = "sop_uid" if raw.fields.get("sop_uid") not in (None, "") else "study_uid"
        uid = str(raw.fields.get(kind) or "").strip()
        if not uid:
            raise MalformedBody("row has neither sop_uid nor study_uid", raw.line)
        if (kind, uid) in first_line:
            raise MalformedBody(f"{kind} {uid} listed twice (first on line {first_line[kind, uid]})", raw.line)
        first_line[kind, uid] = raw.line
        (sidecar.by_sop if kind == "sop_uid" else sidecar.by_study)[uid] = entry
    return sidecar

"""What every importer shares: the record it yields, reading the set's tables, CheXpert-style labels, sections."""

from __future__ import annotations

import csv
import gzip
import io
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, cast

from ...limits import PathLimits, TextLimits
from ...schemas.imports import ImportOptions
from ..paths import PathRejected, relative_uri, resolve_inside
from ..rows import MalformedBody, csv_records, decoded_lines

#: the 14 CheXpert labeler observations (MIMIC-CXR's -chexpert.csv, CheXpert's train.csv)
CHEXPERT_LABELS = (
    "Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Enlarged Cardiomediastinum", "Fracture",
    "Lung Lesion", "Lung Opacity", "No Finding", "Pleural Effusion", "Pleural Other", "Pneumonia",
    "Pneumothorax", "Support Devices",
)  # fmt: skip
#: bytes read from a table file at a time
CHUNK_BYTES = 1 << 20

Progress = Callable[[int, int], None]


class LayoutError(Exception):
    """The set is not where or what its published layout says: a file or a column is missing (nothing written)."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


@dataclass
class Record:
    """One image of the set with everything its row says, before the preprocessing options are applied."""

    line: int
    source: str
    external_id: str
    image: str  # relative to the dataset root
    findings: str = ""
    impression: str = ""
    text: str = ""  # the whole report, for sets without sections (or a report whose sections were not found)
    labels: list[str] | None = None  # None: the set has no labels for this image
    uncertain: list[str] = field(default_factory=list)
    view: str | None = None  # as published (PA, AP, LATERAL, Frontal, L, ...)
    frontal: bool | None = None  # None: the layout does not say
    patient_id: str | None = None
    study_id: str | None = None
    split: str | None = None
    synthesize: bool = False  # a label-only set: the report is made from the labels
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Refusal:
    """A row the importer itself cannot read (a missing id, a bad label list): refused with its reason."""

    line: int
    source: str
    external_id: str | None
    reason: str


Item = Record | Refusal


@dataclass
class Source:
    """An importer's rows, and how far through the set it is: ``progress() -> (done, total)``."""

    items: Iterator[Item]
    progress: Callable[[], tuple[int, int]]


@dataclass(frozen=True)
class Context:
    """What an importer is given: the root, the options, the bounds, and where to report progress."""

    root: Path
    options: ImportOptions
    paths: PathLimits = PathLimits()
    text: TextLimits = TextLimits()


def locate(ctx: Context, given: str | None, *published: str, what: str) -> Path:
    """The file or folder ``given`` (relative to the root), else the first of the ``published`` names (glob
    patterns allowed, the last match in name order: the newest release) that exists; LayoutError naming them."""
    if given is not None:
        try:
            return resolve_inside(ctx.root, given, what, ctx.paths)[1]
        except PathRejected as exc:
            raise LayoutError(exc.reason) from exc
    for name in published:
        matches = sorted(ctx.root.glob(name))
        if matches:
            return resolve_inside(ctx.root, str(matches[-1].relative_to(ctx.root)), what, ctx.paths)[1]
    raise LayoutError(f"no {what} under the dataset root (looked for {', '.join(published)})")


def image_folder(ctx: Context, default: str) -> str:
    """The folder of the images, relative to the root ('' for the root itself)."""
    folder = ctx.options.images if ctx.options.images is not None else default
    folder = folder.strip().strip("/")
    if not folder or folder == ".":
        return ""
    try:
        return relative_uri(folder, "images folder", ctx.paths) + "/"
    except PathRejected as exc:
        raise LayoutError(exc.reason) from exc


class _Counted(io.RawIOBase):
    """A file's bytes, counting how many were read (a compressed table's progress is its compressed bytes)."""

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw, self.position = raw, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = self.raw.readinto(buffer)  # type: ignore[attr-defined]
        self.position += n or 0
        return n or 0


@dataclass
class Table:
    """A CSV table of the set (plain or gzip), read row by row: ``progress()`` is ``(bytes read, file size)``."""

    path: Path
    source: str
    header: list[str]
    rows: Iterator[tuple[int, dict[str, str]]]
    counted: _Counted

    def progress(self) -> tuple[int, int]:
        return self.counted.position, self.path.stat().st_size


def open_table(ctx: Context, path: Path, required: Iterable[str]) -> Table:
    """The table's header (every ``required`` column present, else LayoutError) and its rows as
    ``(line, {column: stripped cell})``; a file that is not CSV is MalformedBody."""
    raw = path.open("rb")
    counted = _Counted(raw)
    buffered = io.BufferedReader(counted, CHUNK_BYTES)
    stream = cast(IO[bytes], gzip.GzipFile(fileobj=buffered) if path.name.endswith(".gz") else buffered)
    chunks = iter(lambda: stream.read(CHUNK_BYTES), b"")
    reader = csv.reader(decoded_lines(_gzip_errors(chunks, path.name), ctx.text.line_bytes), strict=True)
    try:
        header = [name.strip() for name in next(reader)]
    except StopIteration:
        raw.close()
        raise LayoutError(f"{path.name} is empty") from None
    except csv.Error as exc:
        raw.close()
        raise MalformedBody(f"{path.name}: invalid CSV header: {exc}", 1) from exc
    missing = [c for c in required if c not in header]
    if missing:
        raw.close()
        raise LayoutError(f"{path.name} has no {', '.join(missing)} column (columns: {', '.join(header[:40])})")
    return Table(path, path.name, header, _rows(reader, header, path.name, raw), counted)


def _gzip_errors(chunks: Iterator[bytes], name: str) -> Iterator[bytes]:
    try:
        yield from chunks
    except (OSError, EOFError) as exc:  # gzip.BadGzipFile is an OSError
        raise MalformedBody(f"{name}: not a readable gzip file ({exc})") from exc


def _rows(reader: Any, header: list[str], name: str, raw: IO[bytes]) -> Iterator[tuple[int, dict[str, str]]]:
    with raw:
        for start, cells in csv_records(reader, name):
            row = {column: value.strip() for column, value in zip(header, cells, strict=False)}
            if len(cells) != len(header):
                row["__error__"] = f"row has {len(cells)} fields but the header has {len(header)}"
            yield start, row


def read_lookup(ctx: Context, path: Path, key: str | tuple[str, ...], required: Iterable[str]) -> dict[Any, dict]:
    """A whole (small) table keyed by one column or a tuple of columns: the split and label tables."""
    table = open_table(ctx, path, [*([key] if isinstance(key, str) else key), *required])
    out: dict[Any, dict[str, str]] = {}
    for _, row in table.rows:
        out[row.get(key, "") if isinstance(key, str) else tuple(row.get(k, "") for k in key)] = row
    return out


def chexpert_labels(row: dict[str, str], columns: Iterable[str]) -> tuple[list[str], list[str]]:
    """``(positive, uncertain)`` labels of a CheXpert-style row: 1.0 positive, -1.0 uncertain, 0.0 or blank not.

    A blank cell means the report does not mention the finding; only 1 and -1 name one."""
    positive, uncertain = [], []
    for name in columns:
        value = row.get(name, "").strip()
        try:
            number = float(value) if value else 0.0
        except ValueError:
            continue
        if number == 1.0:
            positive.append(name)
        elif number == -1.0:
            uncertain.append(name)
    return positive, uncertain


#: a MIMIC-CXR style section header: a capitalised line start followed by a colon ("FINDINGS:", "IMPRESSION:")
_SECTION = re.compile(r"(?:^|\n)\s*([A-Z][A-Z ()/,&-]{2,40}):", re.MULTILINE)
_SECTION_NAMES = {
    "FINDINGS": "findings", "FINDING": "findings", "IMPRESSION": "impression", "IMPRESSIONS": "impression",
    "CONCLUSION": "impression", "CONCLUSIONS": "impression", "SUMMARY": "impression",
}  # fmt: skip


def report_sections(text: str) -> tuple[str, str]:
    """``(findings, impression)`` of a free-text report with capitalised section headers (the last of each)."""
    found = {"findings": "", "impression": ""}
    matches = list(_SECTION.finditer(text))
    for i, match in enumerate(matches):
        name = _SECTION_NAMES.get(match.group(1).strip())
        if name is None:
            continue
        end = matches[i + 1].start() if i + 1 < len(matches) else len(text)
        body = text[match.end() : end].strip()
        if body:
            found[name] = body
    return found["findings"], found["impression"]


def study_path(subject: str, study: str) -> str:
    """MIMIC-CXR's folder of a study under ``files/``: ``p10/p10000032/s50414267``."""
    return f"p{subject[:2]}/p{subject}/s{study}"

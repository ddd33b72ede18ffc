"""Streaming CSV / JSONL row parsing and per-row field validation (pure: no I/O beyond the iterables given)."""

from __future__ import annotations

import codecs
import csv
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

#: the columns / keys with a meaning of their own; everything else goes to ``meta``
KNOWN_FIELDS = ("external_id", "image", "report", "labels")
EXTERNAL_ID_MAX = 500  # Sample.external_id is VARCHAR(500)
LABEL_SEPARATOR = "|"


class MalformedBody(Exception):
    """The body itself cannot be read (bad header, bad JSON, bad encoding): the whole request is refused."""

    def __init__(self, detail: str, line: int | None = None) -> None:
        super().__init__(f"line {line}: {detail}" if line is not None else detail)
        self.line = line


class RowRejected(Exception):
    """This row is refused; the rest of the upload goes on."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class RawRow:
    """One record as read: ``line`` is where it starts in the body (1-based; a CSV header is line 1)."""

    line: int
    fields: dict[str, Any]
    error: str | None = None  # a record-level problem found while reading (e.g. wrong field count)


@dataclass(frozen=True, slots=True)
class RowInput:
    """The typed fields of a row, before report hygiene and image checks."""

    line: int
    external_id: str
    image: str
    report: str
    labels: list[str] | None  # None: the row says nothing about labels (a label list may be explicitly empty)
    meta: dict[str, Any] = field(default_factory=dict)


def decoded_lines(chunks: Iterable[bytes]) -> Iterator[str]:
    """UTF-8 text lines (with their line endings) from byte chunks, without holding more than one line.

    Splitting on ``\\n`` bytes is safe in UTF-8 (it never occurs inside a multi-byte sequence), so a
    decoding error can be pinned to its line. A leading byte-order mark (Excel's CSV export) is dropped.
    """
    pending = b""
    line_no = 0
    for chunk in chunks:
        pending += chunk
        *complete, pending = pending.split(b"\n")
        for raw in complete:
            line_no += 1
            yield _decode(raw + b"\n", line_no)
    if pending:
        yield _decode(pending, line_no + 1)


def _decode(raw: bytes, line_no: int) -> str:
    if line_no == 1 and raw.startswith(codecs.BOM_UTF8):
        raw = raw[len(codecs.BOM_UTF8) :]
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MalformedBody(f"not valid UTF-8 ({exc.reason} at byte {exc.start})", line_no) from exc


HeaderCheck = Callable[[list[str]], str | None]


def require_columns(*names: str) -> HeaderCheck:
    def check(header: list[str]) -> str | None:
        missing = [n for n in names if n not in header]
        return f"the header has no {', '.join(missing)} column" if missing else None

    return check


SAMPLE_HEADER = require_columns("external_id")


def iter_csv(lines: Iterable[str], check_header: HeaderCheck = SAMPLE_HEADER) -> Iterator[RawRow]:
    """CSV records as dicts of their non-empty cells; ``labels`` becomes a list split on ``|``.

    A record may span lines (quoted newlines), so its line is where it starts. A row whose field count
    differs from the header's is refused on its own: the rest of the file is still well formed.
    """
    reader = csv.reader(lines, strict=True)
    try:
        header = [name.strip() for name in next(reader)]
    except StopIteration:
        raise MalformedBody("the CSV body has no header row", 1) from None
    except csv.Error as exc:
        raise MalformedBody(f"invalid CSV header: {exc}", 1) from exc
    if problem := check_header(header):
        raise MalformedBody(f"invalid CSV header: {problem} (columns: {', '.join(header)})", 1)
    if len(set(header)) != len(header) or "" in header:
        raise MalformedBody("invalid CSV header: empty or repeated column names", 1)
    last_line = reader.line_num
    while True:
        start = last_line + 1
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise MalformedBody(f"invalid CSV: {exc}", start) from exc
        last_line = reader.line_num
        if not cells:  # blank line
            continue
        if len(cells) != len(header):
            yield RawRow(start, {}, f"row has {len(cells)} fields but the header has {len(header)}")
            continue
        fields: dict[str, Any] = {name: value for name, value in zip(header, cells, strict=True) if value.strip()}
        if "labels" in fields:
            fields["labels"] = fields["labels"].split(LABEL_SEPARATOR)
        yield RawRow(start, fields)


def iter_jsonl(lines: Iterable[str]) -> Iterator[RawRow]:
    """One JSON object per line; blank lines are skipped. Anything else is a malformed body."""
    for line_no, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            raise MalformedBody(f"invalid JSON ({exc.msg} at column {exc.colno})", line_no) from exc
        if not isinstance(value, dict):
            raise MalformedBody(f"expected a JSON object, got {type(value).__name__}", line_no)
        yield RawRow(line_no, value)


def _text(fields: dict[str, Any], key: str) -> str:
    value = fields.get(key)
    if value is None:
        return ""
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise RowRejected(f"{key} must be a string")
    return str(value)


def parse_labels(value: Any) -> list[str] | None:
    """Stripped, de-duplicated labels in their given order (order is kept so a re-post is unchanged)."""
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise RowRejected("labels must be a list of strings")
    labels: list[str] = []
    for label in (v.strip() for v in value):
        if label and label not in labels:
            labels.append(label)
    return labels


def _has_nul(value: Any) -> bool:
    # Postgres text and jsonb cannot hold U+0000: refuse the row rather than fail the whole insert.
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_nul(v) for v in value)
    return False


def row_input(raw: RawRow) -> RowInput:
    """The typed fields of one record; raises RowRejected naming the first problem."""
    if raw.error:
        raise RowRejected(raw.error)
    fields = raw.fields
    if _has_nul(fields):
        raise RowRejected("a field contains a NUL character")
    external_id = _text(fields, "external_id").strip()
    if not external_id:
        raise RowRejected("missing external_id")
    if len(external_id) > EXTERNAL_ID_MAX:
        raise RowRejected(f"external_id longer than {EXTERNAL_ID_MAX} characters")
    meta = {k: v for k, v in fields.items() if k not in KNOWN_FIELDS}
    if isinstance(meta.get("meta"), dict):  # JSONL may nest its metadata; flatten one level
        meta.update(meta.pop("meta"))
    return RowInput(
        line=raw.line,
        external_id=external_id,
        image=_text(fields, "image").strip(),
        report=_text(fields, "report"),
        labels=parse_labels(fields.get("labels")),
        meta=meta,
    )


#: accepted Content-Types for a sample upload
MEDIA_TYPES = {
    "text/csv": "csv",
    "application/csv": "csv",
    "application/x-ndjson": "jsonl",
    "application/jsonl": "jsonl",
    "application/jsonlines": "jsonl",
    "application/x-jsonlines": "jsonl",
}


def body_format(content_type: str | None) -> str:
    """``"csv"`` or ``"jsonl"`` from a Content-Type header; ValueError names what is accepted."""
    media, _, params = (content_type or "").partition(";")
    fmt = MEDIA_TYPES.get(media.strip().lower())
    if fmt is None:
        raise ValueError(f"Content-Type {media.strip() or '(none)'!r} is not one of {', '.join(MEDIA_TYPES)}")
    for param in params.split(";"):
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset" and value.strip().strip('"').lower() not in ("utf-8", "utf8", "us-ascii"):
            raise ValueError(f"charset {value.strip()!r} is not supported; send UTF-8")
    return fmt

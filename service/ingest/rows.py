"""Streaming CSV / JSONL row parsing and per-row field validation (pure: no I/O beyond the iterables given)."""

from __future__ import annotations

import codecs
import csv
import json
import math
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, NoReturn

from ..limits import TextLimits

#: the columns / keys with a meaning of their own; everything else goes to ``meta``
KNOWN_FIELDS = ("external_id", "image", "report", "labels", "patient_id", "study_id", "split")
EXTERNAL_ID_MAX = 500  # Sample.external_id is VARCHAR(500)
#: Sample.patient_id / study_id are VARCHAR(128), split VARCHAR(32)
GROUP_ID_MAX, SPLIT_MAX = 128, 32
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
    patient_id: str | None = None
    study_id: str | None = None
    split: str | None = None


def decoded_lines(chunks: Iterable[bytes], line_bytes: int = TextLimits.line_bytes) -> Iterator[str]:
    """UTF-8 text lines (with their line endings) from byte chunks, without holding more than one line.

    Splitting on ``\\n`` bytes is safe in UTF-8 (it never occurs inside a multi-byte sequence), so a
    decoding error can be pinned to its line. A leading byte-order mark (Excel's CSV export) is dropped.
    A line longer than ``line_bytes`` is a malformed body, refused before more of it is held.
    """
    pending = b""
    line_no = 0
    for chunk in chunks:
        pending += chunk
        *complete, pending = pending.split(b"\n")
        for raw in complete:
            line_no += 1
            _check_length(raw, line_bytes, line_no)
            yield _decode(raw + b"\n", line_no)
        _check_length(pending, line_bytes, line_no + 1)
    if pending:
        yield _decode(pending, line_no + 1)


def _check_length(raw: bytes, line_bytes: int, line_no: int) -> None:
    if len(raw) > line_bytes:
        raise MalformedBody(f"line longer than {line_bytes} bytes", line_no)


def _decode(raw: bytes, line_no: int) -> str:
    if line_no == 1 and raw.startswith(codecs.BOM_UTF8):
        raw = raw[len(codecs.BOM_UTF8) :]
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        try:
            # UTF-8-encoded surrogates (CESU-8 / WTF-8 output): decodable text whose rows row_input then refuses
            # one by one, as it does a JSON "\ud800" escape; any other bad byte is a malformed body
            return raw.decode("utf-8", "surrogatepass")
        except UnicodeDecodeError:
            raise MalformedBody(f"not valid UTF-8 ({exc.reason} at byte {exc.start})", line_no) from exc


HeaderCheck = Callable[[list[str]], str | None]


def require_columns(*names: str) -> HeaderCheck:
    def check(header: list[str]) -> str | None:
        missing = [n for n in names if n not in header]
        return f"the header has no {', '.join(missing)} column" if missing else None

    return check


SAMPLE_HEADER = require_columns("external_id")


def csv_records(reader: Any, name: str = "") -> Iterator[tuple[int, list[str]]]:
    """``(line where it starts, cells)`` of each non-blank record after the ones ``reader`` (a ``csv.reader``) has
    read; a syntax error is a malformed body naming its line (and ``name``, the file)."""
    last_line = reader.line_num
    while True:
        start = last_line + 1
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise MalformedBody(f"{name + ': ' if name else ''}invalid CSV: {exc}", start) from exc
        last_line = reader.line_num
        if cells:  # not a blank line
            yield start, cells


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
    for start, cells in csv_records(reader):
        if len(cells) != len(header):
            yield RawRow(start, {}, f"row has {len(cells)} fields but the header has {len(header)}")
            continue
        fields: dict[str, Any] = {name: value for name, value in zip(header, cells, strict=True) if value.strip()}
        if "labels" in fields:
            fields["labels"] = fields["labels"].split(LABEL_SEPARATOR)
        yield RawRow(start, fields)


_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"')
_JSON_BRACKET = re.compile(r"[\[\]{}]")


def json_too_deep(text: str, limit: int) -> bool:
    """Whether arrays and objects in a JSON text nest deeper than ``limit`` (brackets in strings do not count);
    checked before parsing, since Python's parser recurses once per level."""
    depth = 0
    for bracket in _JSON_BRACKET.finditer(_JSON_STRING.sub('""', text)):
        depth += 1 if bracket.group() in "[{" else -1
        if depth > limit:
            return True
    return False


def _refuse_constant(name: str) -> NoReturn:
    raise RowRejected(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise RowRejected(f"number {text[:40]} is out of range")
    return value


def iter_jsonl(lines: Iterable[str], limits: TextLimits = TextLimits()) -> Iterator[RawRow]:
    """One JSON object per line; blank lines are skipped. A line that is not a JSON object is a malformed body;
    one nested deeper than ``limits.json_depth``, or with an integer of more than ``limits.json_int_digits``
    digits, a float out of range or NaN / Infinity, is refused on its own."""

    def bounded_int(text: str) -> int:
        if len(text) - text.startswith("-") > limits.json_int_digits:
            raise RowRejected(f"an integer has more than {limits.json_int_digits} digits")
        return int(text)

    for line_no, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        if json_too_deep(line, limits.json_depth):
            yield RawRow(line_no, {}, f"JSON nested deeper than {limits.json_depth} levels")
            continue
        try:
            value = json.loads(line, parse_int=bounded_int, parse_float=_finite_float, parse_constant=_refuse_constant)
        except RowRejected as exc:
            yield RawRow(line_no, {}, exc.reason)
            continue
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


_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def unstorable_text(value: Any) -> str | None:
    """What makes a string (or any string in a JSON value) unstorable: Postgres text and jsonb hold neither
    U+0000 nor a lone surrogate (which UTF-8 cannot encode); None when there is nothing. The row is refused
    rather than failing the whole insert."""
    if isinstance(value, str):
        found = _UNSTORABLE.search(value)
        if found is None:
            return None
        return "a NUL character" if found.group() == "\x00" else f"a lone surrogate (U+{ord(found.group()):04X})"
    if isinstance(value, dict):
        items: Iterable[Any] = (x for kv in value.items() for x in kv)
    elif isinstance(value, list):
        items = value
    else:
        return None
    return next((problem for item in items if (problem := unstorable_text(item)) is not None), None)


def optional_id(fields: dict[str, Any], key: str, limit: int) -> str | None:
    """A short optional identifier (patient, study, split): stripped, None when absent, refused when too long."""
    value = _text(fields, key).strip()
    if len(value) > limit:
        raise RowRejected(f"{key} longer than {limit} characters")
    return value or None


def row_input(raw: RawRow) -> RowInput:
    """The typed fields of one record; raises RowRejected naming the first problem."""
    if raw.error:
        raise RowRejected(raw.error)
    fields = raw.fields
    if (problem := unstorable_text(fields)) is not None:
        raise RowRejected(f"a field contains {problem}")
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
        patient_id=optional_id(fields, "patient_id", GROUP_ID_MAX),
        study_id=optional_id(fields, "study_id", GROUP_ID_MAX),
        split=optional_id(fields, "split", SPLIT_MAX),
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

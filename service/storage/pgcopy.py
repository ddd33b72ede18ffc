"""PostgreSQL's binary COPY format, built and parsed with numpy record arrays (no Python object per row).

A binary COPY stream is a header, then per row a field count and per field its length and its bytes, then a
trailer. With fixed-width fields a row is one numpy record (``row_layout``): a million rows are encoded with a
few array assignments (``encode_rows``) and decoded with one ``frombuffer`` (the embedding reader), where per-row
``write_row`` calls would run Python code per row: this way the database, not the formatting, bounds the rate.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from sqlalchemy.orm import Session

SIGNATURE = b"PGCOPY\n\xff\r\n\x00"
HEADER = SIGNATURE + b"\x00" * 8  # signature, flags, header-extension length
TRAILER = b"\xff\xff"

#: a column of a binary COPY row: its name in the record, its big-endian numpy type, and (to encode) its values
Column = tuple[str, str, Any]


def row_layout(columns: Sequence[tuple[str, str]]) -> np.dtype:
    """One binary COPY row of fixed-width fields: ``fields`` (the count), then ``l_<name>`` and ``<name>`` each."""
    layout: list[tuple[str, Any]] = [("fields", ">i2")]
    for name, kind in columns:
        layout += [(f"l_{name}", ">i4"), (name, kind)]
    return np.dtype(layout)


def encode_rows(columns: Sequence[Column], count: int) -> bytes:
    """``count`` rows of ``columns`` (values broadcast per column) as one binary COPY payload."""
    rows = np.empty(count, dtype=row_layout([(name, kind) for name, kind, _ in columns]))
    rows["fields"] = len(columns)
    for name, _, values in columns:
        rows[f"l_{name}"] = rows.dtype[name].itemsize
        rows[name] = values
    return HEADER + rows.tobytes() + TRAILER


def strip_header(data: bytes) -> bytes:
    """The rows after a COPY stream's header (its extension area skipped)."""
    if not data.startswith(SIGNATURE):
        raise ValueError("COPY output does not start with the PGCOPY signature")
    extension = int.from_bytes(data[15:19], "big")
    return data[19 + extension :]


def copy_in(session: Session, statement: str, payload: bytes, chunk: int = 8 << 20) -> None:
    """Send a binary payload to ``COPY ... FROM STDIN (FORMAT binary)`` in the session's transaction."""
    raw = session.connection().connection.dbapi_connection
    assert raw is not None
    with raw.cursor() as cur, cur.copy(statement) as copy:  # type: ignore[attr-defined]
        view = memoryview(payload)
        for start in range(0, len(view), chunk):
            copy.write(view[start : start + chunk])


def copy_rows(session: Session, statement: str, types: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """Rows of Python values through psycopg's own binary COPY (for rows with variable-width text)."""
    raw = session.connection().connection.dbapi_connection
    assert raw is not None
    with raw.cursor() as cur, cur.copy(statement) as copy:  # type: ignore[attr-defined]
        copy.set_types(list(types))
        for row in rows:
            copy.write_row(row)

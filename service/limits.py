"""Bounds on what a client may send, in one place: the defaults of the Settings that carry them and the small
value objects handed to the parsers. Every bound is checked before the input it bounds is read or allocated;
docs/ERRORS.md lists each one with its setting, its default and the answer a request over it gets."""

from __future__ import annotations

from dataclasses import dataclass

#: largest value of a Postgres bigint / integer column (ids, steps): a request carrying more is a 422
BIGINT_MAX = 2**63 - 1
INT_MAX = 2**31 - 1
MIB = 1 << 20


@dataclass(frozen=True)
class BodyLimits:
    """Request body sizes: streamed uploads (embeddings, ingest files) and every other (JSON) body."""

    upload_bytes: int = 512 * MIB
    json_bytes: int = 1 * MIB


@dataclass(frozen=True)
class ArrayLimits:
    """Bulk ``.npz`` archives: the inflated size of the members read, and how many members there may be."""

    inflated_bytes: int = 512 * MIB
    npz_members: int = 16


@dataclass(frozen=True)
class PathLimits:
    """PATH_MAX / NAME_MAX style bounds in UTF-8 bytes, checked before a path reaches the filesystem (an over-long
    path would otherwise fail there with ENAMETOOLONG)."""

    path_bytes: int = 4095
    name_bytes: int = 255


@dataclass(frozen=True)
class TextLimits:
    """CSV / JSONL uploads and sidecars: one physical line, and per JSONL line its nesting depth and the digits of
    any integer (Python refuses ints over 4,300 digits, and a deep value breaks its recursion limit)."""

    line_bytes: int = 1 * MIB
    json_depth: int = 32
    json_int_digits: int = 100

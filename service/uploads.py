"""Reading embedding uploads: ``.npy`` (one manifest) and ``.npz`` (bulk), validated before anything is stored.

Nothing is allocated from what a header claims. A ``.npy`` header's dtype, rank and shape are checked against
what is expected and against the bytes that actually follow it before the array is viewed in place; a bulk
``.npz`` is bounded by its zip headers (member count, central directory size, inflated member sizes) and by the
``.npy`` headers inside before any member is inflated. Stored embeddings are float16, so rows are checked after
the float16 cast: finite (|x| <= 65504) and not all zeros.
"""

from __future__ import annotations

import io
import math
import os
import struct
import tokenize
import zipfile
import zlib
from dataclasses import dataclass
from typing import IO

import numpy as np
from numpy.typing import NDArray

from .errors import ApiError
from .limits import ArrayLimits

FLOAT_DTYPES = (np.dtype(np.float16), np.dtype(np.float32))
#: numpy's own bound on an ``.npy`` header (it refuses longer ones as unsafe to parse)
NPY_MAX_HEADER = 10_000
#: bytes of central directory allowed per permitted ``.npz`` member (``np.savez`` writes ~100)
ZIP_ENTRY_BYTES = 4096
#: rows per block of the float16 checks, so a bulk upload is never cast (or compared) whole
CHECK_ROWS = 1 << 14
_FORMATS = {(1, 0): ("<H", np.lib.format.read_array_header_1_0), (2, 0): ("<I", np.lib.format.read_array_header_2_0)}
# what numpy's header parser raises on a bad header (a Python 2 header is re-tokenised before it gives up)
_HEADER_ERRORS = (ValueError, SyntaxError, TypeError, tokenize.TokenError, struct.error)


@dataclass(frozen=True)
class NpyHeader:
    shape: tuple[int, ...]
    dtype: np.dtype
    fortran: bool
    offset: int  # bytes before the data

    @property
    def data_bytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


def npy_header(fp: IO[bytes], code: str, what: str) -> NpyHeader:
    """The header of the ``.npy`` at ``fp``'s position, the stream left at its data; ApiError 400 ``code`` if it
    is not one. The header length is bounded before the header is read."""

    def bad(reason: str) -> ApiError:
        return ApiError(400, code, f"{what} is not a readable .npy array ({reason})")

    magic = fp.read(8)
    if len(magic) < 8 or magic[:6] != b"\x93NUMPY":
        raise bad("no .npy magic string")
    version = (magic[6], magic[7])
    if version not in _FORMATS:
        raise bad(f"unsupported .npy format version {version[0]}.{version[1]}")
    length_format, parse = _FORMATS[version]
    length_bytes = fp.read(struct.calcsize(length_format))
    if len(length_bytes) < struct.calcsize(length_format):
        raise bad("truncated header")
    (length,) = struct.unpack(length_format, length_bytes)
    if length > NPY_MAX_HEADER:
        raise bad(f"header of {length} bytes, over {NPY_MAX_HEADER}")
    text = fp.read(length)
    if len(text) < length:
        raise bad("truncated header")
    try:
        shape, fortran, dtype = parse(io.BytesIO(length_bytes + text))
    except _HEADER_ERRORS as exc:
        raise bad(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from exc
    if any(n < 0 for n in shape):
        raise bad(f"negative dimension in shape {list(shape)}")
    return NpyHeader(tuple(int(n) for n in shape), dtype, bool(fortran), 8 + len(length_bytes) + length)


def _check_header(header: NpyHeader, what: str, dtypes: tuple[np.dtype, ...], rows: int | None) -> None:
    """dtype and rank of an embedding matrix, and its row count when known, from the header alone."""
    if header.dtype not in dtypes:
        raise ApiError(422, "bad_dtype", f"{what} must be float16 or float32, got {header.dtype}")
    if len(header.shape) != 2:
        raise ApiError(422, "bad_shape", f"{what} must be 2-D [rows, width], got shape {list(header.shape)}")
    if rows is not None and header.shape[0] != rows:
        raise ApiError(422, "bad_shape", f"{what} has {header.shape[0]} rows, {rows} were expected")


def _view(data: bytes, header: NpyHeader, offset: int = 0) -> NDArray:
    flat = np.frombuffer(data, dtype=header.dtype, count=math.prod(header.shape), offset=offset)
    return flat.reshape(header.shape, order="F" if header.fortran else "C")


def float16_problems(arr: NDArray) -> tuple[NDArray[np.intp], NDArray[np.intp]]:
    """Rows that are not finite once cast to float16 (NaN, Inf, |x| > 65504), and rows that cast to all zeros
    (|x| below float16's smallest step): storage keeps float16, and neither kind can be normalised there."""
    nonfinite: list[NDArray[np.intp]] = []
    zero: list[NDArray[np.intp]] = []
    empty = np.empty(0, dtype=np.intp)
    if arr.dtype == np.float16 and arr.ndim == 2 and arr.flags.c_contiguous:
        # On the bits, without a float copy: a row's largest magnitude (sign bit cleared) is Inf/NaN from 0x7C00
        # up, and 0 only for an all-zero row. One AND and one reduction per block, ~5x less than isfinite + any.
        bits = arr.view(np.uint16)
        for start in range(0, len(arr), CHECK_ROWS):
            magnitude = (bits[start : start + CHECK_ROWS] & np.uint16(0x7FFF)).max(axis=1)
            nonfinite.append(start + np.flatnonzero(magnitude >= 0x7C00))
            zero.append(start + np.flatnonzero(magnitude == 0))
        return np.concatenate(nonfinite or [empty]), np.concatenate(zero or [empty])
    for start in range(0, len(arr), CHECK_ROWS):
        with np.errstate(over="ignore", invalid="ignore"):
            block = np.asarray(arr[start : start + CHECK_ROWS]).astype(np.float16, copy=False)
        finite = np.isfinite(block).all(axis=1)
        nonfinite.append(start + np.flatnonzero(~finite))
        zero.append(start + np.flatnonzero(finite & ~(block != 0).any(axis=1)))
    return np.concatenate(nonfinite or [empty]), np.concatenate(zero or [empty])


def check_embeddings(arr: NDArray, rows: int | None, width: int | None, what: str) -> NDArray:
    """A ``[rows, width]`` float16/float32 matrix whose float16 cast is finite with no zero rows, or a 422 naming
    the problem (and the offending rows)."""
    if arr.dtype not in FLOAT_DTYPES:
        raise ApiError(422, "bad_dtype", f"{what} must be float16 or float32, got {arr.dtype}")
    if arr.ndim != 2:
        raise ApiError(422, "bad_shape", f"{what} must be 2-D [rows, width], got shape {list(arr.shape)}")
    if rows is not None and arr.shape[0] != rows:
        raise ApiError(422, "bad_shape", f"{what} has {arr.shape[0]} rows, the manifest has {rows} samples")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ApiError(422, "bad_shape", f"{what} is empty: shape {list(arr.shape)}")
    if width is not None and arr.shape[1] != width:
        raise ApiError(422, "bad_width", f"{what} has width {arr.shape[1]}, this run's embeddings have width {width}")
    nonfinite, zero = float16_problems(arr)
    if len(nonfinite):
        bad = nonfinite.tolist()
        raise ApiError(
            422,
            "non_finite",
            f"{what} rows {bad[:10]} are not finite as float16 (NaN, Inf, or |x| > 65504; embeddings are stored "
            "as float16)",
            rows=bad[:100],
        )
    if len(zero):
        bad = zero.tolist()
        raise ApiError(
            422,
            "zero_rows",
            f"{what} rows {bad[:10]} are all zeros as float16 (|x| < 6e-8 rounds to 0) and cannot be normalised",
            rows=bad[:100],
        )
    return arr


def read_npy(body: bytes) -> NDArray:
    """The ``.npy`` in ``body``, viewed in place once its header agrees with the bytes that follow it."""
    if body[:4] == b"PK\x03\x04":
        raise ApiError(400, "bad_npy", "body is an .npz archive; post a single .npy array")
    header = npy_header(io.BytesIO(body), "bad_npy", "body")
    _check_header(header, "embeddings", FLOAT_DTYPES, None)
    held = len(body) - header.offset
    if header.data_bytes != held:
        raise ApiError(
            400,
            "bad_npy",
            f"the .npy header declares shape {list(header.shape)} ({header.data_bytes} bytes of data) but the body "
            f"holds {held} bytes after it",
        )
    return _view(body, header, header.offset)


# the end-of-central-directory records zipfile reads (and the zip64 one that overrides the first when present)
_EOCD = struct.Struct("<4s4H2LH")
_EOCD64_LOCATOR_SIZE = 20
_EOCD64 = struct.Struct("<4sQ2H2L4Q")


def central_directory(file: IO[bytes]) -> tuple[int, int] | None:
    """``(entries, bytes)`` of an archive's central directory as ``zipfile`` will find them (None: no end record),
    read from the end records alone: ``zipfile`` parses the whole directory into memory when it opens a file."""
    file.seek(0, os.SEEK_END)
    size = file.tell()
    tail_length = min(size, _EOCD.size + 0xFFFF)  # the record, then a comment of up to 64 KiB
    file.seek(size - tail_length)
    tail = file.read(tail_length)
    at = len(tail) - _EOCD.size
    if not (at >= 0 and tail[at : at + 4] == b"PK\x05\x06" and tail[-2:] == b"\0\0"):
        at = tail.rfind(b"PK\x05\x06")
        if at < 0 or at + _EOCD.size > len(tail):
            return None
    fields = _EOCD.unpack_from(tail, at)
    entries, directory = fields[4], fields[5]
    end = size - tail_length + at
    if end >= _EOCD64_LOCATOR_SIZE + _EOCD64.size:
        file.seek(end - _EOCD64_LOCATOR_SIZE - _EOCD64.size)
        record = file.read(_EOCD64.size + 4)
        if record[_EOCD64.size :] == b"PK\x06\x07" and record[:4] == b"PK\x06\x06":
            fields64 = _EOCD64.unpack_from(record)
            entries, directory = max(entries, fields64[7]), max(directory, fields64[8])
    return entries, directory


# what zipfile and its decompressors raise on a damaged archive (NotImplementedError: a zip feature or version it
# does not read; the compression method of the two members read is checked beforehand)
_ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, struct.error, NotImplementedError)
_ZIP_METHODS = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED)


def _member(archive: zipfile.ZipFile, name: str) -> zipfile.ZipInfo:
    info = archive.getinfo(name)
    if info.compress_type not in _ZIP_METHODS:
        raise ApiError(
            400, "bad_npz", f"{name}: compression method {info.compress_type} (use np.savez or savez_compressed)"
        )
    if info.flag_bits & 0x1:
        raise ApiError(400, "bad_npz", f"{name} is encrypted")
    return info


def _read_member(stream: IO[bytes], header: NpyHeader, info: zipfile.ZipInfo) -> NDArray:
    if header.offset + header.data_bytes != info.file_size:
        raise ApiError(
            400,
            "bad_npz",
            f"{info.filename}: the .npy header declares shape {list(header.shape)} ({header.data_bytes} bytes of "
            f"data) but the member inflates to {info.file_size - header.offset} bytes after it",
        )
    data = stream.read(header.data_bytes)  # zipfile stops at the declared size and checks the CRC there
    if len(data) != header.data_bytes:
        raise ApiError(400, "bad_npz", f"{info.filename} is truncated")
    return _view(data, header)


#: the keys a bulk archive may carry its rows' samples by: the service's ids, or the dataset's own external ids
BULK_KEYS = ("sample_id", "external_id")
#: characters of an external id (Sample.external_id is VARCHAR(500))
EXTERNAL_ID_CHARS = 500


@dataclass(frozen=True)
class BulkArrays:
    """A bulk archive's rows: ``keys`` are int64 sample ids (``key == "sample_id"``) or external ids (``str``)."""

    key: str
    keys: NDArray
    embedding: NDArray


def _check_keys_header(key: str, header: NpyHeader) -> None:
    if len(header.shape) != 1:
        raise ApiError(422, "bad_ids", f"{key} must be a 1-D array, got shape {list(header.shape)}")
    if key == "sample_id" and header.dtype.kind not in "iu":
        raise ApiError(
            422, "bad_ids", f"sample_id must be a 1-D integer array, got {header.dtype} {list(header.shape)}"
        )
    if key == "external_id" and (header.dtype.kind != "U" or header.dtype.itemsize > 4 * EXTERNAL_ID_CHARS):
        raise ApiError(
            422,
            "bad_ids",
            f"external_id must be a 1-D unicode string array of at most {EXTERNAL_ID_CHARS} characters "
            f"(numpy dtype <U{EXTERNAL_ID_CHARS} or narrower), got {header.dtype}",
        )


def read_bulk(file: IO[bytes], limits: ArrayLimits) -> BulkArrays:
    """``sample_id`` (int64) or ``external_id`` (strings), unique, and ``embedding`` ``[n, D]`` from a bulk
    archive, bounded by ``limits``."""
    try:
        directory = central_directory(file)
        if directory is None:
            raise ApiError(400, "bad_npz", "body is not a readable .npz archive (no zip end record)")
        entries, size = directory
        if entries > limits.npz_members or size > limits.npz_members * ZIP_ENTRY_BYTES:
            raise ApiError(
                413,
                "too_many_members",
                f"the archive lists {entries} members in {size} bytes of directory; at most {limits.npz_members} "
                "are accepted (sample_id or external_id, and embedding are needed)",
                limit=limits.npz_members,
            )
        file.seek(0)
        with zipfile.ZipFile(file) as archive:
            names = set(archive.namelist())
            keys = [k for k in BULK_KEYS if f"{k}.npy" in names]
            if len(keys) != 1 or "embedding.npy" not in names:
                found = sorted(n.removesuffix(".npy") for n in names)
                needs = "one of sample_id or external_id" if len(keys) > 1 else "sample_id (or external_id)"
                raise ApiError(422, "missing_arrays", f"the .npz needs {needs} and embedding, found {found}")
            key = keys[0]
            ids_info, emb_info = _member(archive, f"{key}.npy"), _member(archive, "embedding.npy")
            inflated = ids_info.file_size + emb_info.file_size
            if inflated > limits.inflated_bytes:
                raise ApiError(
                    413,
                    "inflated_too_large",
                    f"{key} and embedding inflate to {inflated} bytes, over the limit of {limits.inflated_bytes}",
                    limit=limits.inflated_bytes,
                )
            with archive.open(ids_info) as ids_stream, archive.open(emb_info) as emb_stream:
                ids_header = npy_header(ids_stream, "bad_npz", key)
                _check_keys_header(key, ids_header)
                emb_header = npy_header(emb_stream, "bad_npz", "embedding")
                _check_header(emb_header, "embedding", FLOAT_DTYPES, ids_header.shape[0])
                ids = _read_member(ids_stream, ids_header, ids_info)
                emb = _read_member(emb_stream, emb_header, emb_info)
    except _ZIP_ERRORS as exc:
        raise ApiError(400, "bad_npz", f"body is not a readable .npz archive ({exc})") from exc
    if ids.dtype.kind == "u" and ids.dtype.itemsize == 8 and len(ids) and int(ids.max()) > np.iinfo(np.int64).max:
        raise ApiError(422, "bad_ids", "sample ids beyond the int64 range")
    if key == "external_id":
        ids = np.char.strip(ids)
        if len(ids) and (np.char.str_len(ids) == 0).any():
            raise ApiError(422, "bad_ids", "empty external ids")
    uniq, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        raise ApiError(422, "duplicate_ids", f"duplicate {key}s {uniq[counts > 1][:10].tolist()}")
    check_embeddings(emb, len(ids), None, "embedding")
    return BulkArrays(key, ids.astype(np.int64) if key == "sample_id" else ids, emb)


def read_npz(file: IO[bytes], limits: ArrayLimits) -> tuple[NDArray, NDArray]:
    """``sample_id`` (int64, unique) and ``embedding`` ``[n, D]`` from a bulk archive keyed by sample id."""
    bulk = read_bulk(file, limits)
    if bulk.key != "sample_id":
        raise ApiError(422, "missing_arrays", "the .npz needs sample_id and embedding, found external_id")
    return bulk.keys, bulk.embedding

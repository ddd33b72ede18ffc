"""Fuzzing the parsers of client bytes: any input is a valid parse or the project's own refusal (``ApiError``,
``MalformedBody``, ``RowRejected``), never another exception. Inputs are random bytes and random mutations
(overwritten, inserted and cut bytes) of valid bodies, so the fuzzing reaches past the first magic-number check."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.arrays import check_embeddings, read_npy, read_npz
from service.errors import ApiError
from service.ingest import parse_body
from service.ingest.paths import PathRejected, resolve_inside
from service.ingest.rows import MalformedBody, RowRejected, row_input, unstorable_text
from service.limits import ArrayLimits, PathLimits, TextLimits
from tests.hostile import deflated_zeros, npy, npy_header, stored, zip_archive

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
#: numpy parses a header with ast.literal_eval: fuzzed headers make Python warn about their escapes and numpy
#: about Python 2 headers on the way to the refusal
ESCAPE_WARNINGS = pytest.mark.filterwarnings("ignore:invalid escape sequence:DeprecationWarning")
PY2_HEADER_WARNINGS = pytest.mark.filterwarnings("ignore:.*created on Python 2:UserWarning")
ARRAYS = ArrayLimits(inflated_bytes=1 << 20, npz_members=8)
TEXT = TextLimits(line_bytes=2048, json_depth=8, json_int_digits=30)
PATHS = PathLimits(path_bytes=200, name_bytes=40)


def npz(**arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def npz_compressed(**arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


NPY_SEEDS = [
    npy(np.ones((3, 4), np.float16)),
    npy(np.asfortranarray(np.arange(12, dtype=np.float32).reshape(3, 4))),
    npy_header((2**40, 64)) + bytes(64),
    npy_header((2, 4), version=(2, 0)) + bytes(16),
]
NPZ_SEEDS = [
    npz(sample_id=np.arange(1, 4), embedding=np.ones((3, 4), np.float32)),
    npz_compressed(sample_id=np.arange(1, 4), embedding=np.ones((3, 4), np.float16)),
    zip_archive(
        [stored("sample_id.npy", npy(np.arange(1, 3))), deflated_zeros("embedding.npy", b"", 1 << 16, 1 << 16)]
    ),
]
CSV_SEEDS = [
    b'external_id,image,report,labels,site\ns1,img/a.png,clear lungs,A|B,x\ns2,img/b.png,"multi\nline, quoted",,y\n',
    "\ufeffexternal_id,image\r\ns3,d\u00e9j\u00e0/vu.png\r\n".encode(),
]
JSONL_SEEDS = [
    b'{"external_id": "s1", "image": "img/a.png", "report": "ok", "labels": ["A"], "meta": {"a": [1, 2.5, null]}}\n'
    b'{"external_id": 12, "image": "x/y.png", "report": "caf\\u00e9 \\ud83d\\ude00", "n": -3e5}\n',
    b'{"external_id": "s2", "meta": {"b": {"c": {"d": [[[true]]]}}}}\n\n',
]


@st.composite
def mutated(draw: st.DrawFn, seeds: list[bytes]) -> bytes:
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 6))):
        at = draw(st.integers(0, len(data)))
        kind = draw(st.sampled_from(["set", "insert", "cut", "truncate"]))
        if kind == "set" and at < len(data):
            data[at] = draw(st.integers(0, 255))
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif kind == "cut":
            del data[at : at + draw(st.integers(1, 16))]
        else:
            del data[at:]
    return bytes(data)


def inputs(seeds: list[bytes]) -> st.SearchStrategy[bytes]:
    return st.one_of(st.binary(max_size=600), mutated(seeds))


@ESCAPE_WARNINGS
@PY2_HEADER_WARNINGS
@FUZZ
@given(inputs(NPY_SEEDS))
def test_npy_bytes_parse_or_are_refused(data: bytes) -> None:
    try:
        arr = read_npy(data)
    except ApiError as exc:
        assert 400 <= exc.status < 500
        return
    assert arr.nbytes <= len(data)  # a view of the body: nothing allocated from what the header claims
    try:
        check_embeddings(arr, None, None, "embeddings")
    except ApiError as exc:
        assert exc.status == 422


@ESCAPE_WARNINGS
@PY2_HEADER_WARNINGS
@FUZZ
@given(inputs(NPZ_SEEDS))
def test_npz_bytes_parse_or_are_refused(data: bytes) -> None:
    try:
        ids, emb = read_npz(io.BytesIO(data), ARRAYS)
    except ApiError as exc:
        assert 400 <= exc.status < 500
        return
    assert ids.dtype == np.int64 and emb.ndim == 2 and len(ids) == len(emb)
    assert ids.nbytes + emb.nbytes <= ARRAYS.inflated_bytes


def parse_rows(data: bytes, fmt: str, chunk: int, root: Path) -> None:
    """Every row of the body through the row checks and the path checks, as an upload does before any I/O."""
    chunks = (data[i : i + chunk] for i in range(0, len(data), chunk))
    try:
        for raw in parse_body(chunks, fmt, TEXT):
            try:
                row = row_input(raw)
                resolve_inside(root, row.image, "image path", PATHS)
            except RowRejected:
                continue
            # what is accepted can be stored: no NUL or lone surrogate, JSON without NaN/Infinity, bounded ids
            assert unstorable_text([row.external_id, row.image, row.report, row.labels, row.meta]) is None
            json.dumps(row.meta, allow_nan=False)
            assert 0 < len(row.external_id) <= 500
    except MalformedBody:
        pass


@FUZZ
@given(inputs(CSV_SEEDS), st.integers(1, 64))
def test_csv_bytes_parse_or_are_refused(tmp_path_factory, data: bytes, chunk: int) -> None:
    parse_rows(data, "csv", chunk, tmp_path_factory.getbasetemp())


@FUZZ
@given(inputs(JSONL_SEEDS), st.integers(1, 64))
def test_jsonl_bytes_parse_or_are_refused(tmp_path_factory, data: bytes, chunk: int) -> None:
    parse_rows(data, "jsonl", chunk, tmp_path_factory.getbasetemp())


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=40,
)


@FUZZ
@given(st.dictionaries(st.sampled_from(["external_id", "image", "report", "labels", "meta", "x"]), JSON_VALUES))
def test_jsonl_objects_parse_or_are_refused(tmp_path_factory, row: dict) -> None:
    """Structured rows (deep nesting, huge ints, NaN / Infinity, surrogates in any string) through the same path."""
    line = json.dumps(row) + "\n"
    parse_rows(line.encode("utf-8", "surrogatepass"), "jsonl", 7, tmp_path_factory.getbasetemp())


@pytest.mark.parametrize(
    ("rel", "reason"), [("a" * 100, "component of 100 bytes"), ("/".join(["b" * 30] * 7), "over the limit of 200")]
)
def test_paths_over_the_limits_are_refused_before_the_filesystem(tmp_path: Path, rel: str, reason: str) -> None:
    with pytest.raises(PathRejected, match=reason):
        resolve_inside(tmp_path, rel, "image path", PATHS)

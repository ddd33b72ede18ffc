"""The export formats: each a writer yielding the file's bytes as they are made (a large export streams)."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..ingest.paths import PathRejected, resolve_inside
from ..schemas.admin import ExportFormat
from ..stats import EXPORT_COLUMNS
from .source import ArraySubset, ExportSource

#: what a writer reads: a run's subset, or one curated from a file (jsonl and csv)
Subset = ExportSource | ArraySubset

#: rows per parquet row group, and per chunk of text formats
BATCH_ROWS = 10_000
#: samples per webdataset shard
SHARD_SAMPLES = 1000
#: DataComp's subset array: a uid's 128 bits as two unsigned 64-bit integers, sorted
UID_DTYPE = np.dtype("u8,u8")
#: image suffixes and the webdataset extension their bytes are stored under
IMAGE_EXTENSIONS = {".png": "png", ".jpg": "jpg", ".jpeg": "jpg", ".dcm": "dcm"}
PROVENANCE_KEY = b"chexcurate.provenance"


def _line(provenance: dict[str, Any]) -> str:
    return json.dumps({"provenance": provenance}, separators=(",", ":"))


def jsonl(source: Subset) -> Iterator[bytes]:
    """The provenance as the first record, then one record per kept sample (the export columns)."""
    yield (_line(source.provenance) + "\n").encode()
    for batch in _batches(source.rows()):
        yield "".join(
            json.dumps({c: row[c] for c in EXPORT_COLUMNS}, separators=(",", ":")) + "\n" for row in batch
        ).encode()


def csv_rows(source: Subset) -> Iterator[bytes]:
    """The provenance as a ``#`` comment line (``pandas.read_csv(f, comment="#")`` skips it), the header, the rows."""
    yield ("# " + _line(source.provenance) + "\n" + ",".join(EXPORT_COLUMNS) + "\r\n").encode()
    for batch in _batches(source.rows()):
        buf = io.StringIO()
        csv.writer(buf).writerows([row[c] for c in EXPORT_COLUMNS] for row in batch)
        yield buf.getvalue().encode()


def openclip_csv(source: ExportSource) -> Iterator[bytes]:
    """open_clip's CSV defaults: tab separated, ``filepath`` (the image's path on this server) and ``title`` (the
    report). Samples without an image (a text-only dataset) have no line. No comment line: open_clip's reader
    would take it for the header."""
    root = source.root
    yield b"filepath\ttitle\n"
    for batch in _batches(source.rows()):
        buf = io.StringIO()
        writer = csv.writer(buf, delimiter="\t", lineterminator="\n")
        writer.writerows([str(root / row["image_uri"]), row["report"]] for row in batch if row["image_uri"])
        yield buf.getvalue().encode()


def parquet(source: ExportSource) -> Iterator[bytes]:
    """One row per kept sample (uid, ids, image path, report, labels, patient, study, split, band, ...), row groups
    of ``BATCH_ROWS``; the provenance in the schema metadata (``chexcurate.provenance``)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema(
        [
            ("sample_id", pa.int64()),
            ("uid", pa.string()),
            ("external_id", pa.string()),
            ("image_uri", pa.string()),
            ("report", pa.string()),
            ("report_synthetic", pa.bool_()),
            ("labels", pa.list_(pa.string())),
            ("patient_id", pa.string()),
            ("study_id", pa.string()),
            ("split", pa.string()),
            ("band", pa.string()),
            ("prototype", pa.int32()),
            ("distance", pa.float32()),
            ("epoch", pa.int32()),
            ("step", pa.int32()),
        ],  # fmt: skip
        metadata={PROVENANCE_KEY: json.dumps(source.provenance).encode()},
    )
    drain = Drain()
    with pq.ParquetWriter(drain, schema) as writer:
        yield drain.take()
        for batch in _batches(source.rows()):
            writer.write_table(pa.Table.from_pylist(batch, schema=schema))
            yield drain.take()
    yield drain.take()


def ids(source: ExportSource) -> Iterator[bytes]:
    """DataComp's subset file: the kept samples' uids as ``numpy.dtype("u8,u8")`` pairs, sorted, as ``.npy``."""
    uids = np.array([(int(r["uid"][:16], 16), int(r["uid"][16:], 16)) for r in source.rows()], dtype=UID_DTYPE)
    uids.sort()
    buf = io.BytesIO()
    np.save(buf, uids, allow_pickle=False)
    yield buf.getvalue()


def chexficient(source: ExportSource) -> Iterator[bytes]:
    """The authors' ``subset.json``: one JSON integer per line, each kept sample's index into the training set's
    full list (here the run's pool in sample-id order; sorted, where the authors write a set's order)."""
    pool = source.pool()
    kept = np.fromiter((r["sample_id"] for r in source.rows()), dtype=np.int64)
    position = np.searchsorted(pool, kept)
    inside = (position < len(pool)) & (pool[np.minimum(position, len(pool) - 1)] == kept) if len(pool) else kept < 0
    for start in range(0, int(inside.sum()), BATCH_ROWS):
        yield "".join(f"{int(i)}\n" for i in position[inside][start : start + BATCH_ROWS]).encode()


def webdataset_sample(row: dict[str, Any], root: Path) -> dict[str, Any] | None:
    """One webdataset sample: ``.png``/``.jpg`` (the image's bytes as stored), ``.txt`` (the report), ``.json``
    (ids, labels, band, ...); keyed by the zero-padded sample id (keys hold no dots). None when the image cannot
    be read (it left the root, or was removed); a text-only sample (no image) has no image member."""
    meta = {k: v for k, v in row.items() if k != "report"}
    sample: dict[str, Any] = {
        "__key__": f"{row['sample_id']:012d}",
        "txt": row["report"].encode(),
        "json": json.dumps(meta, separators=(",", ":")).encode(),
    }
    if row["image_uri"]:
        try:
            path = resolve_inside(root, row["image_uri"])[1]
            sample[IMAGE_EXTENSIONS.get(path.suffix.lower(), "png")] = path.read_bytes()
        except (PathRejected, OSError):
            return None
    return sample


def webdataset_tar(source: ExportSource, shard: int | None = None) -> Iterator[bytes]:
    """One tar of the subset (or of shard ``shard``: samples ``shard * SHARD_SAMPLES`` onwards), written with the
    ``webdataset`` package; unreadable images are left out (``chexcurate export`` lists them)."""
    import webdataset as wds

    rows = source.rows() if shard is None else source.rows(shard * SHARD_SAMPLES, SHARD_SAMPLES)
    drain = Drain()
    writer = wds.TarWriter(drain, mtime=0)
    for row in rows:
        sample = webdataset_sample(row, source.root)
        if sample is not None:
            writer.write(sample)
            yield drain.take()
    writer.close()
    yield drain.take()


def _batches(rows: Iterable[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    batch: list[dict[str, Any]] = []
    for row in rows:
        batch.append(row)
        if len(batch) >= BATCH_ROWS:
            yield batch
            batch = []
    if batch:
        yield batch


class Drain(io.RawIOBase):
    """A write-only stream whose bytes are taken as they come: lets pyarrow and tarfile write into a response."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.position = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        chunk = bytes(data)
        self.parts.append(chunk)
        self.position += len(chunk)
        return len(chunk)

    def tell(self) -> int:
        return self.position

    def take(self) -> bytes:
        out, self.parts = b"".join(self.parts), []
        return out


@dataclass(frozen=True)
class Spec:
    """How a format is written and served."""

    write: Callable[[ExportSource], Iterator[bytes]]
    media_type: str
    filename: str  # the file name of a run's export (``{run}`` filled in)
    inline: bool  # the provenance travels inside the file too


FORMATS: dict[ExportFormat, Spec] = {
    "jsonl": Spec(jsonl, "application/x-ndjson", "run-{run}-subset.jsonl", True),
    "csv": Spec(csv_rows, "text/csv; charset=utf-8", "run-{run}-subset.csv", True),
    "openclip-csv": Spec(openclip_csv, "text/tab-separated-values; charset=utf-8", "run-{run}-openclip.csv", False),
    "webdataset": Spec(webdataset_tar, "application/x-tar", "run-{run}-subset.tar", False),
    "parquet": Spec(parquet, "application/vnd.apache.parquet", "run-{run}-subset.parquet", True),
    "ids": Spec(ids, "application/octet-stream", "run-{run}-ids.npy", False),
    "chexficient": Spec(chexficient, "application/x-ndjson", "subset.json", False),
}

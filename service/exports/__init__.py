"""Exports of a run's curated subset in the formats training code reads, each with the same provenance.

One convention for every format, whether written by ``chexcurate export`` or streamed by
``GET /v1/runs/{id}/subset``: the rows are the kept samples in sample-id order, ``step`` counts from 1 (the
manifest's issue number online, the super-batch number + 1 offline), and the provenance (run config, seed,
prototype version, model id, ...) travels inside the file where the format has a place its readers skip (the first
JSONL record, a ``#`` comment line before the CSV header, the parquet schema metadata) and always as the
``<file>.provenance.json`` beside it (``GET /v1/runs/{id}/subset/provenance`` over HTTP). docs/DATA.md, "Exports".
"""

from __future__ import annotations

from .formats import FORMATS, ExportFormat, Spec
from .source import ExportSource, export_source, uid_of

__all__ = ["FORMATS", "ExportFormat", "ExportSource", "Spec", "export_source", "uid_of"]

"""Admin: run statistics, their plot, and the curated subset export (admin tokens only)."""

from __future__ import annotations

import csv
import io
import itertools
import json
from collections.abc import Iterator
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import StreamingResponse
from sqlalchemy.orm import Session, sessionmaker

from .. import stats
from ..db import is_postgres
from ..runs.access import load_run
from ..schemas.admin import ExportFormat, RunStats
from ..stats_plot import band_figure_png
from .deps import AdminDep, RunId, SessionDep

router = APIRouter(prefix="/v1/runs", tags=["admin"])

MEDIA_TYPES = {"jsonl": "application/x-ndjson", "csv": "text/csv; charset=utf-8"}
ROWS_PER_CHUNK = 1000


@router.get("/{run_id}/stats", response_model=RunStats)
def run_stats(run_id: RunId, session: SessionDep, _: AdminDep) -> RunStats:
    """Phase, progress, subset size and ratio, bands, prototypes, drift, label enrichment, compute fraction."""
    return stats.run_stats(session, load_run(session, run_id))


@router.get("/{run_id}/stats.png", response_class=Response, responses={200: {"content": {"image/png": {}}}})
def run_stats_png(run_id: RunId, session: SessionDep, _: AdminDep) -> Response:
    """The statistics as a figure: decisions per band, distance histograms per band, label enrichment."""
    run = load_run(session, run_id)
    summary = stats.run_stats(session, run)
    edges, hists = stats.distance_histograms(session, run)
    enrichment = {
        name: {"ratio": float("nan") if share.ratio is None else share.ratio}
        for name, share in summary.label_enrichment.items()
    }
    title = (
        f"run {run.id}: {summary.phase}, epoch {summary.epoch}, step {summary.step}; subset "
        f"{summary.subset_size}/{summary.samples_total} ({summary.subset_ratio:.1%}), "
        f"compute {summary.compute_fraction:.1%}"
    )
    png = band_figure_png(stats.band_count_array(summary.band_counts), edges, hists, enrichment, title)
    return Response(png, media_type="image/png")


@router.get(
    "/{run_id}/subset",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/x-ndjson": {}, "text/csv": {}}}},
)
def export_subset(
    run_id: RunId,
    request: Request,
    _: AdminDep,
    fmt: Annotated[ExportFormat, Query(alias="format", description="jsonl or csv")] = "jsonl",
) -> StreamingResponse:
    """Stream the curated subset: one row per kept sample (its first kept decision), ordered by sample id.

    Columns: sample_id, external_id, image_uri, band, prototype, distance, epoch, step.

    Provenance travels in the body, so a saved file explains itself: the first line of either format is
    ``{"provenance": {...}}`` (run id, dataset id, run config, seed, model_id, checkpoint_step,
    prototype_version, phase, whether the subset is complete, curation epochs, subset_size, columns,
    exported_at). In JSONL it is the first record; in CSV it is a comment line ``# {"provenance": ...}``
    before the header (``pandas.read_csv(f, comment="#")`` skips it). On Postgres the export reads one
    snapshot, so subset_size equals the number of rows that follow.
    """
    chunks = _export(request.app.state.sessions, run_id, fmt)
    first = next(chunks)  # the run lookup happens here: an unknown run is a 404, not a broken stream
    return StreamingResponse(
        itertools.chain([first], chunks),
        media_type=MEDIA_TYPES[fmt],
        headers={"Content-Disposition": f'attachment; filename="run-{run_id}-subset.{fmt}"'},
    )


def _export(sessions: sessionmaker[Session], run_id: int, fmt: ExportFormat) -> Iterator[str]:
    with sessions() as session:
        if is_postgres(session):
            session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
        run = load_run(session, run_id)
        provenance = stats.export_provenance(session, run) | {"format": fmt}
        line = json.dumps({"provenance": provenance}, separators=(",", ":"))
        yield (line if fmt == "jsonl" else "# " + line) + "\n"
        rows = stats.subset_rows(session, run, chunk=ROWS_PER_CHUNK)
        if fmt == "csv":
            yield ",".join(stats.EXPORT_COLUMNS) + "\r\n"
        while batch := list(itertools.islice(rows, ROWS_PER_CHUNK)):
            yield _jsonl(batch) if fmt == "jsonl" else _csv(batch)


def _jsonl(batch: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(row, separators=(",", ":")) + "\n" for row in batch)


def _csv(batch: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    csv.writer(buf).writerows([row[c] for c in stats.EXPORT_COLUMNS] for row in batch)
    return buf.getvalue()

"""Admin: run statistics, their plot, and the curated subset export (admin tokens only)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import StreamingResponse
from sqlalchemy.orm import Session, sessionmaker

from .. import stats
from ..errors import ApiError
from ..exports import FORMATS, export_source
from ..exports.formats import SHARD_SAMPLES, webdataset_tar
from ..runs.access import load_run
from ..schemas.admin import ExportFormat, RunStats
from ..stats_plot import band_figure_png
from .deps import AdminDep, RunId, SessionDep

router = APIRouter(prefix="/v1/runs", tags=["admin"])


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
    responses={200: {"content": {spec.media_type.split(";")[0]: {} for spec in FORMATS.values()}}},
)
def export_subset(
    run_id: RunId,
    request: Request,
    _: AdminDep,
    fmt: Annotated[ExportFormat, Query(alias="format", description="the export format (docs/DATA.md)")] = "jsonl",
    shard: Annotated[
        int | None, Query(ge=0, le=10**9, description=f"webdataset: only shard N ({SHARD_SAMPLES} samples each)")
    ] = None,
) -> StreamingResponse:
    """Stream the curated subset: one row per kept sample (its first kept decision), ordered by sample id; steps
    count from 1.

    ``jsonl`` / ``csv``: columns sample_id, external_id, image_uri, band, prototype, distance, epoch, step; the
    first line is ``{"provenance": {...}}`` (in CSV a comment line ``# {...}`` before the header). ``openclip-csv``:
    tab-separated ``filepath`` and ``title``. ``webdataset``: a tar of ``.png``/``.jpg``, ``.txt``, ``.json`` per
    sample (``shard=N`` for one shard of 1,000; the ``X-Shards`` header counts them). ``parquet``: the provenance
    in the schema metadata. ``ids``: DataComp's sorted ``u8,u8`` uid array (.npy). ``chexficient``: the authors'
    ``subset.json``. Every format's provenance (run config, seed, prototype version, model id, ...) is also at
    ``GET /v1/runs/{id}/subset/provenance`` (the ``Link`` header). On Postgres the export reads one snapshot."""
    if shard is not None and fmt != "webdataset":
        raise ApiError(422, "invalid_request", "shard applies to format=webdataset only")
    spec = FORMATS[fmt]
    chunks = _export(request.app.state.sessions, run_id, fmt, shard)
    size = next(chunks)  # the run lookup happens here: an unknown run is a 404, not a broken stream
    headers = {
        "Content-Disposition": f'attachment; filename="{spec.filename.format(run=run_id)}"',
        "Link": f'</v1/runs/{run_id}/subset/provenance?format={fmt}>; rel="describedby"',
        "X-Subset-Size": str(size),
    }
    if fmt == "webdataset":
        headers["X-Shards"] = str(-(-int(size) // SHARD_SAMPLES))
    return StreamingResponse(chunks, media_type=spec.media_type, headers=headers)


@router.get("/{run_id}/subset/provenance")
def subset_provenance(
    run_id: RunId,
    session: SessionDep,
    _: AdminDep,
    fmt: Annotated[ExportFormat, Query(alias="format", description="the export format")] = "jsonl",
) -> dict[str, Any]:
    """The provenance of the run's subset export (the ``.provenance.json`` that ``chexcurate export`` writes)."""
    return export_source(session, run_id, fmt, snapshot=False).provenance


def _export(sessions: sessionmaker[Session], run_id: int, fmt: ExportFormat, shard: int | None) -> Iterator[Any]:
    with sessions() as session:
        source = export_source(session, run_id, fmt)
        yield source.size
        if fmt == "webdataset":
            yield from webdataset_tar(source, shard)
        else:
            yield from FORMATS[fmt].write(source)

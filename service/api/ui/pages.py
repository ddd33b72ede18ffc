"""The explorer's pages: runs list, run page, gallery, sample page, embedding map (all need a signed-in browser)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import RedirectResponse, Response

from ...curation import BAND_LABELS
from ...errors import ApiError
from ...explorer.gallery import PAGE_MAX, Cursor, GalleryQuery, band_code, decided_epochs, gallery_page
from ...explorer.overview import live_figures, runs_list
from ...explorer.sample import has_embedding, neighbour_rows, run_sample, sample_decisions
from ...jobs.neighbours import IndexState
from ...runs.access import load_run
from ..deps import DispatcherDep, RunId, SampleId, SessionDep
from .session import CheckedForm, PageSession, page, secured

router = APIRouter(prefix="/ui", include_in_schema=False)


def _choice(text: str | None, name: str, top: int) -> int | None:
    """A whole number 0..top from a form's select; an unset choice ("all") comes as an empty field."""
    if text is None or text == "":
        return None
    if not text.isdigit() or int(text) > top:
        raise ApiError(422, "invalid_request", f"{name} must be a whole number 0..{top}, got {text[:40]!r}")
    return int(text)


#: neighbours shown on a sample page
NEIGHBOURS = 12


@router.get("/runs")
def runs_page(request: Request, session: SessionDep, ui: PageSession) -> Response:
    return page(request, "runs.html", ui, runs=runs_list(session))


@router.get("/runs/{run_id}")
def run_page(request: Request, run_id: RunId, session: SessionDep, ui: PageSession) -> Response:
    run = load_run(session, run_id)
    return page(request, "run.html", ui, run=run, figures=live_figures(session, run), bands=BAND_LABELS)


@router.get("/runs/{run_id}/gallery")
def gallery(
    request: Request,
    run_id: RunId,
    session: SessionDep,
    ui: PageSession,
    epoch: Annotated[str | None, Query(max_length=12)] = None,
    band: Annotated[str | None, Query(max_length=32)] = None,
    prototype: Annotated[str | None, Query(max_length=12)] = None,
    label: Annotated[str | None, Query(max_length=200)] = None,
    after: Annotated[str | None, Query(max_length=80)] = None,
    limit: Annotated[int, Query(ge=1, le=PAGE_MAX)] = 48,
) -> Response:
    """Thumbnails with their reports, one band / prototype / label at a time; ``after`` is the next-page cursor."""
    run = load_run(session, run_id)
    epochs = decided_epochs(session, run)
    asked = _choice(epoch, "epoch", 100_000)
    chosen = asked if asked is not None else (epochs[-1] if epochs else 0)
    query = GalleryQuery(
        epoch=chosen,
        band=band_code(band),
        prototype=_choice(prototype, "prototype", 32_767),
        label=label or None,
        after=Cursor.parse(after) if after else None,
        limit=limit,
    )
    items, next_cursor = gallery_page(session, run, query)
    k = int(run.config.get("k", 0) or 0)
    return page(
        request,
        "gallery.html",
        ui,
        run=run,
        items=items,
        epochs=epochs,
        epoch=chosen,
        band=band or "",
        prototype=query.prototype,
        prototypes=list(range(k)),
        label=label or "",
        limit=limit,
        next_cursor=str(next_cursor) if next_cursor else None,
        bands=BAND_LABELS,
    )


@router.get("/runs/{run_id}/samples/{sample_id}")
def sample_page(
    request: Request,
    run_id: RunId,
    sample_id: SampleId,
    session: SessionDep,
    dispatcher: DispatcherDep,
    ui: PageSession,
) -> Response:
    """The image and report, the decision in every epoch, and the nearest neighbours with their bands."""
    run = load_run(session, run_id)
    sample = run_sample(session, run, sample_id)
    decisions = sample_decisions(session, run, sample_id)
    embedded = has_embedding(session, run_id, sample_id)
    session.rollback()  # an index build reads on its own connections: hold no transaction open meanwhile
    neighbours, index_note = [], None
    if not embedded:
        index_note = "This sample has no stored embedding in this run, so it has no neighbours here."
    else:
        state = dispatcher.neighbour_index(run_id)
        if isinstance(state, IndexState):
            neighbours = neighbour_rows(session, run, state, sample_id, NEIGHBOURS)
        else:
            index_note = "The run's neighbour index is being built by a worker; reload in a few seconds."
    return page(
        request,
        "sample.html",
        ui,
        run=run,
        sample=sample,
        decisions=decisions,
        neighbours=neighbours,
        index_note=index_note,
    )


@router.get("/runs/{run_id}/map")
def map_page(request: Request, run_id: RunId, session: SessionDep, ui: PageSession) -> Response:
    return page(request, "map.html", ui, run=load_run(session, run_id))


@router.post("/runs/{run_id}/map")
async def make_map(run_id: RunId, dispatcher: DispatcherDep, _: CheckedForm) -> Response:
    """Make the run's embedding map: on a worker (the page polls until it is there), or here without workers."""
    await run_in_threadpool(dispatcher.embedding_map, run_id)
    return secured(RedirectResponse(f"/ui/runs/{run_id}/map", status_code=303))

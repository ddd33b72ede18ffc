"""What the pages fetch: a run's live figures and embedding map as JSON, and image thumbnails."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response

from ...errors import ApiError
from ...explorer.embedding_map import cached_map
from ...explorer.overview import live_figures
from ...explorer.sample import dataset_root
from ...explorer.thumbnails import SIDES, thumbnail
from ...ingest.paths import PathRejected
from ...models import Sample
from ...runs.access import load_run
from ..deps import RunId, SampleId, SessionDep, SettingsDep
from .session import DataSession

router = APIRouter(prefix="/ui", include_in_schema=False)

#: thumbnails change only with their image (the ETag names its content): a day in the browser's own cache
THUMB_CACHE = "private, max-age=86400"


@router.get("/runs/{run_id}/live.json")
def live(run_id: RunId, session: SessionDep, _: DataSession) -> JSONResponse:
    """The run page's figures (it polls this while the run trains)."""
    body = live_figures(session, load_run(session, run_id))
    return JSONResponse(body, headers={"Cache-Control": "no-store"})


@router.get("/runs/{run_id}/map.json")
async def embedding_map(request: Request, run_id: RunId, session: SessionDep, _: DataSession) -> JSONResponse:
    """The run's embedding map when made; 202 ``{"state": "missing"}`` until then (the page offers to make it)."""
    load_run(session, run_id)
    session.rollback()
    settings = request.app.state.settings
    found: dict[str, Any] | None = await run_in_threadpool(
        cached_map, request.app.state.sessions, run_id, settings.explorer_cache_dir
    )
    if found is None:
        return JSONResponse({"state": "missing"}, status_code=202, headers={"Cache-Control": "no-store"})
    return JSONResponse(found, headers={"Cache-Control": "no-store"})


@router.get("/thumbs/{sample_id}", response_class=Response)
def thumb(
    sample_id: SampleId,
    session: SessionDep,
    settings: SettingsDep,
    _: DataSession,
    side: Annotated[int, Query(description=f"one of {SIDES}")] = SIDES[1],
    if_none_match: Annotated[str | None, Header()] = None,
) -> Response:
    """A sample's image scaled to ``side`` pixels, PNG, with an ETag (304 when the browser has it)."""
    sample = session.get(Sample, sample_id)
    if sample is None:
        raise ApiError(404, "unknown_sample", f"sample {sample_id} does not exist")
    if side not in SIDES:
        raise ApiError(422, "invalid_side", f"side must be one of {list(SIDES)}, got {side}")
    if not sample.image_uri:
        raise ApiError(404, "no_image", f"sample {sample_id} has no image")
    try:
        made = thumbnail(
            dataset_root(session, sample.dataset_id),
            sample.image_uri,
            sample.content_hash,
            side,
            settings.explorer_cache_dir / "thumbs",
            settings.path_limits(),
        )
    except PathRejected as exc:
        raise ApiError(404, "no_image", f"sample {sample_id}'s image: {exc}") from None
    except (ValueError, OSError) as exc:
        raise ApiError(422, "unreadable_image", f"sample {sample_id}'s image does not decode: {exc}") from None
    headers = {"ETag": made.etag, "Cache-Control": THUMB_CACHE}
    if if_none_match is not None and made.etag in (tag.strip() for tag in if_none_match.split(",")):
        return Response(status_code=304, headers=headers)
    return Response(made.path.read_bytes(), media_type="image/png", headers=headers)

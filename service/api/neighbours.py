"""Admin: a sample's nearest neighbours in a run (FAISS, cosine), with their decisions, to audit curation.

Why was a sample kept or dropped? Its own decision (band, prototype, distance) next to its closest
samples and theirs shows whether it sat in a dense redundant region (neighbours mostly central and
dropped), at a cluster edge (support), or away from everything (outlier).

The index of a run is cached in memory and as a file under ``neighbour_index_dir`` (shared by the API and the
workers); see ``workers.jobs.neighbours``. With workers, a missing or stale index is built by a task on the
``refresh`` queue: the lookup answers 202 with the task to poll and Retry-After, and serves from the file once
it is there. In the embedded mode it is built in the request.
"""

from __future__ import annotations

import threading
from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, Query, Request, Response, status
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from workers.curation import BAND_LABELS
from workers.jobs.neighbours import IndexState, NeighbourIndexCache, neighbours

from .. import stats
from ..config import Settings
from ..deps import AdminDep, DispatcherDep, RunId, SampleId, SessionDep, SettingsDep
from ..errors import ApiError
from ..models import Decision, Embedding, Sample
from ..schemas.tasks import TaskAccepted

router = APIRouter(prefix="/v1/runs", tags=["admin"])

MAX_K = 100
_cache_guard = threading.Lock()  # two first requests must not each make (and half-fill) a cache


class DecisionOut(BaseModel):
    """The sample's latest decision in the run (highest epoch, then step)."""

    epoch: int
    step: int
    band: str = Field(description="outlier | support | central_kept | central_dropped")
    prototype: int
    distance: float
    kept: bool
    prototype_version: int


class NeighbourOut(BaseModel):
    sample_id: int
    external_id: str
    image_uri: str
    similarity: float = Field(description="cosine similarity of the stored embeddings, 1 = same direction")
    decision: DecisionOut | None


class IndexOut(BaseModel):
    kind: str = Field(description="flat (exact) or ivf (approximate)")
    rows: int
    dim: int
    max_step: int


class NeighboursOut(BaseModel):
    run_id: int
    sample_id: int
    external_id: str
    image_uri: str
    decision: DecisionOut | None
    k: int
    index: IndexOut
    neighbours: list[NeighbourOut]


def neighbour_cache(app: FastAPI, settings: Settings) -> NeighbourIndexCache:
    with _cache_guard:
        cache = getattr(app.state, "neighbour_cache", None)
        if cache is None:
            cache = app.state.neighbour_cache = NeighbourIndexCache(settings.neighbour_index_dir)
        return cache


def _index_or_task(
    request: Request, settings: Settings, dispatcher: Any, run_id: int, response: Response
) -> IndexState | TaskAccepted:
    """The run's current index; with workers, when it is not built yet, the (shared) task building it."""
    cache = neighbour_cache(request.app, settings)
    sessions = request.app.state.sessions
    if dispatcher.eager:
        return cache.get(sessions, run_id)
    key, state = cache.cached(sessions, run_id)
    if state is not None:
        return state
    from workers.celery_app import TASK_NEIGHBOUR_INDEX

    task_key = f"chex:neighbour-index:{key.filename('task')}"
    accepted = dispatcher.submit_once(TASK_NEIGHBOUR_INDEX, [run_id], task_key)
    done = dispatcher.status(accepted.task_id)
    if done.state == "FAILURE":
        # The build over these very rows failed: asking again would only fail again, so say why instead of
        # answering 202 for as long as the task id is kept. Other rows (e.g. after a repair) get a new key.
        error = done.error or {}
        if "status" not in error:  # the task itself broke (not the rows): the next ask starts a new build
            dispatcher.forget(task_key)
        raise ApiError(
            409,
            "index_failed",
            f"building run {run_id}'s neighbour index failed: {error.get('error')}: {error.get('detail')}",
            reason=error,
        )
    response.status_code = status.HTTP_202_ACCEPTED
    response.headers["Retry-After"] = str(settings.retry_after_seconds)
    return accepted


def _index_out(state: IndexState) -> IndexOut:
    return IndexOut(kind=state.kind, rows=state.key.rows, dim=state.dim, max_step=state.key.max_step)


@router.post(
    "/{run_id}/neighbour-index",
    response_model=IndexOut | TaskAccepted,
    responses={202: {"model": TaskAccepted, "description": "being built by a worker (refresh queue)"}},
)
async def build_neighbour_index(
    run_id: RunId,
    request: Request,
    response: Response,
    session: SessionDep,
    settings: SettingsDep,
    dispatcher: DispatcherDep,
    _: AdminDep,
) -> IndexOut | TaskAccepted:
    """Build the run's neighbour index ahead of lookups (after curation, say): 202 and a task to poll with
    workers, the index's description at once when it is current or in the embedded mode."""
    stats.load_run(session, run_id)
    if session.scalar(select(Embedding.sample_id).where(Embedding.run_id == run_id).limit(1)) is None:
        raise ApiError(409, "no_embeddings", f"run {run_id} has no stored embeddings to index")
    session.rollback()
    found = await run_in_threadpool(_index_or_task, request, settings, dispatcher, run_id, response)
    return _index_out(found) if isinstance(found, IndexState) else found


@router.get(
    "/{run_id}/samples/{sample_id}/neighbours",
    response_model=NeighboursOut | TaskAccepted,
    responses={202: {"model": TaskAccepted, "description": "the index is being built by a worker; ask again"}},
)
def sample_neighbours(
    run_id: RunId,
    sample_id: SampleId,
    request: Request,
    response: Response,
    session: SessionDep,
    settings: SettingsDep,
    dispatcher: DispatcherDep,
    _: AdminDep,
    k: Annotated[int, Query(ge=1, le=MAX_K, description="how many neighbours")] = 10,
) -> NeighboursOut | TaskAccepted:
    """The sample's decision and its ``k`` nearest samples by cosine similarity of the run's stored
    embeddings, each with its own latest decision (null when it has none). With workers, 202 + the index
    build task while the run's index is not built yet."""
    run = stats.load_run(session, run_id)
    sample = session.get(Sample, sample_id)
    if sample is None or sample.dataset_id != run.dataset_id:
        raise ApiError(404, "unknown_sample", f"sample {sample_id} is not in run {run_id}'s dataset")
    embedded = session.scalar(
        select(Embedding.sample_id).where(Embedding.run_id == run_id, Embedding.sample_id == sample_id)
    )
    if embedded is None:
        raise ApiError(404, "no_embedding", f"sample {sample_id} has no stored embedding in run {run_id}")
    external_id, image_uri = sample.external_id, sample.image_uri
    session.rollback()  # the build reads on its own connections: hold no transaction open meanwhile
    state = _index_or_task(request, settings, dispatcher, run_id, response)
    if isinstance(state, TaskAccepted):
        return state
    try:
        hits = neighbours(state, sample_id, k)
    except KeyError:  # deleted between the check and the build
        raise ApiError(404, "no_embedding", f"sample {sample_id} has no stored embedding in run {run_id}") from None
    ids = [sample_id, *(i for i, _ in hits)]
    samples = {s.id: s for s in session.scalars(select(Sample).where(Sample.id.in_(ids)))}
    decisions = _latest_decisions(session, run_id, ids)
    return NeighboursOut(
        run_id=run_id,
        sample_id=sample_id,
        external_id=external_id,
        image_uri=image_uri,
        decision=decisions.get(sample_id),
        k=k,
        index=_index_out(state),
        neighbours=[
            NeighbourOut(
                sample_id=i,
                external_id=samples[i].external_id,
                image_uri=samples[i].image_uri,
                similarity=similarity,
                decision=decisions.get(i),
            )
            for i, similarity in hits
            if i in samples  # a sample deleted since the index was built is left out, not a 500
        ],
    )


def _latest_decisions(session: Session, run_id: int, sample_ids: list[int]) -> dict[int, DecisionOut]:
    rows = session.scalars(
        select(Decision)
        .where(Decision.run_id == run_id, Decision.sample_id.in_(sample_ids))
        .order_by(Decision.sample_id, Decision.epoch.desc(), Decision.step.desc())
    )
    latest: dict[int, DecisionOut] = {}
    for d in rows:
        if d.sample_id not in latest:
            latest[d.sample_id] = DecisionOut(
                epoch=d.epoch,
                step=d.step,
                band=BAND_LABELS[d.band],
                prototype=d.prototype,
                distance=d.distance,
                kept=d.kept,
                prototype_version=d.prototype_version,
            )
    return latest

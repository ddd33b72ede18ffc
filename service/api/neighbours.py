"""Admin: a sample's nearest neighbours in a run (FAISS, cosine), with their decisions, to audit curation.

Why was a sample kept or dropped? Its own decision (band, prototype, distance) next to its closest
samples and theirs shows whether it sat in a dense redundant region (neighbours mostly central and
dropped), at a cluster edge (support), or away from everything (outlier).

The index of a run is cached in memory and as a file under ``neighbour_index_dir`` (shared by the API and the
workers); see ``jobs.neighbours``. With workers, a missing or stale index is built by a task on the ``refresh``
queue: the lookup answers 202 with the task to poll and Retry-After, and serves from the file once it is there.
In the embedded mode it is built in the request.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response, status
from fastapi.concurrency import run_in_threadpool
from sqlalchemy import select

from ..config import Settings
from ..dispatch import Dispatcher
from ..errors import ApiError
from ..explorer.sample import latest_decisions
from ..jobs.neighbours import IndexState, neighbours
from ..models import Embedding, Sample
from ..runs.access import load_run
from ..schemas.neighbours import IndexOut, NeighbourOut, NeighboursOut
from ..schemas.tasks import TaskAccepted
from .deps import AdminDep, DispatcherDep, RunId, SampleId, SessionDep, SettingsDep

router = APIRouter(prefix="/v1/runs", tags=["admin"])

MAX_K = 100


def _index_or_task(
    dispatcher: Dispatcher, settings: Settings, run_id: int, response: Response
) -> IndexState | TaskAccepted:
    """The run's current index, or the task building it (202 + Retry-After)."""
    found = dispatcher.neighbour_index(run_id)
    if isinstance(found, TaskAccepted):
        response.status_code = status.HTTP_202_ACCEPTED
        response.headers["Retry-After"] = str(settings.retry_after_seconds)
    return found


def _index_out(state: IndexState) -> IndexOut:
    return IndexOut(kind=state.kind, rows=state.key.rows, dim=state.dim, max_step=state.key.max_step)


@router.post(
    "/{run_id}/neighbour-index",
    response_model=IndexOut | TaskAccepted,
    responses={202: {"model": TaskAccepted, "description": "being built by a worker (refresh queue)"}},
)
async def build_neighbour_index(
    run_id: RunId,
    response: Response,
    session: SessionDep,
    settings: SettingsDep,
    dispatcher: DispatcherDep,
    _: AdminDep,
) -> IndexOut | TaskAccepted:
    """Build the run's neighbour index ahead of lookups (after curation, say): 202 and a task to poll with
    workers, the index's description at once when it is current or in the embedded mode."""
    load_run(session, run_id)
    if session.scalar(select(Embedding.sample_id).where(Embedding.run_id == run_id).limit(1)) is None:
        raise ApiError(409, "no_embeddings", f"run {run_id} has no stored embeddings to index")
    session.rollback()
    found = await run_in_threadpool(_index_or_task, dispatcher, settings, run_id, response)
    return _index_out(found) if isinstance(found, IndexState) else found


@router.get(
    "/{run_id}/samples/{sample_id}/neighbours",
    response_model=NeighboursOut | TaskAccepted,
    responses={202: {"model": TaskAccepted, "description": "the index is being built by a worker; ask again"}},
)
def sample_neighbours(
    run_id: RunId,
    sample_id: SampleId,
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
    run = load_run(session, run_id)
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
    state = _index_or_task(dispatcher, settings, run_id, response)
    if isinstance(state, TaskAccepted):
        return state
    try:
        hits = neighbours(state, sample_id, k)
    except KeyError:  # deleted between the check and the build
        raise ApiError(404, "no_embedding", f"sample {sample_id} has no stored embedding in run {run_id}") from None
    ids = [sample_id, *(i for i, _ in hits)]
    samples = {s.id: s for s in session.scalars(select(Sample).where(Sample.id.in_(ids)))}
    decisions = latest_decisions(session, run_id, ids)
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

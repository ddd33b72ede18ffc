"""A sample in a run: its record, its decision in every curation epoch, and its nearest neighbours with theirs."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from ..curation import BAND_LABELS
from ..errors import ApiError
from ..jobs.neighbours import IndexState, neighbours
from ..models import Dataset, Decision, Embedding, Run, Sample
from ..schemas.neighbours import DecisionOut
from .gallery import decided_epochs


def run_sample(session: Session, run: Run, sample_id: int) -> Sample:
    """The sample, or 404 when it is not in the run's dataset."""
    sample = session.get(Sample, sample_id)
    if sample is None or sample.dataset_id != run.dataset_id:
        raise ApiError(404, "unknown_sample", f"sample {sample_id} is not in run {run.id}'s dataset")
    return sample


def _decision_out(d: Decision) -> DecisionOut:
    return DecisionOut(
        epoch=d.epoch,
        step=d.step,
        band=BAND_LABELS[d.band],
        prototype=d.prototype,
        distance=d.distance,
        kept=d.kept,
        prototype_version=d.prototype_version,
    )


def sample_decisions(session: Session, run: Run, sample_id: int) -> list[DecisionOut]:
    """Its decision in each epoch, oldest first (one point read per epoch of the unique index)."""
    rows = session.scalars(
        select(Decision)
        .where(
            Decision.run_id == run.id,
            Decision.epoch.in_(decided_epochs(session, run)),
            Decision.sample_id == sample_id,
        )
        .order_by(Decision.epoch, Decision.step)
    )
    return [_decision_out(d) for d in rows]


def latest_decisions(session: Session, run_id: int, sample_ids: list[int]) -> dict[int, DecisionOut]:
    """Each sample's latest decision in the run (samples without one are absent)."""
    run = session.get(Run, run_id)
    epochs = decided_epochs(session, run) if run is not None else []
    rows = session.scalars(
        select(Decision)
        .where(Decision.run_id == run_id, Decision.epoch.in_(epochs), Decision.sample_id.in_(sample_ids))
        .order_by(Decision.sample_id, Decision.epoch.desc(), Decision.step.desc())
    )
    latest: dict[int, DecisionOut] = {}
    for d in rows:
        latest.setdefault(d.sample_id, _decision_out(d))
    return latest


def has_embedding(session: Session, run_id: int, sample_id: int) -> bool:
    found = select(Embedding.sample_id).where(Embedding.run_id == run_id, Embedding.sample_id == sample_id)
    return session.scalar(found) is not None


def neighbour_rows(session: Session, run: Run, state: IndexState, sample_id: int, k: int) -> list[dict[str, Any]]:
    """The ``k`` nearest samples by cosine similarity, each with its latest decision (None when it has none);
    empty when the sample has no row in the index."""
    try:
        hits = neighbours(state, sample_id, k)
    except KeyError:
        return []
    ids = [i for i, _ in hits]
    samples = {s.id: s for s in session.scalars(select(Sample).where(Sample.id.in_(ids)))}
    decisions = latest_decisions(session, run.id, ids)
    return [
        {
            "sample_id": i,
            "external_id": samples[i].external_id,
            "similarity": similarity,
            "decision": decisions.get(i),
        }
        for i, similarity in hits
        if i in samples  # deleted since the index was built
    ]


def dataset_root(session: Session, dataset_id: int) -> str:
    dataset = session.get(Dataset, dataset_id)
    if dataset is None:
        raise ApiError(404, "unknown_dataset", f"dataset {dataset_id} does not exist")
    return dataset.root

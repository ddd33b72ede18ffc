"""What the online modes beyond the paper need of a run between steps (docs/MODES.md), all read from its rows.

Budget targeting needs the rows seen and kept so far in the curation epoch (its decisions) and its bound hits
(``Run.progress``); near-duplicate removal needs the subset so far, bounded to the latest ``dedup_memory`` kept
rows, whose embeddings the run already stores.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray
from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from ..curation import (
    Backend,
    CapPlan,
    CurationConfig,
    Selection,
    TargetTally,
    assign_rows,
    dedup_against_memory,
    patient_codes,
    select_batch,
    select_toward,
    unit_rows,
    wanted_rows,
)
from ..errors import ApiError
from ..models import Decision, Embedding, Run, Sample
from ..storage.embedding_reader import half_rows

#: ``Run.progress`` key of the online controller's record
TARGET_PROGRESS = "target_ratio"


def ensure_online(config: CurationConfig) -> None:
    """422 ``offline_only_mode`` for a config that only offline curation can run (balanced prototypes)."""
    if config.prototype_mode != "flat":
        raise ApiError(
            422, "offline_only_mode", f"prototype_mode {config.prototype_mode!r} is offline only: curate offline"
        )


def epoch_counts(session: Session, run_id: int, epoch: int) -> tuple[int, int]:
    """Rows decided and rows kept so far in ``epoch``."""
    seen, kept = session.execute(
        select(func.count(), func.count(case((Decision.kept.is_(True), 1)))).where(
            Decision.run_id == run_id, Decision.epoch == epoch
        )
    ).one()
    return int(seen), int(kept)


def subset_memory(
    session: Session, run_id: int, epoch: int, limit: int
) -> tuple[NDArray[np.float32], list[str | None]]:
    """The latest ``limit`` rows kept in ``epoch`` (by step): their stored embeddings as unit rows, their patients."""
    rows = session.execute(
        select(Embedding.vector, Embedding.dim, Sample.patient_id)
        .join(Decision, (Decision.run_id == Embedding.run_id) & (Decision.sample_id == Embedding.sample_id))
        .join(Sample, Sample.id == Embedding.sample_id)
        .where(Decision.run_id == run_id, Decision.epoch == epoch, Decision.kept.is_(True))
        .order_by(Decision.step.desc(), Decision.sample_id)
        .limit(limit)
    ).all()
    if not rows:
        return np.empty((0, 0), dtype=np.float32), []
    return unit_rows(half_rows([r[0] for r in rows], rows[0][1])), [r[2] for r in rows]


def eligible_rows(
    session: Session,
    run: Run,
    epoch: int,
    features: NDArray[np.float32],
    sample_ids: list[int],
    prototypes: NDArray[np.float32],
    config: CurationConfig,
    backend: Backend | None,
) -> NDArray[np.bool_] | None:
    """Online dedup: rows that are no near-duplicate of another in the batch or of the subset so far; None if off."""
    if config.dedup_epsilon is None:
        return None
    memory, memory_patients = subset_memory(session, run.id, epoch, config.dedup_memory)
    assigned = assign_rows(features, prototypes, backend)
    if len(memory):
        memory_assigned = assign_rows(memory, prototypes, backend)
    else:
        memory, memory_assigned = features[:0], assigned[:0]
    patient = memory_patient = None
    if config.dedup_same_patient:
        names = dict(session.execute(select(Sample.id, Sample.patient_id).where(Sample.id.in_(sample_ids))).all())
        codes = patient_codes(memory_patients + [names.get(i) for i in sample_ids])
        memory_patient, patient = codes[: len(memory)], codes[len(memory) :]
    return dedup_against_memory(
        features, assigned, memory, memory_assigned, config.dedup_epsilon, patient, memory_patient, backend
    )


def select_online(
    session: Session,
    run: Run,
    epoch: int,
    features: NDArray[np.float32],
    prototypes: NDArray[np.float32],
    config: CurationConfig,
    seed: tuple[int, int, int],
    eligible: NDArray[np.bool_] | None,
    backend: Backend | None,
) -> Selection:
    """The step's selection: the paper's, or toward ``target_ratio`` with the controller's record kept in
    ``Run.progress``."""
    if config.target_ratio is None:
        return select_batch(features, prototypes, config, seed, backend, eligible=eligible)
    seen, kept = epoch_counts(session, run.id, epoch)
    wanted = wanted_rows(config.target_ratio, seen, kept, len(features))
    selection, plan = select_toward(features, prototypes, config, seed, wanted, backend, eligible)
    _record(run, epoch, config.target_ratio, plan, seen + len(features), kept + int(selection.keep.sum()))
    return selection


def _record(run: Run, epoch: int, target: float, plan: CapPlan, seen: int, kept: int) -> None:
    before: dict[str, Any] = dict((run.progress or {}).get(TARGET_PROGRESS) or {})
    same = before.get("epoch") == epoch
    tally = TargetTally(
        target,
        steps=before.get("steps", 0) if same else 0,
        low=before.get("bound_hits_low", 0) if same else 0,
        high=before.get("bound_hits_high", 0) if same else 0,
    )
    tally.add(plan, seen, kept)
    last = {"max_central": plan.max_central, "support_quantile": plan.support_quantile}
    # a new dict: JSON columns track assignment, not mutation
    run.progress = {**(run.progress or {}), TARGET_PROGRESS: {"epoch": epoch, **tally.report(), "last_step": last}}


def run_modes(run: Run, config: CurationConfig) -> dict[str, dict[str, Any]]:
    """Each mode beyond the paper the run uses: its parameters, and what it reported (offline summary, or the
    online controller's record); {} for the paper's algorithm."""
    modes = config.modes()
    progress = run.progress or {}
    reported = progress.get("modes") or {}
    for name in modes:
        modes[name] = {**modes[name], **reported.get(name, {})}
    if "target_ratio" in modes and TARGET_PROGRESS in progress:
        modes["target_ratio"] = {**modes["target_ratio"], **progress[TARGET_PROGRESS]}
    return modes

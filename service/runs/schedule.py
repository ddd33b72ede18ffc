"""The run schedule: warmup -> curation -> subset -> done (docs/DESIGN.md, "The run lifecycle").

Epoch 0 is the warm-up pass over ``warmup_samples`` random accepted samples; epochs 1..curation_epochs curate
every sample of the run's pool; the remaining epochs up to ``epochs`` train on the curated subset. Callers hold
the run row lock (``lock_run``), so phase changes and prototype versions are serialised.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from numpy.typing import NDArray
from sqlalchemy import select
from sqlalchemy.orm import Session, object_session

from ..errors import ApiError
from ..models import Embedding, EpochItem, Run
from .access import run_config, run_pool, subset_ids
from .failures import STEP_INIT, clear_failure, is_infrastructure, record_failure, stopped
from .leasing import epoch_open, materialise_epoch
from .prototypes import step_kmeans

#: what brings the prototypes of a run out of warm-up: k-means here (``init_or_record``) or a worker task asked for
InitPrototypes = Callable[[Run], None]


def open_warmup(session: Session, run: Run) -> None:
    """Materialise the warm-up epoch of a new run: a seeded random sample of its pool."""
    config = run_config(run)
    pool = np.sort(run_pool(session, run))
    if len(pool) < config.k:
        raise ApiError(422, "too_few_samples", f"the dataset has {len(pool)} accepted samples; k={config.k} needs more")
    size = min(config.warmup_samples, len(pool))
    warmup = np.random.default_rng([run.seed, 0]).choice(pool, size=size, replace=False)
    materialise_epoch(session, run.id, run.seed, 0, warmup)


def awaiting_prototypes(run: Run) -> bool:
    """In warm-up with no prototypes yet, and not stopped: the warm-up k-means is what it waits for (once its
    epoch is done)."""
    return run.phase == "warmup" and run.prototype_version == 0 and not stopped(run)


def advance_if_epoch_done(session: Session, run: Run, init: InitPrototypes) -> None:
    """Move to the next epoch (or phase) once every row of the current epoch is done.

    After warm-up the prototypes come from ``init``: k-means here (``init_or_record``), or a worker task asked
    for (which calls this again once version 1 exists). A stopped run stays where it is.
    """
    while run.phase != "done" and not epoch_open(session, run.id, run.epoch):
        config = run_config(run)
        if run.phase == "warmup" and run.prototype_version == 0:
            if stopped(run):
                return
            init(run)
            if run.prototype_version == 0:
                return
        next_epoch = run.epoch + 1
        if next_epoch <= config.curation_epochs:
            run.phase, pool = "curation", run_pool(session, run)
        elif next_epoch <= config.epochs:
            run.phase = "subset"
            pool = subset_ids(session, run) if config.curation_epochs else run_pool(session, run)
        else:
            run.phase = "done"
            break
        run.epoch = next_epoch
        materialise_epoch(session, run.id, run.seed, next_epoch, pool)


def warmup_ids(session: Session, run: Run) -> NDArray[np.int64]:
    """The samples of the warm-up epoch, ascending: the rows its k-means reads."""
    ids = session.scalars(select(EpochItem.sample_id).where(EpochItem.run_id == run.id, EpochItem.epoch == 0))
    return np.sort(np.fromiter(ids, dtype=np.int64))


def init_or_record(run: Run, limit: int) -> None:
    """The warm-up k-means in the caller's transaction; a failure is noted on the run (``runs.failures``)
    instead of failing the request or task that ran it, so what triggered it (a trainer's last warm-up post, a
    lease) still succeeds and the run shows why it does not move on."""
    session = object_session(run)
    assert session is not None
    try:
        with session.begin_nested():
            step_kmeans(session, run, run_config(run), warmup_ids(session, run), "warm-up")
    except Exception as exc:
        if is_infrastructure(exc):
            raise
        record_failure(run, STEP_INIT, exc, limit)
    else:
        clear_failure(run)


def reinit_prototypes(session: Session, run: Run) -> None:
    """A new prototype version from k-means over ``warmup_samples`` of the run's stored embeddings (a seeded
    draw): an admin's repair when the current prototypes are unusable."""
    config = run_config(run)
    ids = np.fromiter(session.scalars(select(Embedding.sample_id).where(Embedding.run_id == run.id)), dtype=np.int64)
    rng = np.random.default_rng([config.seed, run.prototype_version, 3])
    chosen = rng.choice(ids, size=min(len(ids), config.warmup_samples), replace=False) if len(ids) else ids
    step_kmeans(session, run, config, np.sort(chosen), "prototype re-initialisation")

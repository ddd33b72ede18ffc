"""What an export reads: the run's kept samples (streamed, sample-id order), its provenance, the dataset's root."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from sqlalchemy.orm import Session

from .. import stats
from ..curation import BAND_LABELS
from ..db import is_postgres
from ..models import Dataset, Run
from ..runs.access import load_run, run_pool

#: rows fetched from the database at a time
ROWS_PER_CHUNK = 1000


def uid_of(dataset: str, external_id: str) -> str:
    """A sample's 128-bit uid as 32 hex digits, DataComp style: stable across runs and exports of its dataset, and
    distinct across datasets (the dataset's name is hashed with the sample's own id)."""
    return hashlib.md5(f"{dataset}\0{external_id}".encode(), usedforsecurity=False).hexdigest()


@dataclass
class ExportSource:
    """The subset of one run, read in one snapshot (Postgres), ready for a format's writer."""

    session: Session
    run: Run
    dataset: Dataset
    provenance: dict[str, Any]
    #: called with the rows read so far, every ``ROWS_PER_CHUNK`` rows and at the end of a full read
    progress: Callable[[int], None] | None = None

    @property
    def root(self) -> Path:
        return Path(self.dataset.root)

    @property
    def size(self) -> int:
        return int(self.provenance["subset_size"])

    def rows(self, offset: int = 0, limit: int | None = None) -> Iterator[dict[str, Any]]:
        """The kept samples in sample-id order, each with its ``uid``."""
        done = 0
        for row in stats.subset_rows(self.session, self.run, ROWS_PER_CHUNK, offset, limit):
            row["uid"] = uid_of(self.dataset.name, row["external_id"])
            yield row
            done += 1
            if self.progress is not None and done % ROWS_PER_CHUNK == 0:
                self.progress(done)
        if self.progress is not None:
            self.progress(done)

    def pool(self) -> NDArray[np.int64]:
        """The run's pool (the samples it curated from) in sample-id order: what the authors' ``subset.json``
        indexes into."""
        return np.sort(run_pool(self.session, self.run))


def export_source(session: Session, run_id: int, fmt: str, snapshot: bool = True) -> ExportSource:
    """The run's subset and provenance, in a REPEATABLE READ snapshot on Postgres when ``snapshot`` (a fresh
    session: so ``subset_size`` equals the rows that follow); 404 ``unknown_run``."""
    if snapshot and is_postgres(session):
        session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
    run = load_run(session, run_id)
    dataset = session.get(Dataset, run.dataset_id)
    assert dataset is not None  # a run's dataset is its foreign key
    provenance = stats.export_provenance(session, run) | {"format": fmt, "dataset": dataset.name, "steps_from": 1}
    return ExportSource(session, run, dataset, provenance)


@dataclass
class ArraySubset:
    """A subset curated from a file (``chexcurate curate``): the same rows and provenance convention as a run's
    export, keyed by the file's ``sample_id`` or ``external_id``, in that key's order."""

    key: str
    keys: NDArray
    prototype: NDArray[np.int64]
    distance: NDArray[np.float32]
    band: NDArray[np.int8]
    keep: NDArray[np.bool_]
    step: NDArray[np.int64]  # from 1
    provenance: dict[str, Any]
    root: Path = Path(".")
    progress: Callable[[int], None] | None = None

    @property
    def size(self) -> int:
        return int(self.keep.sum())

    def rows(self, offset: int = 0, limit: int | None = None) -> Iterator[dict[str, Any]]:
        kept = np.flatnonzero(self.keep)
        kept = kept[np.argsort(self.keys[kept], kind="stable")][offset : None if limit is None else offset + limit]
        for i in kept.tolist():
            key = self.keys[i].item()
            yield {
                "sample_id": key if self.key == "sample_id" else None,
                "external_id": key if self.key == "external_id" else None,
                "image_uri": "",
                "band": BAND_LABELS[int(self.band[i])],
                "prototype": int(self.prototype[i]),
                "distance": float(self.distance[i]),
                "epoch": 1,
                "step": int(self.step[i]),
            }

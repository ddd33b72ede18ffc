"""One curation step of a run: select on the manifest's super-batch, move the prototypes, record the decisions."""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray
from sqlalchemy.orm import Session

from ..curation import BAND_LABELS, Backend, unit_rows, update_prototypes
from ..errors import ApiError
from ..models import Manifest, Run
from ..stages import stage
from ..storage.decisions import insert_decisions
from .access import run_config
from .modes import eligible_rows, ensure_online, select_online
from .prototypes import PrototypeCache, current_prototypes, remember, store_version


def curate_step(
    session: Session,
    run: Run,
    manifest: Manifest,
    embeddings: NDArray,
    cache: PrototypeCache | None = None,
    backend: Backend | None = None,
) -> dict[str, Any]:
    """Select on the manifest's super-batch, apply the Sinkhorn EMA, persist decisions and the new version; the
    answer is the curated batch. The caller holds the run lock and commits."""
    config = run_config(run)
    ensure_online(config)
    with stage("prototypes"):
        protos = current_prototypes(session, run, cache)
    if embeddings.shape[1] != protos.shape[1]:
        raise ApiError(422, "bad_width", f"embeddings have width {embeddings.shape[1]}, prototypes {protos.shape[1]}")
    with stage("select"):
        features = unit_rows(embeddings)
        eligible = eligible_rows(session, run, manifest.epoch, features, manifest.sample_ids, protos, config, backend)
        seed = (run.seed, manifest.epoch, manifest.step)
        selection = select_online(session, run, manifest.epoch, features, protos, config, seed, eligible, backend)
    with stage("update"):
        moved, usage = update_prototypes(protos, features[selection.keep], config, backend)
    used = run.prototype_version
    run.step += 1
    new = store_version(session, run, moved, usage.tolist())
    remember(cache, run.id, new, moved)
    with stage("decisions"):
        insert_decisions(
            session,
            run.id,
            np.asarray(manifest.sample_ids, dtype=np.int64),
            manifest.epoch,
            run.step,
            manifest.id,
            selection.prototype,
            selection.distance,
            selection.band,
            selection.keep,
            used,
        )
    return {
        "manifest_id": manifest.id,
        "phase": "curation",
        "epoch": manifest.epoch,
        "step": manifest.step,
        "prototype_version": used,
        "new_prototype_version": new,
        "keep": selection.keep.tolist(),
        "bands": [BAND_LABELS[b] for b in selection.band],
        "prototypes": selection.prototype.tolist(),
        "distances": selection.distance.tolist(),
        "kept": int(selection.keep.sum()),
    }

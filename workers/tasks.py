"""Celery tasks. Each is idempotent: it re-reads the Postgres state under the run lock before acting,
so a redelivered or repeated task changes nothing that is already done."""

from __future__ import annotations

from typing import Any

from celery.signals import worker_init, worker_process_init

from service.arrays import read_npy
from service.errors import ApiError
from service.lifecycle import advance_if_epoch_done, init_warmup_prototypes, lock_run
from service.steps import apply_embeddings, manifest_phase

from .celery_app import TASK_CURATE, TASK_INIT_PROTOTYPES, app
from .state import warm_up, worker_state


@worker_init.connect
def _warm_main_process(**_: Any) -> None:
    warm_up(cuda=False)  # a prefork parent must not touch CUDA before forking its children


@worker_process_init.connect
def _warm_child_process(**_: Any) -> None:
    warm_up(cuda=True)


@app.task(name=TASK_CURATE)
def curate_manifest(run_id: int, manifest_id: str, body_key: str) -> dict[str, Any]:
    """Apply a curation manifest's embeddings (handed over in Redis); returns the curated batch or an error."""
    state = worker_state()
    body = state.redis.get(body_key)  # bytes: the client is built without decode_responses
    with state.sessions() as session:
        try:
            if body is None:  # hand-over gone: fine if the manifest was applied meanwhile (a duplicate task)
                _, stored = manifest_phase(session, run_id, manifest_id)
                if stored is not None:
                    return stored
                raise ApiError(409, "embeddings_expired", "the posted embeddings expired before a worker took them")
            result = apply_embeddings(
                session,
                run_id,
                manifest_id,
                read_npy(body if isinstance(body, bytes) else body.encode()),
                cache=state.prototypes,
                backend=state.backend,
            )
        except ApiError as exc:
            session.rollback()
            return {"error": exc.code, "status": exc.status, "detail": exc.detail, **exc.extra}
    state.redis.delete(body_key)
    return result


@app.task(name=TASK_INIT_PROTOTYPES)
def init_prototypes(run_id: int) -> dict[str, Any]:
    """k-means after warm-up, then open the first curation epoch. A no-op if another task already did it."""
    state = worker_state()
    with state.sessions() as session:
        run = lock_run(session, run_id)
        if run.phase == "warmup" and run.prototype_version == 0:
            init_warmup_prototypes(session, run)
            advance_if_epoch_done(session, run)
        session.commit()
        return {"run_id": run.id, "phase": run.phase, "prototype_version": run.prototype_version}

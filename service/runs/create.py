"""A new run: its configuration checked, its embedding set (if any) checked, its warm-up epoch materialised."""

from __future__ import annotations

import math
from typing import Any

from pydantic import ValidationError
from sqlalchemy.orm import Session

from ..curation import CurationConfig
from ..errors import ApiError
from ..ingest import load_dataset
from ..models import Run
from ..schemas.runs import RunCreate
from ..storage.embedding_sets import load_set
from .schedule import open_warmup


def curation_config(config: dict[str, Any]) -> CurationConfig:
    """The run's validated configuration, or 422 ``invalid_config`` naming each bad field."""
    try:
        return CurationConfig(**config)
    except ValidationError as exc:
        problems = [
            {"field": ".".join(str(p) for p in e["loc"]) or "config", "msg": e["msg"], "input": _shown(e["input"])}
            for e in exc.errors()
        ]
        named = "; ".join(f"{p['field']}: {p['msg']}" for p in problems)
        raise ApiError(422, "invalid_config", f"invalid curation config: {named}", fields=problems) from exc


def new_run(session: Session, body: RunCreate) -> Run:
    """The run, added and flushed with its warm-up epoch (the caller commits)."""
    load_dataset(session, body.dataset_id)
    config = curation_config(body.config)
    model_id = body.model_id
    if body.embedding_set_id is not None:
        embedding_set = load_set(session, body.embedding_set_id)
        if embedding_set.dataset_id != body.dataset_id:
            raise ApiError(
                422,
                "foreign_embedding_set",
                f"embedding set {embedding_set.id} is of dataset {embedding_set.dataset_id}, not {body.dataset_id}",
            )
        model_id = model_id or embedding_set.model_id
    run = Run(
        dataset_id=body.dataset_id,
        config=config.model_dump(),
        seed=config.seed,
        model_id=model_id,
        embedding_set_id=body.embedding_set_id,
    )
    session.add(run)
    session.flush()
    open_warmup(session, run)
    return run


def _shown(value: Any) -> Any:
    """A refused config value as the answer shows it: scalars as sent, anything bigger summarised."""
    if isinstance(value, bool | None) or (isinstance(value, int) and abs(value) < 10**30):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)  # JSON has no Infinity / NaN
    if isinstance(value, str) and len(value) <= 100:
        return value
    return f"<{type(value).__name__}>"

"""Per-process worker state, created lazily in the process that runs tasks (after any fork), so database
pools, Redis clients and a CUDA context are never inherited across a fork."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import redis
from sqlalchemy.orm import Session, sessionmaker

from service.config import get_settings
from service.curation import Backend, CpuBackend, CurationConfig, default_backend, select_batch
from service.db import make_engine, session_factory
from service.jobs.neighbours import NeighbourIndexCache
from service.runs.prototypes import PrototypeCache


@dataclass
class WorkerState:
    sessions: sessionmaker[Session]
    redis: redis.Redis
    backend: Backend
    neighbour_indexes: NeighbourIndexCache
    prototypes: PrototypeCache = field(default_factory=dict)


@lru_cache(maxsize=1)
def worker_state() -> WorkerState:
    settings = get_settings()
    if not settings.broker_url:
        raise RuntimeError("worker tasks need CHEX_BROKER_URL (Redis)")
    return WorkerState(
        sessions=session_factory(make_engine(settings.database_url)),
        redis=redis.Redis.from_url(settings.broker_url),
        backend=default_backend(),
        neighbour_indexes=NeighbourIndexCache(settings.neighbour_index_dir),
    )


def warm_up(cuda: bool) -> None:
    """Compile the FPS kernel (and with ``cuda`` initialise the device backend) before the first task."""
    rng = np.random.default_rng(0)
    features = rng.standard_normal((64, 8)).astype(np.float32)
    protos = np.eye(2, 8, dtype=np.float32)
    backend = default_backend() if cuda else CpuBackend()
    select_batch(features, protos, CurationConfig(k=2, max_central=2), seed=0, backend=backend)

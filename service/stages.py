"""Wall time per named stage of one request or task: the ``Server-Timing`` header of a curated batch and the
per-stage breakdown ``bench.roundtrip`` prints. Nothing is recorded unless a caller opened ``collecting()``."""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar

#: the stages of the request or task in progress (ms by name), or None when nobody asked
_current: ContextVar[dict[str, float] | None] = ContextVar("chex_stages", default=None)


@contextmanager
def collecting() -> Iterator[dict[str, float]]:
    """Record the stages run inside the block (threads started with this context included) into the dict yielded."""
    found: dict[str, float] = {}
    token = _current.set(found)
    try:
        yield found
    finally:
        _current.reset(token)


@contextmanager
def stage(name: str) -> Iterator[None]:
    """Add the block's wall time to ``name`` when stages are being collected."""
    found = _current.get()
    if found is None:
        yield
        return
    start = time.perf_counter()
    try:
        yield
    finally:
        found[name] = found.get(name, 0.0) + (time.perf_counter() - start) * 1e3


def add_stages(stages: Mapping[str, float], prefix: str = "") -> None:
    """Merge stages timed elsewhere (a worker's) into the ones being collected."""
    found = _current.get()
    if found is not None:
        for name, ms in stages.items():
            found[prefix + name] = found.get(prefix + name, 0.0) + float(ms)


def server_timing(stages: Mapping[str, float]) -> str:
    """The ``Server-Timing`` header value: ``name;dur=ms`` per stage, in the order they ran."""
    return ", ".join(f"{name};dur={ms:.2f}" for name, ms in stages.items())


def parse_server_timing(header: str) -> dict[str, float]:
    """The stages of a ``Server-Timing`` header (the inverse of ``server_timing``)."""
    stages: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in header.split(","))):
        name, _, rest = part.partition(";dur=")
        stages[name] = float(rest)
    return stages

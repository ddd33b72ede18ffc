"""A curated batch's embeddings handed from the API to a worker: parsed once by the API, sent as raw bytes.

The array's bytes (C order) wait in Redis under a short-lived key; its dtype and shape travel in the task's JSON
arguments, so the worker views the bytes as the array again without reading or checking an ``.npy`` header.
"""

from __future__ import annotations

import uuid
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import redis
from numpy.typing import NDArray


@dataclass(frozen=True)
class Handover:
    key: str
    dtype: str
    shape: tuple[int, ...]

    def as_arg(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_arg(cls, arg: dict[str, Any]) -> Handover:
        return cls(str(arg["key"]), str(arg["dtype"]), tuple(int(n) for n in arg["shape"]))


def hand_over(client: redis.Redis, manifest_id: str, arr: NDArray, ttl_seconds: int) -> Handover:
    """Put the array's bytes in Redis for ``ttl_seconds``; raises what the Redis client raises."""
    data = np.ascontiguousarray(arr)
    handover = Handover(f"chex:embeddings:{manifest_id}:{uuid.uuid4().hex}", data.dtype.str, tuple(data.shape))
    client.set(handover.key, data.data.cast("B"), ex=ttl_seconds)
    return handover


def take(client: redis.Redis, handover: Handover) -> NDArray | None:
    """The array handed over, or None when its key expired (or was taken and dropped already)."""
    data = client.get(handover.key)  # bytes: the client is built without decode_responses
    if data is None:
        return None
    return np.frombuffer(data, dtype=np.dtype(handover.dtype)).reshape(handover.shape)  # type: ignore[arg-type]


def drop(client: redis.Redis, handover: Handover) -> None:
    client.delete(handover.key)

"""A curated batch's embeddings handed from the API to a worker, and the worker's answer handed back.

The array's bytes (C order) wait in Redis under a short-lived key; its dtype and shape travel in the task's JSON
arguments, so the worker views the bytes as the array again without reading or checking an ``.npy`` header.
The answer comes back as one JSON value pushed on the hand-over's reply list, which the API waits on with a
blocking pop: one Redis round trip each way, where Celery's result backend stores the result, publishes it and
has the API fetch it again.
"""

from __future__ import annotations

import json
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
    #: the list the worker pushes its answer on
    reply: str = ""

    def as_arg(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_arg(cls, arg: dict[str, Any]) -> Handover:
        shape = tuple(int(n) for n in arg["shape"])
        return cls(str(arg["key"]), str(arg["dtype"]), shape, str(arg.get("reply", "")))


def hand_over(client: redis.Redis, manifest_id: str, arr: NDArray, ttl_seconds: int) -> Handover:
    """Put the array's bytes in Redis for ``ttl_seconds``; raises what the Redis client raises."""
    data = np.ascontiguousarray(arr)
    token = uuid.uuid4().hex
    handover = Handover(
        f"chex:embeddings:{manifest_id}:{token}", data.dtype.str, tuple(data.shape), f"chex:reply:{manifest_id}:{token}"
    )
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


def send_reply(client: redis.Redis, handover: Handover, reply: dict[str, Any], ttl_seconds: int) -> None:
    """Push the worker's answer for the API waiting on ``handover`` (kept ``ttl_seconds`` if nobody waits)."""
    if not handover.reply:
        return
    with client.pipeline() as pipe:
        pipe.rpush(handover.reply, json.dumps(reply, separators=(",", ":")))
        pipe.expire(handover.reply, ttl_seconds)
        pipe.execute()


def wait_reply(client: redis.Redis, handover: Handover, timeout: float) -> dict[str, Any] | None:
    """The worker's answer, or None when none came within ``timeout`` seconds."""
    popped = client.blpop([handover.reply], timeout=timeout)
    if popped is None:
        return None
    reply: dict[str, Any] = json.loads(popped[1])
    return reply

"""torch.distributed helpers, kept apart from the loop (open_clip layout). Every helper is the identity when the
process is not part of a process group, so the single-process path runs the same code."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str) -> World:
    """Join the torchrun process group when launched by torchrun (``WORLD_SIZE`` > 1): NCCL on CUDA, gloo on CPU."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.startswith("cuda"):
        torch.cuda.set_device(local_rank)
    return World(dist.get_rank(), dist.get_world_size(), local_rank)


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` of rank ``src`` on every rank (manifests, keep masks: small picklable values)."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank."""
    if not active():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def gather_rows(x: torch.Tensor, with_grad: bool = False) -> torch.Tensor:
    """Concatenate ``[n_r, D]`` tensors of every rank in rank order; ranks may hold different ``n_r``.

    With ``with_grad`` the result keeps the autograd graph of the local rows (the others are constants), as
    open_clip's ``gather_with_grad``: the backward all-reduces the gradient into each rank's own slice.
    """
    if not active():
        return x
    counts = [int(n) for n in gather_objects(int(x.shape[0]))]
    padded = torch.cat([x, x.new_zeros((max(counts) - x.shape[0], *x.shape[1:]))]).contiguous()
    if with_grad:
        import torch.distributed.nn.functional as dist_fn

        parts = list(dist_fn.all_gather(padded))
    else:
        parts = [torch.empty_like(padded) for _ in counts]
        dist.all_gather(parts, padded)
    return torch.cat([p[:n] for p, n in zip(parts, counts, strict=True)])


def barrier() -> None:
    if active():
        dist.barrier()


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()

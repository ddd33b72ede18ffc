"""Where the engine's heavy kernels run: the CPU (BLAS + a compiled FPS loop) or torch on a device.

The engine's logic stays in numpy; only the O(B*K*D) products and the farthest-point passes go through a
backend, so the CPU path is the one always tested and a CUDA device only changes where the arithmetic runs.
Both give the same decisions up to float32 rounding (exactly the same on exactly representable inputs).
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from functools import cache
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from numpy.typing import NDArray
from threadpoolctl import ThreadpoolController

from .groups import GroupLayout

if TYPE_CHECKING:
    import torch


class Backend(Protocol):
    @property
    def name(self) -> str: ...

    def matmul(self, a: NDArray[np.float32], b: NDArray[np.float32]) -> NDArray[np.float32]:
        """``a @ b`` for 2-D or batched 3-D float32 arrays."""
        ...

    def farthest_points(
        self,
        features: NDArray[np.float32],
        sq_norms: NDArray[np.float32],
        layout: GroupLayout,
        m: int,
        first: NDArray[np.intp],
    ) -> NDArray[np.intp]:
        """Seeded FPS in every group of ``layout``, starting at member ``first[g]``; ``[G, m]`` row indices.

        Each next pick is argmax_j min_s ||f_j - f_s|| over the group's unpicked members, first maximum
        (lowest row) on ties.
        """
        ...


#: products below this many multiply-adds run on one BLAS thread: a curation step's B x D x K product (640 x 1024
#: x 6 = 3.9 M) took 16 ms on two OpenBLAS threads on a busy 2-core box and 0.27 ms on one, as waking and joining
#: the pool costs more than the arithmetic; a 2560 x 1024 x 64 product (168 M) still gains from the pool
SINGLE_THREAD_MACS = 1 << 25


@cache
def _blas_pools() -> Any:
    """The process's BLAS thread pools, found once (scanning the loaded libraries takes milliseconds)."""
    return ThreadpoolController().select(user_api="blas")


@dataclass(frozen=True)
class CpuBackend:
    """numpy (BLAS) products, small ones on one thread, and the compiled FPS kernel."""

    name: str = "cpu"
    single_thread_macs: int = SINGLE_THREAD_MACS
    pools: Any = field(default_factory=_blas_pools, compare=False, repr=False)

    def threads_for(self, macs: int) -> AbstractContextManager[object]:
        """One BLAS thread for a product of ``macs`` multiply-adds below the threshold, else the pool as set."""
        return self.pools.limit(limits=1) if macs < self.single_thread_macs else nullcontext()

    def matmul(self, a: NDArray[np.float32], b: NDArray[np.float32]) -> NDArray[np.float32]:
        with self.threads_for(a.size * b.shape[-1]):  # rows x inner x columns (x batch for 3-D)
            return np.matmul(a, b)

    def farthest_points(
        self,
        features: NDArray[np.float32],
        sq_norms: NDArray[np.float32],
        layout: GroupLayout,
        m: int,
        first: NDArray[np.intp],
    ) -> NDArray[np.intp]:
        from .kernels import farthest_points

        return farthest_points(
            features, sq_norms * np.float32(0.5), layout.flat_rows, layout.starts, layout.counts, first, m
        )


@dataclass(frozen=True)
class TorchBackend:
    """Runs products with torch on ``device`` (``cuda``, ``cuda:1``, ``cpu``); TF32 is disabled for parity."""

    device: str = "cuda"
    name: str = "torch"

    def _tensor(self, array: NDArray) -> torch.Tensor:
        import torch

        torch.backends.cuda.matmul.allow_tf32 = False
        return torch.from_numpy(np.ascontiguousarray(array)).to(self.device)

    def matmul(self, a: NDArray[np.float32], b: NDArray[np.float32]) -> NDArray[np.float32]:
        import torch

        return torch.matmul(self._tensor(a), self._tensor(b)).cpu().numpy()

    def farthest_points(
        self,
        features: NDArray[np.float32],
        sq_norms: NDArray[np.float32],
        layout: GroupLayout,
        m: int,
        first: NDArray[np.intp],
    ) -> NDArray[np.intp]:
        """All groups at once on the device: members padded to ``[G, n_max, D]``, one batched pass per pick."""
        import torch

        rows = self._tensor(layout.rows)
        members = self._tensor(features)[rows]
        half_sq = self._tensor(sq_norms)[rows] / 2
        ar = torch.arange(len(layout.counts), device=self.device)
        # best_j = min over picks s of ||f_j - f_s||^2 / 2; -inf marks picks and padding so argmax skips them
        best = torch.where(self._tensor(layout.valid), torch.inf, -torch.inf).to(torch.float32)
        picks = []
        pick = self._tensor(first)
        for t in range(m):
            if t:
                pick = _first_argmax(best)
            picks.append(pick)
            best[ar, pick] = -torch.inf
            if t < m - 1:
                dots = torch.bmm(members, members[ar, pick].unsqueeze(2)).squeeze(2)
                best = torch.minimum(best, (half_sq + half_sq[ar, pick].unsqueeze(1)) - dots)
        return rows[ar.unsqueeze(1), torch.stack(picks, dim=1)].cpu().numpy()


def _first_argmax(values: torch.Tensor) -> torch.Tensor:
    """Index of the first maximum per row (torch.argmax does not promise the first one on every device)."""
    import torch

    top = values.max(dim=1, keepdim=True).values
    positions = torch.arange(values.shape[1], device=values.device).expand_as(values)
    return torch.where(values == top, positions, values.shape[1]).min(dim=1).values


def default_backend() -> Backend:
    """Torch on CUDA when a device is visible, else the CPU backend; torch is imported only to ask."""
    try:
        import torch

        if torch.cuda.is_available():
            return TorchBackend("cuda")
    except ImportError:  # pragma: no cover - torch is a hard dependency, kept defensive for slim images
        pass
    return CpuBackend()

"""Dense products for the engine: numpy on the CPU, torch on a GPU (same results within float32 rounding).

The engine's logic stays in numpy; only the O(B*K*D) and O(n^2*D) products go through a backend, so the
CPU path is the one always tested and a CUDA device only changes where the multiplications happen.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
from numpy.typing import NDArray


class Backend(Protocol):
    name: str
    #: whether whole per-prototype Gram blocks are cheaper than repeated matrix-vector passes
    prefers_gram: bool

    def matmul(self, a: NDArray[np.float32], b: NDArray[np.float32]) -> NDArray[np.float32]:
        """``a @ b`` for 2-D or batched 3-D float32 arrays."""
        ...


@dataclass(frozen=True)
class NumpyBackend:
    name: str = "numpy"
    prefers_gram: bool = False

    def matmul(self, a: NDArray[np.float32], b: NDArray[np.float32]) -> NDArray[np.float32]:
        return np.matmul(a, b)


@dataclass(frozen=True)
class TorchBackend:
    """Runs products with torch on ``device`` (``cuda``, ``cuda:1``, ``cpu``); TF32 is disabled for parity."""

    device: str = "cuda"
    name: str = "torch"
    prefers_gram: bool = True

    def matmul(self, a: NDArray[np.float32], b: NDArray[np.float32]) -> NDArray[np.float32]:
        import torch

        torch.backends.cuda.matmul.allow_tf32 = False
        ta = torch.from_numpy(np.ascontiguousarray(a)).to(self.device)
        tb = torch.from_numpy(np.ascontiguousarray(b)).to(self.device)
        return torch.matmul(ta, tb).cpu().numpy()


def default_backend() -> Backend:
    """Torch on CUDA when a device is visible, else numpy; torch is imported only to ask."""
    try:
        import torch

        if torch.cuda.is_available():
            return TorchBackend("cuda")
    except ImportError:  # pragma: no cover - torch is a hard dependency, kept defensive for slim images
        pass
    return NumpyBackend()

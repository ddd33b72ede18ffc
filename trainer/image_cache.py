"""Decoded, transformed images kept in memory between epochs: a curated run trains its subset for many epochs, and
on a CPU host decoding the same small files again costs more than the step that trains on them."""

from __future__ import annotations

import threading

import torch

#: (dataset root, image URI as the manifest gives it, the transform's description)
CacheKey = tuple[str, str, str]


class ImageCache:
    """Manifest image → the transform's pixel tensor, up to ``max_bytes`` in all; off at 0 bytes.

    Keyed by the URI under its root, as the manifest names it, so a hit costs a dictionary lookup and no file
    system call: the image files of a dataset are treated as fixed for the length of a training, as the service
    treats its rows. Only images that loaded are kept (the path checks and decoding happen on the miss), and once
    full, new images are decoded as usual and not kept (no eviction: an epoch reads every image once, so an LRU
    would only churn). Thread-safe: the loader threads share one cache, and a benchmark's arms can share one.
    """

    def __init__(self, max_bytes: int = 0) -> None:
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        self.max_bytes = max_bytes
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self.store: dict[CacheKey, torch.Tensor] = {}
        self.lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.store)

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0

    def get(self, key: CacheKey) -> torch.Tensor | None:
        found = self.store.get(key)
        with self.lock:
            if found is None:
                self.misses += 1
            else:
                self.hits += 1
        return found

    def put(self, key: CacheKey, pixels: torch.Tensor) -> None:
        size = pixels.element_size() * pixels.nelement()
        with self.lock:
            if self.bytes + size <= self.max_bytes and key not in self.store:
                self.store[key] = pixels.contiguous()
                self.bytes += size

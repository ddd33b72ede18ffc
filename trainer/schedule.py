"""Learning-rate schedule of the reference: linear warm-up, then cosine decay to zero over the horizon."""

from __future__ import annotations

import math


def cosine_lr(step: int, base_lr: float, warmup_steps: int, total_steps: int) -> float:
    """lr at optimiser step ``step`` (0-based); past ``total_steps`` it stays at zero rather than rising again."""
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return 0.5 * base_lr * (1.0 + math.cos(math.pi * progress))


def estimate_total_steps(
    samples: int, batch_size: int, epochs: int, curation_epochs: int, subset_ratio: float, accumulate: int = 1
) -> int:
    """Optimiser steps of a run: full curation epochs, then the later epochs over the (estimated) subset."""
    per_epoch = math.ceil(samples / batch_size)
    subset_per_epoch = math.ceil(samples * subset_ratio / batch_size)
    steps = curation_epochs * per_epoch + (epochs - curation_epochs) * subset_per_epoch
    return max(1, math.ceil(steps / accumulate))

"""Checkpoints: model, optimiser, scaler, step and run id, written atomically so a kill never leaves half a file."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

LATEST = "latest.pt"


def save_checkpoint(out_dir: Path, state: dict[str, Any]) -> Path:
    """Write ``latest.pt`` through a temporary file + fsync + rename (atomic on POSIX)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / LATEST
    tmp = out_dir / f".{LATEST}.{os.getpid()}.tmp"
    try:
        with open(tmp, "wb") as fh:
            torch.save(state, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a failed save (disk full, killed by an exception) leaves no half-file behind
        raise
    return path


def load_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint holds plain types and tensors only, so it loads with ``weights_only=True``."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    missing = {"model", "model_config", "optimizer", "step", "run_id"} - set(state)
    if missing:
        raise ValueError(f"{path}: not a resumable trainer checkpoint (missing {sorted(missing)})")
    return state

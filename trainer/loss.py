"""Contrastive loss of CLIP (symmetric InfoNCE), computed on the kept rows of a curated batch."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def clip_loss(img: torch.Tensor, txt: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Mean of the image→text and text→image cross-entropies; pair ``i`` is the positive of row/column ``i``.

    ``img`` and ``txt`` are L2-normalised ``[B, D]``; ``logit_scale`` is the already exponentiated temperature
    (what :meth:`ClipModel.forward` returns). Under DDP the caller passes the rows it gathered from all ranks.
    """
    if img.shape != txt.shape or img.ndim != 2:
        raise ValueError(f"img and txt must both be [B, D], got {tuple(img.shape)} and {tuple(txt.shape)}")
    logits = logit_scale * img @ txt.t()
    # the similarities may come out of an autocast region in half precision; the softmax is done in float32
    logits = logits.float()
    labels = torch.arange(img.shape[0], device=img.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2

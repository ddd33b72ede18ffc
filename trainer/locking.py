"""Locked towers, as open_clip's ``--lock-image`` / ``--lock-text``: a pretrained tower's weights stay fixed.

A tower is cut into groups in forward order (embeddings, each transformer layer or conv block, a final norm); a
lock freezes every group but the last ``unlocked`` ones, and the projections above the towers always train. A fully
locked tower is run without gradients and in eval mode (no dropout, batch-norm statistics fixed), so equal inputs
give equal outputs, which is what lets the text tower's outputs be cached.
"""

from __future__ import annotations

from torch import nn


def layer_groups(tower: nn.Module) -> list[nn.Module]:
    """The tower's parameter groups in forward order: transformers encoders (BERT, DINOv2, ViT) and the conv net."""
    blocks = getattr(tower, "blocks", None)
    if isinstance(blocks, nn.ModuleList):  # SmallConvNet
        return list(blocks)
    encoder = getattr(tower, "encoder", None)
    layers = getattr(encoder, "layer", None)
    if not isinstance(layers, nn.ModuleList):
        raise ValueError(f"cannot split a {type(tower).__name__} into layer groups to lock")
    groups: list[nn.Module] = []
    embeddings = getattr(tower, "embeddings", None)
    if isinstance(embeddings, nn.Module):
        groups.append(embeddings)
    groups += list(layers)
    for name in ("layernorm", "final_layer_norm", "pooler"):
        tail = getattr(tower, name, None)
        if isinstance(tail, nn.Module) and any(True for _ in tail.parameters()):
            groups.append(tail)
    return groups


def lock_tower(tower: nn.Module, unlocked: int = 0) -> None:
    """Freeze ``tower`` but for its last ``unlocked`` layer groups (0: all of it)."""
    if unlocked < 0:
        raise ValueError(f"unlocked layers must be >= 0, got {unlocked}")
    for param in tower.parameters():
        param.requires_grad_(False)
    if unlocked == 0:
        return
    groups = layer_groups(tower)
    if unlocked > len(groups):
        raise ValueError(f"cannot leave {unlocked} groups unlocked: the tower has {len(groups)}")
    for group in groups[len(groups) - unlocked :]:
        for param in group.parameters():
            param.requires_grad_(True)


def fully_locked(tower: nn.Module) -> bool:
    """Whether no parameter of ``tower`` trains."""
    return not any(p.requires_grad for p in tower.parameters())

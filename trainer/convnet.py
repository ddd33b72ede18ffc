"""A small convolutional image tower in plain ``torch.nn`` that learns in minutes on two CPU cores.

torchvision's wheel does not load beside the pinned torch here, so no ResNet from it: five blocks of 3×3 conv →
batch norm → ReLU → 2×2 max-pool, then a global average pool. At 64 px the last block sees 4×4 maps, and the
pooled width is the feature the projection reads. It exposes the little of the transformers interface the CLIP
model uses (``config.hidden_size``, ``pooler_output``), so it stands where a DINOv2 tower would.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

#: the ``model_type`` of a :class:`ClipConfig.vision_config` that asks for this tower
CONVNET = "small_cnn"


@dataclass
class ConvNetConfig:
    """Channel widths of the blocks; the last one is the feature width."""

    widths: tuple[int, ...] = (32, 64, 128, 128, 256)
    model_type: str = CONVNET

    def __post_init__(self) -> None:
        self.widths = tuple(int(w) for w in self.widths)
        if not self.widths or min(self.widths) < 1:
            raise ValueError(f"widths must be positive channel counts, got {self.widths}")

    @property
    def hidden_size(self) -> int:
        return self.widths[-1]

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "widths": list(self.widths)}


class SmallConvNet(nn.Module):
    """``[B, 3, H, W]`` grey radiographs (replicated channels) → ``pooler_output [B, widths[-1]]``."""

    def __init__(self, config: ConvNetConfig) -> None:
        super().__init__()
        self.config = config
        blocks: list[nn.Module] = []
        # the three channels are copies of one grey image: their mean is that image, so the first block reads one
        channels = 1
        for width in config.widths:
            blocks.append(
                nn.Sequential(
                    nn.Conv2d(channels, width, 3, padding=1, bias=False),
                    nn.BatchNorm2d(width),
                    nn.ReLU(inplace=True),
                    nn.MaxPool2d(2),
                )
            )
            channels = width
        self.blocks = nn.ModuleList(blocks)

    def forward(self, pixel_values: torch.Tensor) -> SimpleNamespace:
        x = pixel_values.mean(dim=1, keepdim=True)
        for block in self.blocks:
            x = block(x)
        return SimpleNamespace(pooler_output=x.mean(dim=(2, 3)))


def build_convnet(values: dict[str, Any]) -> SmallConvNet:
    """The tower from a ``vision_config`` dict (``model_type`` = :data:`CONVNET`)."""
    known = {"widths", "model_type"}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown {CONVNET} config keys: {unknown}")
    return SmallConvNet(ConvNetConfig(**values))

"""The fully convolutional feature network of the paper (DESIGN 2.2) and the scoring head (DESIGN 2.4).

    Conv 7×7 (1→h, ELU) → MaxPool 2×2/2 → 3 × ResidualBlock → Conv 1×1 (h→h, linear)
    ResidualBlock: Conv 5×5 (h→h, ELU) → Conv 1×1 (h→h, linear) + input cropped by 2 px on every side

No padding anywhere, no batch norm: a 32×32 patch gives a 1×1×h feature, a 512×512 image 241×241×h, one
feature per 32×32 neighbourhood at stride 2.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

RECEPTIVE_FIELD = 32
STRIDE = 2


def feature_map_size(size: int) -> int:
    """Output side length for an input side length (valid convolutions, one 2×2 pool)."""
    return (size - 6) // 2 - 12


class ResidualBlock(nn.Module):
    def __init__(self, h: int) -> None:
        super().__init__()
        self.conv5 = nn.Conv2d(h, h, kernel_size=5)
        self.conv1 = nn.Conv2d(h, h, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv1(F.elu(self.conv5(x)))
        return y + x[:, :, 2:-2, 2:-2]


class FeatureNet(nn.Module):
    """x: N×1×H×W in [-1, 1] → N×h×((H-6)//2-12)×((W-6)//2-12)."""

    def __init__(self, h: int = 16) -> None:
        super().__init__()
        if h <= 0:
            raise ValueError(f"h must be positive, got {h}")
        self.h = h
        self.stem = nn.Conv2d(1, h, kernel_size=7)
        self.pool = nn.MaxPool2d(kernel_size=2, stride=2)
        self.blocks = nn.Sequential(ResidualBlock(h), ResidualBlock(h), ResidualBlock(h))
        self.head = nn.Conv2d(h, h, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(F.elu(self.stem(x)))
        x = self.blocks(x)
        return self.head(x)


class ScoringHead(nn.Module):
    """Feature map + prototype → (heatmap, score); the part of the decision that travels inside the ONNX.

    ``mean`` and ``scale`` are 1×h×H'×W' (a global prototype is broadcast to every position; scale is all
    ones when distances are not standardised). heatmap = ‖(f − mean) / scale‖ (L2 or L1 over channels);
    score = max over the k×k mean-pooled heatmap (k = 1 is the paper's single-pixel maximum).
    """

    def __init__(self, distance: str = "l2", pooling: int = 1) -> None:
        super().__init__()
        if distance not in ("l2", "l1"):
            raise ValueError(f"distance must be 'l2' or 'l1', got {distance!r}")
        if pooling < 1:
            raise ValueError(f"pooling must be >= 1, got {pooling}")
        self.distance = distance
        self.pooling = pooling

    def forward(
        self, features: torch.Tensor, mean: torch.Tensor, scale: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        dev = (features - mean) / scale
        if self.distance == "l2":
            heatmap = torch.sqrt(torch.sum(dev * dev, dim=1))
        else:
            heatmap = torch.sum(torch.abs(dev), dim=1)
        pooled = heatmap
        if self.pooling > 1:
            pooled = F.avg_pool2d(heatmap.unsqueeze(1), kernel_size=self.pooling, stride=1).squeeze(1)
        score = torch.amax(pooled, dim=(1, 2))
        return heatmap, score


class InspectionModel(nn.Module):
    """Backbone + scoring head: the graph exported to ``model.onnx`` (inputs image, prototype_mean,
    prototype_scale; outputs heatmap, score)."""

    def __init__(self, backbone: FeatureNet, head: ScoringHead) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(
        self, image: torch.Tensor, prototype_mean: torch.Tensor, prototype_scale: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.head(self.backbone(image), prototype_mean, prototype_scale)

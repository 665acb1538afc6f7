"""Fixed Gaussian filters shared by the scoring head's map smoothing (trainer.model) and the context member's
blurs (trainer.context): one kernel, one separable convolution, exported as two plain Conv nodes."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def gaussian_kernel(sigma: float) -> torch.Tensor:
    """Normalised 1-D Gaussian of radius ceil(3σ)."""
    radius = max(1, math.ceil(3.0 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def separable_blur(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """N×1×H×W blurred by the 1-D ``kernel`` along rows, then columns (zero padding, same size)."""
    r = (kernel.shape[0] - 1) // 2
    rows = F.conv2d(x, kernel.reshape(1, 1, 1, -1), padding=(0, r))
    return F.conv2d(rows, kernel.reshape(1, 1, -1, 1), padding=(r, 0))

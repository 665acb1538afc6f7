"""A fixed bank of oriented, elongated line filters: the member of the default backbone that sees long lines.

The networks' 32-px field cannot see a crack's length: KolektorSDD's hidden cracks are faint dark lines
250–350 px long whose every 32-px window looks like the surface's own streaks (benchmarks/experiments/
RESULTS.md §5, §7). A second derivative of a Gaussian across a line times a long Gaussian along it (the shape
of the Leung–Malik and Schmid texture banks) integrates a line's contrast over its length. Per scale the bank
keeps only the strongest dark-line and bright-line response over its orientations, so a line's direction does
not matter and the prototype models "how line-like is this surface here", not where its streaks point.

Nothing here is learned: the filters follow from the scales alone, so the bank is rebuilt from its
description and exported inside ``model.onnx`` like any other member (AveragePool, Slice, a reflecting Pad,
Conv, ReduceMax and ReduceMin; the exporter writes the Pad's amounts with a few shape operators).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from linewatch.bundle.manifest import LineBankSpec
from trainer.grid import feature_map_size

# (σ across, elongation σ along / σ across) in input pixels: lines ~4 px wide integrated over ~±16 and ~±32 px
# (RESULTS.md §7). σ across is 1 px on the pooled image: narrower filters answer a 2-px line twice as strongly
# when it falls on one pooled pixel as when it straddles two.
DEFAULT_SCALES: tuple[tuple[float, float], ...] = ((2.0, 4.0), (2.0, 8.0))
# A long filter's angular half-width is about atan(1/elongation) (7° at 8): 16 angles, 11.25° apart, keep a
# line at any angle within ~2/3 of its best answer; 8 left gaps (KolektorSDD 0.890 → 0.908, RESULTS.md §7).
ORIENTATIONS = 16
# FeatureNet's cell i is centred on input pixel 2i + 15.5; pooled pixel j of the image without its first row
# and column covers input pixels 2j + 1 and 2j + 2 (centre 2j + 1.5): cell i is pooled pixel i + 7.
GRID_OFFSET = 7


def line_kernels(sigma_across: float, sigma_along: float, orientations: int = ORIENTATIONS) -> torch.Tensor:
    """orientations×1×k×k zero-mean, L1-normalised d²/dv² G(v; σ_across) · G(u; σ_along), u along the line at
    angle π·i/orientations; a dark line on a brighter surround responds positively."""
    radius = max(1, math.ceil(3.0 * max(sigma_across, sigma_along)))
    axis = torch.arange(-radius, radius + 1, dtype=torch.float64)
    y, x = torch.meshgrid(axis, axis, indexing="ij")
    out = []
    for i in range(orientations):
        theta = math.pi * i / orientations
        u = x * math.cos(theta) + y * math.sin(theta)
        v = -x * math.sin(theta) + y * math.cos(theta)
        g = torch.exp(-0.5 * (u / sigma_along) ** 2 - 0.5 * (v / sigma_across) ** 2)
        k = (v**2 / sigma_across**4 - 1.0 / sigma_across**2) * g
        k = k - k.mean()
        out.append(k / k.abs().sum())
    return torch.stack(out).unsqueeze(1).float()


class LineBank(nn.Module):
    """x: N×1×H×W → N×(2·scales)×((H-6)//2-12)×((W-6)//2-12), on FeatureNet's grid: per scale the largest
    (dark lines) and the smallest (bright lines) response over the orientations.

    The filters run on the 2×2 mean-pooled image with σ halved: the grid has stride 2 anyway, and a quarter
    of the pixels makes the long kernels affordable. Borders are reflected, as a part's surface continues;
    only the pooled pixels the grid needs are filtered.
    """

    def __init__(self, scales: Sequence[tuple[float, float]] = DEFAULT_SCALES,
                 orientations: int = ORIENTATIONS) -> None:
        super().__init__()
        if not scales:
            raise ValueError("a line bank needs at least one scale")
        if orientations < 1:
            raise ValueError(f"orientations must be >= 1, got {orientations}")
        for across, elongation in scales:
            if across <= 0 or elongation < 1:
                raise ValueError(f"line scale (σ across {across}, elongation {elongation}): σ must be > 0 "
                                 "and the elongation >= 1")
        self.scales = tuple((float(a), float(e)) for a, e in scales)
        self.orientations = orientations
        for s, (across, elongation) in enumerate(self.scales):
            # Buffers, not parameters: fixed filters that travel with the module (and into the ONNX graph).
            kernels = line_kernels(across / 2, across * elongation / 2, orientations)
            self.register_buffer(f"kernels{s}", kernels)

    @property
    def feature_dim(self) -> int:
        return 2 * len(self.scales)

    def spec(self) -> LineBankSpec:
        """The manifest's description of this bank: what rebuilds it exactly."""
        return LineBankSpec(scales=self.scales, orientations=self.orientations)

    def describe(self) -> dict[str, object]:
        """The same as a plain dict, for a backbone's provenance."""
        return {"kind": "line-bank", **self.spec().model_dump(mode="json")}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows, cols = feature_map_size(x.shape[2]), feature_map_size(x.shape[3])
        half = F.avg_pool2d(x[:, :, 1:, 1:], 2)
        out = []
        for s in range(len(self.scales)):
            kernels = getattr(self, f"kernels{s}")
            r = kernels.shape[-1] // 2
            # A reflection needs more pixels than it reflects: the smallest inputs repeat their edge instead.
            mode = "reflect" if r < min(half.shape[-2:]) else "replicate"
            padded = F.pad(half, (r, r, r, r), mode=mode)
            # pooled pixel GRID_OFFSET + i sits at padded index GRID_OFFSET + i + r, the centre of its window
            top = left = GRID_OFFSET
            window = padded[:, :, top : top + rows + 2 * r, left : left + cols + 2 * r]
            response = F.conv2d(window, kernels)
            out += [torch.amax(response, dim=1, keepdim=True), torch.amin(response, dim=1, keepdim=True)]
        return torch.cat(out, dim=1)

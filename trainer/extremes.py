"""The grey-level extremes member: how far beyond the good parts' grey levels a pixel lies, at full size.

The oldest check in machine vision: a crack is darker, a bright scratch brighter, than anything a good part
shows. Every other member sees the image through a 32-px field or on the 2×2-pooled image, where a 1-px dark
crack loses half its contrast or more and looks like a grass blade's shadow. Here each cell of FeatureNet's
grid takes the largest |x − mean(x)| of the input pixels in its 4×4 footprint (the cell's own 2×2 pixels and
half of each neighbour's), divided by the good images' typical spread: a standardised distance already, so
its prototype in ``prototype.npz`` is fixed (centre 0, scale 1; the fit's level then scales it), like the
whitened and context members'. The graph is a ReduceMean, Sub, Abs, Mul and one MaxPool.

It is the whitened member's complement (``trainer fit`` keeps one or the other, from the same number): where
the whitened good images are Gaussian, the matched filters are optimal and grey-level extremes are only that
noise's tails (seed-7 styles: random_phase −0.016, speckle −0.010 image AUROC with them); where they are not
(grass, gravel, weave, bricks, KolektorSDD), the texture's grey levels are bounded in a way a linear filter
does not use, and a thin dark crack leaves them (grass, research script: 0.857 → 0.881,
benchmarks/experiments/RESULTS.md §15).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F

from linewatch.bundle.manifest import ExtremesSpec
from trainer.channel_member import ChannelFit, ChannelMember, checked_folds
from trainer.grid import feature_map_size

WINDOW = 4  # input pixels per side of a cell's footprint
# FeatureNet's cell i is centred on input pixel 2i + 15.5: its 4×4 footprint starts at pixel 2i + 14.
FOOTPRINT_OFFSET = 14
# The smallest spread a member divides by (preprocessed units, [-1, 1] for 0..255): a flat part's sensor
# noise can be below one grey level, and a constant one has none.
MIN_SPREAD = 1.0 / 255.0


class ExtremesMember(ChannelMember[ExtremesSpec]):
    """x: N×1×H×W (preprocessed) → N×C×((H-6)//2-12)×((W-6)//2-12): the largest |x − mean(x)| / spread over
    each cell's footprint (C = 1), and with ``alone`` also the largest dark excursion (C = 2), a member the
    scoring head lets reject on its own (``ScoringSpec.alone_members``). Not the bright one: glints are how
    good metal varies (KolektorSDD: bright excursions rank its cracks at 0.42 image AUROC, and rejecting
    alone they cost 0.016 image / 0.025 pixel AUROC), and on the synthetic surfaces they added 0.003
    (RESULTS.md §16)."""

    kind = "extremes"

    def __init__(self, window: int = WINDOW, alone: bool = False) -> None:
        # the schema checks the window (even, 2..16)
        super().__init__(ExtremesSpec(window=window, alone=alone))
        # A buffer, not a parameter: fitted from good images, never trained; it travels into the ONNX graph.
        self.register_buffer("inverse_spread", torch.ones(1, 1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows, cols = feature_map_size(x.shape[2]), feature_map_size(x.shape[3])
        w = self._spec.window
        top = FOOTPRINT_OFFSET + 2 - w // 2  # the footprint is centred on the cell's 2×2 pixels
        centred = x - x.mean(dim=(2, 3), keepdim=True)
        # (in this order, the graph of a bundle without ``alone`` is byte for byte the thirteenth session's)
        magnitude = torch.abs(centred) * self.inverse_spread
        # top ≥ 0 for every window the schema allows (≤ 16); the slice ends inside the image (H ≥ 2·rows + 30)
        rows_, cols_ = slice(top, top + 2 * (rows - 1) + w), slice(top, top + 2 * (cols - 1) + w)
        largest = F.max_pool2d(magnitude[:, :, rows_, cols_], w, 2)
        if not self._spec.alone:
            return largest
        darker = (-centred * self.inverse_spread)[:, :, rows_, cols_]
        # A cell whose pixels all lie above the mean has a negative largest dark excursion: none (ReLU).
        return torch.cat([largest, torch.relu(F.max_pool2d(darker, w, 2))], dim=1)


@dataclass(frozen=True)
class ExtremesFit(ChannelFit[ExtremesMember]):
    """The extremes member's fit: kept where the whitened good images do not look Gaussian (and where they are
    flat: kurtosis nan)."""

    def note(self) -> str:
        """The provenance note: kept or left out, and why."""
        if math.isnan(self.kurtosis):
            return "kept: the good images are flat, and any grey level beyond theirs is a mark"
        verdict = "kept" if self.kept else "left out"
        sign = ">=" if self.kept else "<"
        return (f"{verdict}: the whitened good images' mean excess kurtosis {self.kurtosis:.3f} {sign} "
                f"{self.max_kurtosis:g} (where the texture is Gaussian its grey-level extremes are only its "
                "tails, and the whitened member is kept instead)")


def image_spreads(batches: Iterable[npt.NDArray[np.float32]]) -> npt.NDArray[np.float64]:
    """Each image's grey-level spread (standard deviation), batch by batch (N×1×H×W)."""
    return np.concatenate([b[:, 0].astype(np.float64).std(axis=(1, 2)) for b in batches])


def fit_extremes_members(
    template: ExtremesMember,
    batches: Iterable[npt.NDArray[np.float32]],
    groups: Sequence[int],
    n_folds: int,
    kurtosis: float,
    max_kurtosis: float,
) -> ExtremesFit:
    """Fit ``template``'s shape on the good images in ``batches`` (N×1×H×W), each with its fold in ``groups``
    (0 ≤ fold < ``n_folds``; 0 or 1 folds: no fold members). Kept unless the whitened good images look
    Gaussian (``kurtosis`` < ``max_kurtosis``, trainer.whitened); the images are only read when it is kept.
    The spread is the median of the images' own: a part with a large mark has a larger one, and must not set
    the unit for the rest."""
    n_groups = checked_folds(groups, n_folds, "an extremes member")
    fold_of = np.asarray(groups)
    keeps = [np.ones(len(fold_of), bool)] + ([fold_of != g for g in range(n_groups)] if n_groups > 1 else [])
    if kurtosis < max_kurtosis:
        return ExtremesFit(None, [], kurtosis, max_kurtosis)
    spreads = image_spreads(batches)
    if len(spreads) != len(groups):
        raise ValueError(f"{len(groups)} images were announced, {len(spreads)} came")
    members = []
    for keep in keeps:
        member = ExtremesMember(template.spec().window, template.spec().alone)
        member.inverse_spread.fill_(1.0 / max(float(np.median(spreads[keep])), MIN_SPREAD))
        member.fitted = True
        members.append(member.eval())
    return ExtremesFit(members[0], members[1:], kurtosis, max_kurtosis)

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

from linewatch.bundle.manifest import DARK_PATH_BLOCK, ExtremesSpec
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
    scoring head lets reject on its own (``ScoringSpec.alone_members``), then the dark path (``dark_path``)
    and the largest bright excursion (``bright``). The bright one only when asked for: glints are how good
    metal varies (KolektorSDD: bright excursions rank its cracks at 0.42 image AUROC, and rejecting alone they
    cost 0.003 image / 0.017 pixel AUROC, below the 0.95 pixel target), while a scratch that catches the light
    is a defect on a coating (the 11 synthetic extremes products 0.951 -> 0.957, grass scratches 0.73 - 0.80
    -> 0.73 - 0.89; RESULTS.md §21)."""

    kind = "extremes"

    @classmethod
    def from_spec(cls, spec: ExtremesSpec) -> ExtremesMember:
        """An unfitted member of this shape."""
        return cls(spec.window, spec.alone, spec.dark_path, spec.bright)

    def __init__(self, window: int = WINDOW, alone: bool = False, dark_path: int = 0,
                 bright: bool = False) -> None:
        # the schema checks the window (even, 2..16), the dark path (a multiple of 8) and that both the dark
        # path and the bright channel come only with alone
        super().__init__(ExtremesSpec(window=window, alone=alone, dark_path=dark_path, bright=bright))
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
        darkness = -centred * self.inverse_spread
        # A cell whose pixels all lie above the mean has a negative largest dark excursion: none (ReLU).
        channels = [largest, torch.relu(F.max_pool2d(darkness[:, :, rows_, cols_], w, 2))]
        if self._spec.dark_path:
            channels.append(torch.relu(dark_path_map(darkness, self._spec.dark_path_steps, rows, cols)))
        if self._spec.bright:
            brightness = centred * self.inverse_spread
            channels.append(torch.relu(F.max_pool2d(brightness[:, :, rows_, cols_], w, 2)))
        return torch.cat(channels, dim=1)


# The dark path's grid (DARK_PATH_BLOCK = 4): each 4×4 block of input pixels is represented by its darkest
# pixel, so a 1-px crack keeps its full depth while the path search runs on 1/16 of the pixels.
# Beyond the image: darker than nothing a path could take (finite, and representable in fp16).
OUTSIDE = -1.0e4


def dark_path_map(darkness: torch.Tensor, steps: int, rows: int, cols: int) -> torch.Tensor:
    """N×1×rows×cols: per feature cell, over the paths of 2h + 1 blocks (h = ``steps``, ExtremesSpec.
    dark_path_steps) centred in one of the cell's blocks, the largest of their lightest block's darkness. A
    grey-level path closing (Talbot and Appleton's path openings, 2007): a thin crack stays dark all along its
    length, where the darkest pixel of a good part (a pore, a shadow, a grain) is dark only briefly.
    KolektorSDD at its 1024×404 input: paths of 68 – 132 px rank its cracks at 0.950 – 0.961 image AUROC
    alone, its darkest pixel at 0.895 (RESULTS.md §20).

    ``darkness``: N×1×H×W, (mean − x) / spread at full resolution. A path advances one block per step, down or
    to the right, and may move one block sideways as it does (two 90° cones: between them every direction; the
    two diagonal cones of the paper added nothing on KolektorSDD, 0.951 with them). Per cone the best path of
    h + 1 blocks ending in each block, and the best one starting there; the lesser of the two is the best
    path centred there. h steps of a 3-block maximum, a shift and a minimum each way."""
    height, width = darkness.shape[2], darkness.shape[3]
    pad_h, pad_w = (-height) % DARK_PATH_BLOCK, (-width) % DARK_PATH_BLOCK
    blocks = F.max_pool2d(F.pad(darkness, (0, pad_w, 0, pad_h), value=OUTSIDE), DARK_PATH_BLOCK)
    best = None
    for axis in (2, 3):  # along rows (advancing down), along columns (advancing right)
        sideways = (1, 3) if axis == 2 else (3, 1)
        padding = (0, 1) if axis == 2 else (1, 0)
        ends = []
        for step in (1, -1):  # forward: paths ending in the block; backward: paths starting there
            end = blocks
            for _ in range(steps):
                reach = F.max_pool2d(end, sideways, 1, padding)  # the block and its two sideways neighbours
                end = torch.minimum(blocks, _shift(reach, axis, step))
            ends.append(end)
        centred = torch.minimum(ends[0], ends[1])
        best = centred if best is None else torch.maximum(best, centred)
    assert best is not None
    # Onto the cells: blocks of 2×2 pixels (each block's value twice per side); cell i's footprint of 4
    # pixels starts at pixel 2i + 14, that is 2-px blocks i + 7 and i + 8.
    halves = torch.repeat_interleave(torch.repeat_interleave(best, 2, dim=2), 2, dim=3)
    first = FOOTPRINT_OFFSET // 2
    return F.max_pool2d(halves[:, :, first:first + rows + 1, first:first + cols + 1], 2, 1)


def _shift(x: torch.Tensor, axis: int, step: int) -> torch.Tensor:
    """``x`` moved one block along ``axis`` (2: rows, 3: columns) by ``step`` (±1), ``OUTSIDE`` moved in."""
    size = x.shape[axis]
    pads = [0, 0, 0, 0]  # (left, right, top, bottom)
    pads[(0 if step > 0 else 1) + (2 if axis == 2 else 0)] = 1
    padded = F.pad(x, tuple(pads), value=OUTSIDE)
    return padded.narrow(axis, 0 if step > 0 else 1, size)


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
        member = ExtremesMember.from_spec(template.spec())
        member.inverse_spread.fill_(1.0 / max(float(np.median(spreads[keep])), MIN_SPREAD))
        member.fitted = True
        members.append(member.eval())
    return ExtremesFit(members[0], members[1:], kurtosis, max_kurtosis)

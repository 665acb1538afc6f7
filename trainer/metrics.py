"""Detection metrics without sklearn: AUROC (exact, ties counted half), ROC curves, a streaming pixel AUROC,
and the false-reject / miss rates at a threshold.

A part is rejected when its score is strictly above the threshold (``BundleManifest.threshold``).
Labels: 1 = defective (positive), 0 = good.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

from trainer.calibration import binomial_tail

FloatArray = npt.NDArray[np.float64]


def auroc(scores: npt.ArrayLike, labels: npt.ArrayLike) -> float | None:
    """Area under the ROC curve = P(score of a random defect > score of a random good part), ties count
    half (Mann-Whitney U). ``None`` when either class is empty (the AUROC is undefined then)."""
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels).ravel().astype(bool)
    if s.shape != y.shape:
        raise ValueError(f"scores ({s.shape}) and labels ({y.shape}) differ in length")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores contain NaN or infinity")
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    # Average ranks (1-based) with ties sharing the mean of their rank range.
    _, inverse, counts = np.unique(s, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    avg_rank = ends - (counts - 1) / 2.0
    rank_sum_pos = float(avg_rank[inverse][y].sum())
    return (rank_sum_pos - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)


def roc_curve(scores: npt.ArrayLike, labels: npt.ArrayLike) -> tuple[FloatArray, FloatArray]:
    """(false-positive rate, true-positive rate) at every distinct threshold, from (0, 0) to (1, 1)."""
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels).ravel().astype(bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("a ROC curve needs both good and defective samples")
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    last_of_run = np.r_[np.diff(s) != 0, True]  # one point per distinct score
    tp = np.cumsum(y)[last_of_run]
    fp = np.cumsum(~y)[last_of_run]
    return np.r_[0.0, fp / n_neg], np.r_[0.0, tp / n_pos]


@dataclass(frozen=True, slots=True)
class ThresholdRates:
    """What a threshold does to a labelled set: rejected good parts and passed defects."""

    threshold: float
    false_reject_rate: float | None  # good parts scored above the threshold / good parts
    miss_rate: float | None  # defects scored at or below the threshold / defects
    false_rejects: int
    misses: int


def rates_at_threshold(scores: npt.ArrayLike, labels: npt.ArrayLike, threshold: float) -> ThresholdRates:
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels).ravel().astype(bool)
    rejected = s > threshold
    n_good, n_defect = int((~y).sum()), int(y.sum())
    false_rejects = int((rejected & ~y).sum())
    misses = int((~rejected & y).sum())
    return ThresholdRates(
        threshold=float(threshold),
        false_reject_rate=false_rejects / n_good if n_good else None,
        miss_rate=misses / n_defect if n_defect else None,
        false_rejects=false_rejects,
        misses=misses,
    )


def auroc_from_counts(positive: npt.ArrayLike, negative: npt.ArrayLike) -> float:
    """AUROC from (weighted) counts of defective and good parts per score bin, bins in ascending score order;
    pairs in the same bin count half. Shared by the pixel AUROC (histogram bins) and the bootstrap (tied
    ranks weighted by how often a resample drew each part)."""
    pos = np.asarray(positive, dtype=np.float64)
    neg = np.asarray(negative, dtype=np.float64)
    neg_below = np.cumsum(neg) - neg
    return float((pos * (neg_below + 0.5 * neg)).sum() / (pos.sum() * neg.sum()))


def auroc_interval(
    groups: Sequence[tuple[npt.ArrayLike, npt.ArrayLike]],
    level: float = 0.95,
    n_boot: int = 2000,
    seed: int = 0,
) -> tuple[float, float] | None:
    """Percentile bootstrap interval of the mean image AUROC over ``groups`` of (scores, labels): one group
    for one data set, one per product for a mean over products. Good and defective parts are resampled
    separately within each group (their counts are fixed by the test set), so the interval says how much the
    figure would move with other test parts drawn the same way: with 20 good and 30 defective parts per
    product it is several hundredths wide, and a difference inside it is not one.
    ``None`` when a group lacks a class."""
    rng = np.random.default_rng(seed)
    prepared = []
    for scores, labels in groups:
        s = np.asarray(scores, dtype=np.float64).ravel()
        y = np.asarray(labels).ravel().astype(bool)
        if s.shape != y.shape:
            raise ValueError(f"scores ({s.shape}) and labels ({y.shape}) differ in length")
        if not y.any() or y.all():
            return None
        _, inverse = np.unique(s, return_inverse=True)
        prepared.append((inverse[y], inverse[~y], int(inverse.max()) + 1))

    def resampled(ranks: npt.NDArray[np.intp], n_unique: int) -> FloatArray:
        """Counts per tied-rank bin of one resample with replacement (multinomial counts as weights)."""
        drawn = rng.multinomial(ranks.size, np.full(ranks.size, 1.0 / ranks.size))
        return np.bincount(ranks, weights=drawn, minlength=n_unique)

    reps = np.zeros(n_boot)
    for pos, neg, n_unique in prepared:
        for b in range(n_boot):
            reps[b] += auroc_from_counts(resampled(pos, n_unique), resampled(neg, n_unique))
    reps /= len(prepared)
    tail = 100 * (1 - level) / 2
    lo, hi = np.percentile(reps, [tail, 100 - tail])
    return float(lo), float(hi)


def rate_upper_bound(count: int, n: int, level: float = 0.95) -> float | None:
    """One-sided Clopper-Pearson upper bound of a rate seen ``count`` times in ``n`` parts: the largest true
    rate under which so few would be seen with probability 1 - ``level``. 0 false rejects of 73 good parts
    still allow 4.0 % at 95 %: a test set that small cannot show a 0.5 % false-reject rate."""
    if n <= 0:
        return None
    if not 0 <= count <= n:
        raise ValueError(f"count {count} outside 0..{n}")
    if count == n:
        return 1.0
    alpha = 1.0 - level
    lo, hi = count / n, 1.0
    for _ in range(100):  # P(X <= count) falls as the rate rises: bisect for where it crosses alpha
        mid = (lo + hi) / 2
        if 1.0 - binomial_tail(n, mid, count + 1) > alpha:
            lo = mid
        else:
            hi = mid
    return hi


class PixelAuroc:
    """Pixel-level AUROC over many images without holding every pixel: scores are counted into ``bins``
    equal-width bins over [low, high] per class; pairs in the same bin count half. With 2**16 bins the error
    is at most the fraction of (defect, good) pixel pairs that share a bin, far below the third decimal."""

    def __init__(self, low: float, high: float, bins: int = 1 << 16) -> None:
        if not (np.isfinite(low) and np.isfinite(high)):
            raise ValueError(f"pixel AUROC range must be finite, got [{low}, {high}]")
        self.low = float(low)
        self.span = max(float(high) - float(low), 1e-12)
        self.bins = bins
        self.positive = np.zeros(bins, dtype=np.int64)
        self.negative = np.zeros(bins, dtype=np.int64)

    def add(self, scores: npt.ArrayLike, mask: npt.ArrayLike) -> None:
        """One image: per-pixel scores and the defect mask (truthy = defective) of the same shape."""
        s = np.asarray(scores, dtype=np.float64).ravel()
        m = np.asarray(mask).ravel().astype(bool)
        if s.shape != m.shape:
            raise ValueError(f"pixel scores ({s.shape}) and mask ({m.shape}) differ in size")
        idx = np.clip(((s - self.low) / self.span * self.bins).astype(np.int64), 0, self.bins - 1)
        self.positive += np.bincount(idx[m], minlength=self.bins)
        self.negative += np.bincount(idx[~m], minlength=self.bins)

    def value(self) -> float | None:
        if self.positive.sum() == 0 or self.negative.sum() == 0:
            return None
        return auroc_from_counts(self.positive, self.negative)


def heatmap_to_image(
    heatmap: npt.NDArray[np.float32],
    input_hw: tuple[int, int],
    image_hw: tuple[int, int],
    stride: int = 2,
    receptive_field: int = 32,
) -> npt.NDArray[np.float32]:
    """An H'×W' distance map resampled onto the original image's pixels (for pixel AUROC).

    Cell (r, c) describes the neighbourhood centred at (stride·r + rf/2, stride·c + rf/2) of the model input
    (continuous coordinates, pixel i spanning [i, i+1)); the input is the image stretched to ``input_hw``.
    Bilinear in between; beyond the outermost centres the nearest cell's value (the network sees no
    further).
    """
    in_h, in_w = input_hw
    img_h, img_w = image_hw
    sy, sx = in_h / img_h, in_w / img_w
    half = receptive_field / 2.0
    # Inverse map: image pixel index (X, Y) → cell coordinates (OpenCV: cell c sits at index c).
    matrix = np.array(
        [[sx / stride, 0.0, (0.5 * sx - half) / stride], [0.0, sy / stride, (0.5 * sy - half) / stride]],
        dtype=np.float64,
    )
    out = cv2.warpAffine(
        np.ascontiguousarray(heatmap, dtype=np.float32), matrix, (img_w, img_h),
        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REPLICATE,
    )
    return np.asarray(out, dtype=np.float32)

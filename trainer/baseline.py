"""The raw-pixel prototype baseline: the "difference to an ideal prototype" the paper starts from.

Prototype = mean of the good training images after the bundle's preprocessing; a test image's distance map
is the mean absolute difference to that prototype over every k×k neighbourhood (k = 32, the network's
receptive field), its score the maximum. Every evaluation reports it beside the network, so the report
shows what the learned features add.
"""

from __future__ import annotations

import cv2
import numpy as np
import numpy.typing as npt

DEFAULT_NEIGHBOURHOOD = 32


class RawPixelBaseline:
    """Fold in good images (``add``), ``finish``, then ``heatmaps``/``scores`` of N×1×H×W batches."""

    def __init__(self, neighbourhood: int = DEFAULT_NEIGHBOURHOOD) -> None:
        if neighbourhood < 1:
            raise ValueError(f"neighbourhood must be >= 1, got {neighbourhood}")
        self.neighbourhood = neighbourhood
        self.n_images = 0
        self._sum: npt.NDArray[np.float64] | None = None
        self._prototype: npt.NDArray[np.float32] | None = None

    def add(self, batch: npt.NDArray[np.float32]) -> None:
        b = np.asarray(batch, dtype=np.float64)
        if b.ndim != 4 or b.shape[1] != 1:
            raise ValueError(f"expected N×1×H×W images, got {b.shape}")
        total = b.sum(axis=0)[0]
        if self._sum is None:
            self._sum = total
        elif self._sum.shape != total.shape:
            raise ValueError(f"image size {total.shape} differs from the earlier {self._sum.shape}")
        else:
            self._sum += total
        self.n_images += b.shape[0]

    def finish(self) -> npt.NDArray[np.float32]:
        if self._sum is None or self.n_images == 0:
            raise ValueError("the raw-pixel baseline needs at least one good image")
        self._prototype = (self._sum / self.n_images).astype(np.float32)
        return self._prototype

    @property
    def prototype(self) -> npt.NDArray[np.float32]:
        if self._prototype is None:
            raise ValueError("call finish() before scoring")
        return self._prototype

    def heatmaps(self, batch: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """N×(H-k+1)×(W-k+1): mean |x - prototype| over each k×k window (valid positions only)."""
        k = self.neighbourhood
        out = []
        for image in np.asarray(batch, dtype=np.float32)[:, 0]:
            diff = np.abs(image - self.prototype)
            integral = cv2.integral(diff, sdepth=cv2.CV_64F)
            window = integral[k:, k:] - integral[:-k, k:] - integral[k:, :-k] + integral[:-k, :-k]
            out.append((window / (k * k)).astype(np.float32))
        return np.stack(out)

    def scores(self, batch: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        heat = self.heatmaps(batch)
        return np.asarray(heat.reshape(heat.shape[0], -1).max(axis=1), dtype=np.float32)

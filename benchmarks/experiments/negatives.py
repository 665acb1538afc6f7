"""Experimental local negatives for ``trainer.triplets.TripletSampler`` (issue 3 research).

``ContrastSampler`` replaces two of the sampler's local negatives:

- ``curve`` → a crack/scratch that *crosses* the 32×32 patch (real cracks and scratches are long compared
  to one neighbourhood), gently jagged (a slow wiggle on a slight bend), 1.5–7 px wide, dark in 70 % of cases;
- ``blob``  → a smooth-edged brightness change,

both with an amplitude relative to the patch's own contrast (1–4 × its standard deviation, with a floor),
so the defect is visible on a busy texture and not absurd on a calm one — in the sampler the amplitude is
absolute, which on a high-contrast texture gives defects indistinguishable from the texture itself.

The product owns these negatives now: ``trainer.triplets`` with ``local_contrast="relative"`` (``trainer
pretrain --local-contrast relative``) gives the same patches for the A1 curve shape. This copy stays only
for the curve-shape knobs the probes sweep (``train_probe.py --curve``) and to reproduce RESULTS.md.
"""

from __future__ import annotations

import numpy as np

from trainer.triplets import Patches, TripletSampler

STD_FLOOR = 0.05  # input units ([-1, 1]): ~6 grey levels


class ContrastSampler(TripletSampler):
    curve_contrast: tuple[float, float] = (1.0, 4.0)
    curve_width: tuple[float, float] = (0.6, 3.0)  # Gaussian sigma of the line profile, px
    curve_wiggle: tuple[float, float] = (0.0, 1.0)  # amplitude of the jagged deviation, px
    curve_wiggle_freq: tuple[float, float] = (0.05, 0.35)  # its frequency, rad/px
    blob_contrast: tuple[float, float] = (1.0, 2.5)
    p_dark: float = 0.7

    def _relative_amplitude(self, base: Patches, rng: np.random.Generator, lo_hi: tuple[float, float]) -> np.ndarray:
        m = base.shape[0]
        std = np.maximum(base.std(axis=(1, 2)), STD_FLOOR)
        sign = np.where(rng.random(m) < self.p_dark, -1.0, 1.0)
        return (sign * rng.uniform(*lo_hi, m) * std).astype(np.float32)

    def _curve(self, base: Patches, rng: np.random.Generator) -> Patches:
        m, p = base.shape[0], self.config.patch_size
        py, px = rng.uniform(0.25 * p, 0.75 * p, (2, m)).astype(np.float32)
        theta = rng.uniform(0.0, np.pi, m).astype(np.float32)
        bend = rng.uniform(-1.5, 1.5, m).astype(np.float32) / p
        wig_a = rng.uniform(*self.curve_wiggle, m).astype(np.float32)
        wig_f = rng.uniform(*self.curve_wiggle_freq, m).astype(np.float32)
        wig_ph = rng.uniform(0.0, 2 * np.pi, m).astype(np.float32)
        width = rng.uniform(*self.curve_width, m).astype(np.float32)
        half_length = rng.uniform(0.5 * p, 1.5 * p, m).astype(np.float32)
        ys, xs = self._grid()
        dy, dx = ys - py[:, None, None], xs - px[:, None, None]
        cos, sin = np.cos(theta)[:, None, None], np.sin(theta)[:, None, None]
        along = dx * cos + dy * sin
        across = (
            -dx * sin
            + dy * cos
            - bend[:, None, None] * along**2
            - wig_a[:, None, None] * np.sin(wig_f[:, None, None] * along + wig_ph[:, None, None])
        )
        alpha = np.exp(-(across**2) / (2 * width[:, None, None] ** 2))
        alpha *= np.clip(half_length[:, None, None] - np.abs(along), 0.0, 1.0)
        amp = self._relative_amplitude(base, rng, self.curve_contrast)
        return np.clip(base + amp[:, None, None] * alpha, -1.0, 1.0).astype(np.float32)

    def _blob(self, base: Patches, rng: np.random.Generator) -> Patches:
        m, p = base.shape[0], self.config.patch_size
        cy, cx = rng.uniform(0.3 * p, 0.7 * p, (2, m)).astype(np.float32)
        sy, sx = rng.uniform(0.08 * p, 0.3 * p, (2, m)).astype(np.float32)
        ys, xs = self._grid()
        alpha = np.exp(
            -((ys - cy[:, None, None]) ** 2) / (2 * sy[:, None, None] ** 2)
            - (xs - cx[:, None, None]) ** 2 / (2 * sx[:, None, None] ** 2)
        )
        amp = self._relative_amplitude(base, rng, self.blob_contrast)
        return np.clip(base + amp[:, None, None] * alpha, -1.0, 1.0).astype(np.float32)


class DefectBank:
    """Negatives made by ``linewatch.surfaces.inject_defect`` (the same generator as ``trainer synth``'s
    test defects: scratch, spot, crack, dent, missing pattern, noise patch) on whole images, cut at
    positions where the defect lies inside the 32×32 patch.

    For each class image and scale, ``versions`` defective copies are rendered once. A triplet: anchor =
    clean image i at (y, x), positive = clean image j at (y, x), negative = a defective copy of image k
    at (y, x), with (y, x) chosen so the patch's central 16×16 holds defect pixels.
    """

    def __init__(self, classes, scales, versions: int, rng: np.random.Generator, kinds=None, patch: int = 32):
        import cv2

        from linewatch.surfaces import DEFECT_KINDS, inject_defect

        kinds = tuple(kinds or DEFECT_KINDS)
        self.patch = patch
        self.entries = []  # (clean stack at one scale, defective image, mask centres, class id)
        for ci, c in enumerate(classes):
            if len(c.images) < 2:
                continue
            for side in scales:
                stack = np.stack([
                    cv2.resize(np.asarray(im, np.uint8), (side, side), interpolation=cv2.INTER_AREA)
                    if im.shape != (side, side) else np.asarray(im, np.uint8)
                    for im in c.images
                ])
                for _ in range(versions):
                    k = int(rng.integers(len(stack)))
                    kind = kinds[int(rng.integers(len(kinds)))]
                    bad, mask = inject_defect(stack[k], kind, rng)
                    ys, xs = np.nonzero(mask)
                    if len(ys) == 0:
                        continue
                    self.entries.append((stack, k, bad, np.stack([ys, xs], 1), ci))

    def sample(self, n: int, rng: np.random.Generator):
        p = self.patch
        a = np.empty((n, p, p), np.float32)
        b = np.empty_like(a)
        c = np.empty_like(a)
        for t, e in enumerate(rng.integers(len(self.entries), size=n)):
            stack, k, bad, pts, _ = self.entries[e]
            side = stack.shape[1]
            cy, cx = pts[int(rng.integers(len(pts)))]
            y = int(np.clip(cy - p // 2 + rng.integers(-p // 4, p // 4 + 1), 0, side - p))
            x = int(np.clip(cx - p // 2 + rng.integers(-p // 4, p // 4 + 1), 0, side - p))
            others = [i for i in range(len(stack)) if i != k]
            i = others[int(rng.integers(len(others)))]
            j = others[int(rng.integers(len(others)))] if len(others) > 1 else k
            if j == i and len(others) > 1:
                j = others[(others.index(i) + 1) % len(others)]
            a[t] = stack[i, y : y + p, x : x + p]
            b[t] = stack[j, y : y + p, x : x + p]
            c[t] = bad[y : y + p, x : x + p]
        scale = np.float32(2.0 / 255.0)
        return a * scale - 1, b * scale - 1, c * scale - 1

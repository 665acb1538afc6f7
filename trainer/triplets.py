"""Triplet sampling (DESIGN 2.3): anchor a and positive b from one class, negative c from "another class".

For a class with augmentation (textures, surfaces, products):

- the source images are resized to each of ``scales`` (paper: 512, 256, 128, 64 px) once, up front; a
  triplet draws one scale, so one 32×32 patch size sees several scales of the texture;
- a is a patch at a random position of image i; b is the patch at the *same position* of another image
  j of the same class (the same image when the class has only one), since some textures have a global
  layout;
- c is one of: a patch of another class (random image and position, same scale) — ``cross_class``; a
  same-class patch with a rectangle replaced by Gaussian noise — ``noise`` (the paper's augmentation,
  the opposite of random erasing: it teaches sensitivity to local deviations); or, as options beyond
  the paper (issue 3), a same-class patch with a realistic local defect — ``blob`` (smooth-edged
  brightness change), ``curve`` (thin dark or bright curve: a scratch or crack), ``cutpaste`` (a piece
  cut from elsewhere in the same image), ``blur`` (local blur or smear).

How strong a blob or curve is (``local_contrast``): ``"absolute"`` draws its brightness change from
``local_amplitude`` in input units, whatever the patch; ``"relative"`` (contrast-aware, from the issue 3
research, benchmarks/experiments/negatives.py) draws it as a multiple of the patch's own standard
deviation, mostly dark, with curves that cross the patch like real cracks and scratches. An absolute
change is invisible on a busy texture and absurd on a calm one; a relative one is a defect on both.

A class without augmentation (CIFAR-like: images already patch-sized) gives a = image i, b = image j of
the same class and c = an image of another such class, nothing else.

Everything is vectorised over the triplets (sliding-window views, broadcasting), so a sampler yields
several hundred thousand triplets per minute on one core, and it is deterministic under its
``numpy.random.Generator``. Patches are returned as float16 in [-1, 1] (the network's input scaling; a
triplet set of 50 000 is 300 MB instead of 600).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from trainer.data.images import to_uint8

NEGATIVE_KINDS: tuple[str, ...] = ("cross_class", "noise", "blob", "curve", "cutpaste", "blur")
LOCAL_KINDS: tuple[str, ...] = ("blob", "curve", "cutpaste", "blur")
LOCAL_CONTRASTS: tuple[str, ...] = ("absolute", "relative")
_KIND_CODE = {kind: code for code, kind in enumerate(NEGATIVE_KINDS)}
_CHUNK = 4096  # triplets per vectorised step: bounds the temporaries (a few MB each)

# local_contrast="relative": the settings of the research sampler behind backbone "A1_mix_paper".
_STD_FLOOR = 0.05  # input units (~6 grey levels): a flat patch still gets a visible defect
_RELATIVE_CONTRAST = {"blob": (1.0, 2.5), "curve": (1.0, 4.0)}  # × the patch's standard deviation
_P_DARK = 0.7  # cracks, pits and scratches are mostly darker than the surface around them

Patches = npt.NDArray[np.float32]  # m×P×P


@dataclass
class ImageClass:
    """One class of the triplet task. ``images``: 2-D grayscale arrays, any size and depth."""

    name: str
    images: Sequence[npt.NDArray[Any]]
    augment: bool = True  # False: CIFAR-like, whole image is the patch, no rescale, no corruption
    weight: float = 1.0  # relative probability that a triplet's anchor comes from this class


@dataclass(frozen=True)
class TripletConfig:
    """How triplets are drawn. Probabilities of the negative kinds: ``p_noise`` + ``p_local`` ≤ 1, the
    rest are cross-class negatives (all synthetic when there is only one augmented class)."""

    patch_size: int = 32
    scales: tuple[int, ...] = (512, 256, 128, 64)
    p_noise: float = 0.5
    p_local: float = 0.0
    local_kinds: tuple[str, ...] = LOCAL_KINDS
    noise_size_px: tuple[int, int] = (4, 16)  # side range of the Gaussian-noise rectangle
    noise_sigma: tuple[float, float] = (0.1, 0.5)  # its standard deviation (input units, range [-1, 1])
    local_amplitude: tuple[float, float] = (0.15, 0.6)  # blob/curve brightness change (input units)
    local_contrast: str = "absolute"  # "absolute" (local_amplitude) or "relative" (× the patch's spread)
    # Each source image shifted so its mean is mid-grey (0 in input units), as `trainer fit`'s default
    # normalise="image_mean" presents images to the network.
    centre_images: bool = False

    def __post_init__(self) -> None:
        if self.patch_size < 8:
            raise ValueError(f"patch_size must be >= 8, got {self.patch_size}")
        if not self.scales or min(self.scales) < self.patch_size:
            raise ValueError(f"every scale must be >= patch_size {self.patch_size}, got {self.scales}")
        if not (
            0.0 <= self.p_noise <= 1.0 and 0.0 <= self.p_local <= 1.0 and self.p_noise + self.p_local <= 1.0
        ):
            raise ValueError(
                f"need 0 <= p_noise, p_local and p_noise + p_local <= 1, got {self.p_noise}, {self.p_local}"
            )
        unknown = set(self.local_kinds) - set(LOCAL_KINDS)
        if unknown or (self.p_local > 0 and not self.local_kinds):
            raise ValueError(
                f"local_kinds must be a non-empty subset of {LOCAL_KINDS}, got {self.local_kinds}"
            )
        if self.local_contrast not in LOCAL_CONTRASTS:
            raise ValueError(f"local_contrast must be one of {LOCAL_CONTRASTS}, got {self.local_contrast!r}")
        lo, hi = self.noise_size_px
        if not 1 <= lo <= hi <= self.patch_size:
            raise ValueError(
                f"noise_size_px must satisfy 1 <= low <= high <= patch_size, got {self.noise_size_px}"
            )


@dataclass
class Triplets:
    """n triplets: three n×P×P float16 arrays in [-1, 1] and the kind of each negative."""

    anchor: npt.NDArray[np.float16]
    positive: npt.NDArray[np.float16]
    negative: npt.NDArray[np.float16]
    negative_kind: npt.NDArray[np.int8] = field(repr=False)  # index into NEGATIVE_KINDS

    def __len__(self) -> int:
        return int(self.anchor.shape[0])

    def kind_counts(self) -> dict[str, int]:
        counts = np.bincount(self.negative_kind.astype(np.int64), minlength=len(NEGATIVE_KINDS))
        return {kind: int(c) for kind, c in zip(NEGATIVE_KINDS, counts, strict=True)}


def _resize_u8(image: npt.NDArray[Any], side: int) -> npt.NDArray[np.uint8]:
    gray = to_uint8(image)
    if gray.shape == (side, side):
        return gray
    shrink = side < min(gray.shape)
    interpolation = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    return np.asarray(cv2.resize(gray, (side, side), interpolation=interpolation), dtype=np.uint8)


def _centred(image: npt.NDArray[Any], centre: bool) -> npt.NDArray[Any]:
    """The image in 8 bit with its mean moved to mid-grey (clipped), or unchanged."""
    if not centre:
        return image
    gray = to_uint8(image).astype(np.float32)
    return np.clip(np.round(gray - gray.mean() + 127.5), 0, 255).astype(np.uint8)


def _to_unit_range(patches: npt.NDArray[np.uint8]) -> Patches:
    return patches.astype(np.float32) * np.float32(2.0 / 255.0) - np.float32(1.0)


class _Group:
    """The images of several classes at one size, stacked, with per-class index ranges."""

    def __init__(self, per_class: list[list[npt.NDArray[np.uint8]]], side: int, patch: int) -> None:
        counts = [len(images) for images in per_class]
        self.first = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
        self.count = np.asarray(counts, dtype=np.int64)
        stack = np.stack([img for images in per_class for img in images]).reshape(-1, side, side)
        self.stack = stack
        self.side = side
        # windows[i, y, x] is the P×P patch of image i at (y, x): a view, gathered without index grids.
        self.windows = np.lib.stride_tricks.sliding_window_view(stack, (patch, patch), axis=(1, 2))


class TripletSampler:
    """Draws triplets from a fixed set of classes (images are resized and stored once, as uint8)."""

    def __init__(self, classes: Sequence[ImageClass], config: TripletConfig | None = None) -> None:
        self.config = config or TripletConfig()
        cfg = self.config
        usable = [c for c in classes if len(c.images) > 0 and c.weight > 0]
        if not usable:
            raise ValueError("no class with images (and a positive weight) to sample triplets from")
        self.classes = usable
        self.augmented = [c for c in usable if c.augment]
        self.plain = [c for c in usable if not c.augment]
        self._scales = (
            {
                side: _Group(
                    [[_resize_u8(_centred(img, cfg.centre_images), side) for img in c.images]
                     for c in self.augmented],
                    side,
                    cfg.patch_size,
                )
                for side in cfg.scales
            }
            if self.augmented
            else {}
        )
        self._plain = (
            _Group(
                [[_resize_u8(img, cfg.patch_size) for img in c.images] for c in self.plain],
                cfg.patch_size,
                cfg.patch_size,
            )
            if self.plain
            else None
        )
        weights = np.array(
            [c.weight for c in self.augmented] + [c.weight for c in self.plain], dtype=np.float64
        )
        self._class_p = weights / weights.sum()
        self._aug_w = weights[: len(self.augmented)]
        self._plain_w = weights[len(self.augmented) :]
        if len(self.augmented) < 2 and self.augmented and cfg.p_noise + cfg.p_local == 0.0:
            raise ValueError("one augmented class needs synthetic negatives: set p_noise or p_local > 0")
        if len(self.plain) == 1 and not self.augmented:
            raise ValueError("a single class without augmentation has no negatives")

    def __repr__(self) -> str:
        return f"TripletSampler({len(self.augmented)} augmented + {len(self.plain)} plain classes)"

    # ------------------------------------------------------------------ public

    def sample(self, n: int, rng: np.random.Generator) -> Triplets:
        p = self.config.patch_size
        out = Triplets(
            np.empty((n, p, p), np.float16),
            np.empty((n, p, p), np.float16),
            np.empty((n, p, p), np.float16),
            np.empty(n, np.int8),
        )
        for start in range(0, n, _CHUNK):
            stop = min(n, start + _CHUNK)
            a, b, c, kind = self._sample_chunk(stop - start, rng)
            out.anchor[start:stop] = a
            out.positive[start:stop] = b
            out.negative[start:stop] = c
            out.negative_kind[start:stop] = kind
        return out

    # ------------------------------------------------------------------ internals

    def _sample_chunk(
        self, m: int, rng: np.random.Generator
    ) -> tuple[Patches, Patches, Patches, npt.NDArray[np.int8]]:
        p = self.config.patch_size
        a = np.empty((m, p, p), np.float32)
        b = np.empty((m, p, p), np.float32)
        c = np.empty((m, p, p), np.float32)
        kind = np.empty(m, np.int8)
        n_aug = len(self.augmented)
        cls = rng.choice(len(self._class_p), size=m, p=self._class_p)
        aug_rows = np.flatnonzero(cls < n_aug)
        plain_rows = np.flatnonzero(cls >= n_aug)
        if aug_rows.size:
            self._augmented_triplets(cls[aug_rows], rng, a, b, c, kind, aug_rows)
        if plain_rows.size:
            self._plain_triplets(cls[plain_rows] - n_aug, rng, a, b, c, kind, plain_rows)
        return a, b, c, kind

    @staticmethod
    def _other_image(
        group: _Group, cls: npt.NDArray[np.int64], local: npt.NDArray[np.int64], rng: np.random.Generator
    ) -> npt.NDArray[np.int64]:
        """Index of another image of the same class (the same one for a single-image class)."""
        count = group.count[cls]
        shift = np.where(count > 1, rng.integers(1, np.maximum(count, 2)), 0)
        return group.first[cls] + (local + shift) % count

    @staticmethod
    def _other_class(
        cls: npt.NDArray[np.int64], weights: npt.NDArray[np.float64], rng: np.random.Generator
    ) -> npt.NDArray[np.int64]:
        """A class different from ``cls`` per row, drawn by weight (needs at least two classes)."""
        k = weights.size
        p = weights / weights.sum()
        other = rng.choice(k, size=cls.size, p=p)
        for _ in range(20):  # rejection: a few rounds suffice unless one class has nearly all weight
            same = other == cls
            if not same.any():
                return other
            other[same] = rng.choice(k, size=int(same.sum()), p=p)
        same = other == cls
        other[same] = (cls[same] + rng.integers(1, k, int(same.sum()))) % k
        return other

    def _augmented_triplets(
        self,
        cls: npt.NDArray[np.int64],
        rng: np.random.Generator,
        a: Patches,
        b: Patches,
        c: Patches,
        kind: npt.NDArray[np.int8],
        rows: npt.NDArray[np.int64],
    ) -> None:
        cfg = self.config
        p = cfg.patch_size
        m = cls.size
        # Negative kind per triplet: cross-class, Gaussian-noise patch or a realistic local defect.
        p_noise, p_local = cfg.p_noise, cfg.p_local
        if len(self.augmented) < 2:  # no other augmented class: all negatives are synthetic
            total = p_noise + p_local
            p_noise, p_local = p_noise / total, p_local / total
        u = rng.random(m)
        is_noise = u < p_noise
        is_local = (u >= p_noise) & (u < p_noise + p_local)
        is_cross = ~(is_noise | is_local)
        local_choice = rng.integers(0, len(cfg.local_kinds), m) if cfg.local_kinds else np.zeros(m, np.int64)
        local_code = np.array([_KIND_CODE[k] for k in cfg.local_kinds] or [0], dtype=np.int8)[local_choice]
        neg_kind = np.where(
            is_noise, _KIND_CODE["noise"], np.where(is_local, local_code, _KIND_CODE["cross_class"])
        )
        kind[rows] = neg_kind.astype(np.int8)

        scale_index = rng.integers(0, len(cfg.scales), m)
        for s, side in enumerate(cfg.scales):
            sel = np.flatnonzero(scale_index == s)
            if sel.size == 0:
                continue
            group = self._scales[side]
            k = cls[sel]
            local = rng.integers(0, group.count[k])
            i = group.first[k] + local
            j = self._other_image(group, k, local, rng)
            y = rng.integers(0, side - p + 1, sel.size)
            x = rng.integers(0, side - p + 1, sel.size)
            a[rows[sel]] = _to_unit_range(group.windows[i, y, x])
            b[rows[sel]] = _to_unit_range(group.windows[j, y, x])
            # The base of a synthetic negative: a same-class patch at the same position, of a third image.
            base_img = self._other_image(group, k, local, rng)
            neg = _to_unit_range(group.windows[base_img, y, x])
            sel_kind = neg_kind[sel]
            cross = np.flatnonzero(is_cross[sel])
            if cross.size:
                other = self._other_class(k[cross], self._aug_w, rng)
                oi = group.first[other] + rng.integers(0, group.count[other])
                oy = rng.integers(0, side - p + 1, cross.size)
                ox = rng.integers(0, side - p + 1, cross.size)
                neg[cross] = _to_unit_range(group.windows[oi, oy, ox])
            noisy = np.flatnonzero(sel_kind == _KIND_CODE["noise"])
            if noisy.size:
                neg[noisy] = self._noise_patch(neg[noisy], rng)
            for name in cfg.local_kinds:
                idx = np.flatnonzero(sel_kind == _KIND_CODE[name])
                if idx.size == 0:
                    continue
                if name == "blob":
                    neg[idx] = self._blob(neg[idx], rng)
                elif name == "curve":
                    neg[idx] = self._curve(neg[idx], rng)
                elif name == "cutpaste":
                    src_y = rng.integers(0, side - p + 1, idx.size)
                    src_x = rng.integers(0, side - p + 1, idx.size)
                    source = _to_unit_range(group.windows[base_img[idx], src_y, src_x])
                    neg[idx] = self._cutpaste(neg[idx], source, rng)
                else:
                    neg[idx] = self._blur(neg[idx], rng)
            c[rows[sel]] = neg

    def _plain_triplets(
        self,
        cls: npt.NDArray[np.int64],
        rng: np.random.Generator,
        a: Patches,
        b: Patches,
        c: Patches,
        kind: npt.NDArray[np.int8],
        rows: npt.NDArray[np.int64],
    ) -> None:
        group = self._plain
        assert group is not None
        m = cls.size
        local = rng.integers(0, group.count[cls])
        i = group.first[cls] + local
        j = self._other_image(group, cls, local, rng)
        a[rows] = _to_unit_range(group.stack[i])
        b[rows] = _to_unit_range(group.stack[j])
        kind[rows] = _KIND_CODE["cross_class"]
        if len(self.plain) > 1:
            other = self._other_class(cls, self._plain_w, rng)
            c[rows] = _to_unit_range(group.stack[group.first[other] + rng.integers(0, group.count[other])])
            return
        # A single plain class: its negatives come from the augmented classes (random scale and position).
        side = self.config.scales[0]
        aug = self._scales[side]
        oc = rng.choice(len(self.augmented), size=m, p=self._aug_w / self._aug_w.sum())
        oi = aug.first[oc] + rng.integers(0, aug.count[oc])
        pos = rng.integers(0, side - self.config.patch_size + 1, (2, m))
        c[rows] = _to_unit_range(aug.windows[oi, pos[0], pos[1]])

    # ------------------------------------------------------------------ negatives (vectorised over m patches)

    def _grid(self) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        r = np.arange(self.config.patch_size, dtype=np.float32)
        return r[None, :, None], r[None, None, :]

    def _noise_patch(self, base: Patches, rng: np.random.Generator) -> Patches:
        cfg = self.config
        m, p = base.shape[0], cfg.patch_size
        lo, hi = cfg.noise_size_px
        hs, ws = rng.integers(lo, hi + 1, (2, m))
        y0 = rng.integers(0, p - hs + 1)
        x0 = rng.integers(0, p - ws + 1)
        ys, xs = self._grid()
        inside = (
            (ys >= y0[:, None, None])
            & (ys < (y0 + hs)[:, None, None])
            & (xs >= x0[:, None, None])
            & (xs < (x0 + ws)[:, None, None])
        )
        sigma = rng.uniform(*cfg.noise_sigma, m).astype(np.float32)
        # Centred on the patch's own mean, so the change is texture, not brightness.
        mean = base.mean(axis=(1, 2))
        noise = rng.standard_normal((m, p, p), dtype=np.float32) * sigma[:, None, None] + mean[:, None, None]
        return np.where(inside, np.clip(noise, -1.0, 1.0), base).astype(np.float32)

    def _amplitude(self, base: Patches, kind: str, rng: np.random.Generator) -> npt.NDArray[np.float32]:
        """Signed brightness change of a blob or curve on each patch of ``base`` (see local_contrast)."""
        m = base.shape[0]
        if self.config.local_contrast == "absolute":
            sign = np.where(rng.random(m) < 0.5, -1.0, 1.0)
            return (sign * rng.uniform(*self.config.local_amplitude, m)).astype(np.float32)
        spread = np.maximum(base.std(axis=(1, 2)), _STD_FLOOR)
        sign = np.where(rng.random(m) < _P_DARK, -1.0, 1.0)
        return (sign * rng.uniform(*_RELATIVE_CONTRAST[kind], m) * spread).astype(np.float32)

    def _blob(self, base: Patches, rng: np.random.Generator) -> Patches:
        """A smooth-edged brightness change (stain, dent, shading fault)."""
        m, p = base.shape[0], self.config.patch_size
        if self.config.local_contrast == "absolute":
            cy, cx = rng.uniform(0.25 * p, 0.75 * p, (2, m)).astype(np.float32)
            sy, sx = rng.uniform(0.05 * p, 0.2 * p, (2, m)).astype(np.float32)
        else:  # the research sampler's: a little more central and up to half again as large
            cy, cx = rng.uniform(0.3 * p, 0.7 * p, (2, m)).astype(np.float32)
            sy, sx = rng.uniform(0.08 * p, 0.3 * p, (2, m)).astype(np.float32)
        ys, xs = self._grid()
        alpha = np.exp(
            -((ys - cy[:, None, None]) ** 2) / (2 * sy[:, None, None] ** 2)
            - (xs - cx[:, None, None]) ** 2 / (2 * sx[:, None, None] ** 2)
        )
        amplitude = self._amplitude(base, "blob", rng)
        return np.clip(base + amplitude[:, None, None] * alpha, -1.0, 1.0).astype(np.float32)

    def _curve(self, base: Patches, rng: np.random.Generator) -> Patches:
        """A thin dark or bright curve (scratch, crack, hair): with absolute contrast a short, smooth one
        ending somewhere in the patch; with relative contrast one that usually crosses the patch (real
        cracks are long next to 32 px), 0.5–2.5 px wide, gently jagged (a slow wiggle on a slight bend)."""
        m, p = base.shape[0], self.config.patch_size
        absolute = self.config.local_contrast == "absolute"
        # Ranges as fractions of the patch side (centre, half length) and in px (width: the line's sigma).
        if absolute:
            centre, bend_px, width_px, half_length = (0.3, 0.7), (-2.0, 2.0), (0.5, 1.5), (0.25, 1.0)
        else:
            centre, bend_px, width_px, half_length = (0.25, 0.75), (-1.5, 1.5), (0.5, 2.5), (0.5, 1.5)
        py, px = rng.uniform(centre[0] * p, centre[1] * p, (2, m)).astype(np.float32)
        theta = rng.uniform(0.0, np.pi, m).astype(np.float32)
        bend = rng.uniform(*bend_px, m).astype(np.float32) / p  # curvature, 1/px
        if not absolute:  # a slow wiggle: real cracks are jagged
            wiggle = rng.uniform(0.0, 1.5, m).astype(np.float32)[:, None, None]  # px
            frequency = rng.uniform(0.2, 0.7, m).astype(np.float32)[:, None, None]  # rad/px
            phase = rng.uniform(0.0, 2 * np.pi, m).astype(np.float32)[:, None, None]
        width = rng.uniform(*width_px, m).astype(np.float32)
        length = rng.uniform(half_length[0] * p, half_length[1] * p, m).astype(np.float32)
        ys, xs = self._grid()
        dy, dx = ys - py[:, None, None], xs - px[:, None, None]
        cos, sin = np.cos(theta)[:, None, None], np.sin(theta)[:, None, None]
        along = dx * cos + dy * sin
        across = -dx * sin + dy * cos - bend[:, None, None] * along**2
        if not absolute:
            across -= wiggle * np.sin(frequency * along + phase)
        alpha = np.exp(-(across**2) / (2 * width[:, None, None] ** 2))
        alpha *= np.clip(length[:, None, None] - np.abs(along), 0.0, 1.0)  # the curve ends
        amplitude = self._amplitude(base, "curve", rng)
        return np.clip(base + amplitude[:, None, None] * alpha, -1.0, 1.0).astype(np.float32)

    def _cutpaste(self, base: Patches, source: Patches, rng: np.random.Generator) -> Patches:
        """A rectangle of ``base`` replaced by the same rectangle of ``source`` (elsewhere, same image)."""
        m, p = base.shape[0], self.config.patch_size
        hs, ws = rng.integers(p // 5, p // 2 + 1, (2, m))
        y0 = rng.integers(0, p - hs + 1)
        x0 = rng.integers(0, p - ws + 1)
        ys, xs = self._grid()
        inside = (
            (ys >= y0[:, None, None])
            & (ys < (y0 + hs)[:, None, None])
            & (xs >= x0[:, None, None])
            & (xs < (x0 + ws)[:, None, None])
        )
        return np.where(inside, source, base).astype(np.float32)

    def _blur(self, base: Patches, rng: np.random.Generator) -> Patches:
        """Local blur (box 5×5) or smear (1×9 along rows or columns), faded in with a soft blob."""
        m, p = base.shape[0], self.config.patch_size
        smear = rng.random(m) < 0.5
        along_rows = rng.random(m) < 0.5
        blurred = np.where(
            smear[:, None, None],
            np.where(along_rows[:, None, None], _box_blur(base, 9, axis=2), _box_blur(base, 9, axis=1)),
            _box_blur(_box_blur(base, 5, axis=1), 5, axis=2),
        )
        cy, cx = rng.uniform(0.3 * p, 0.7 * p, (2, m)).astype(np.float32)
        sigma = rng.uniform(0.12 * p, 0.3 * p, m).astype(np.float32)
        ys, xs = self._grid()
        alpha = np.exp(
            -((ys - cy[:, None, None]) ** 2 + (xs - cx[:, None, None]) ** 2) / (2 * sigma[:, None, None] ** 2)
        )
        alpha = np.minimum(np.float32(1.0), np.float32(1.6) * alpha)
        return (base + alpha * (blurred - base)).astype(np.float32)


def _box_blur(patches: Patches, size: int, axis: int) -> Patches:
    """Mean over ``size`` neighbours along ``axis`` (edges repeated), for a whole batch at once."""
    r = size // 2
    pad = [(0, 0)] * patches.ndim
    pad[axis] = (r + 1, r)
    padded = np.pad(patches, pad, mode="edge")
    csum = np.cumsum(padded, axis=axis, dtype=np.float32)
    n = patches.shape[axis]
    upper = np.take(csum, np.arange(size, size + n), axis=axis)
    lower = np.take(csum, np.arange(0, n), axis=axis)
    return (upper - lower) / np.float32(size)

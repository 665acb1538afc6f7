"""Synthetic surface defects with their ground-truth masks.

Sizes are fractions of the image's shorter side, so a defect looks the same at 128 px and at 1024 px;
intensities follow the image's own contrast (with a floor), so a defect is visible on a busy texture and
not absurd on a calm one. Every defect is drawn as a soft ``alpha`` map inside a small region of
interest; the mask is where that map is substantial.

numpy + cv2 only: the daemon's synthetic camera uses this module.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TypeVar

import cv2
import numpy as np
import numpy.typing as npt

DEFECT_KINDS: tuple[str, ...] = ("scratch", "spot", "crack", "dent", "missing_pattern", "noise_patch")

FloatImage = npt.NDArray[np.float32]
PixelT = TypeVar("PixelT", np.uint8, np.uint16)
Box = tuple[int, int, int, int]  # y0, y1, x0, x1 (half-open)

_MIN_DELTA_8BIT = 28.0  # grey levels (of 255): the least contrast a defect gets


def _f32(array: npt.ArrayLike) -> FloatImage:
    return np.asarray(array, dtype=np.float32)


def _box(cy: float, cx: float, radius: float, shape: tuple[int, int]) -> Box:
    r = math.ceil(radius)
    return (
        max(0, int(cy) - r),
        min(shape[0], int(cy) + r + 1),
        max(0, int(cx) - r),
        min(shape[1], int(cx) + r + 1),
    )


def _delta(image: FloatImage, full: float, rng: np.random.Generator, low: float, high: float) -> float:
    """A defect's contrast: ``low..high`` times the image's spread, never below the visibility floor."""
    spread = float(image.std())
    return max(spread * float(rng.uniform(low, high)), _MIN_DELTA_8BIT * full / 255.0)


def _centre(shape: tuple[int, int], margin: float, rng: np.random.Generator) -> tuple[float, float]:
    h, w = shape
    my, mx = min(margin, h / 2.0 - 1.0), min(margin, w / 2.0 - 1.0)
    return float(rng.uniform(my, h - my)), float(rng.uniform(mx, w - mx))


def _draw_polyline(
    shape: tuple[int, int], points: npt.NDArray[np.float64], thickness: int, blur_sigma: float
) -> FloatImage:
    """Anti-aliased polyline as a 0..1 float map (drawn on 8 bit, where cv2's anti-aliasing works)."""
    canvas = np.zeros(shape, np.uint8)
    shift = 4  # sub-pixel precision for the vertices
    pts = np.round(points[:, ::-1] * (1 << shift)).astype(np.int32).reshape(-1, 1, 2)  # (x, y) for cv2
    cv2.polylines(canvas, [pts], False, 255, thickness=thickness, lineType=cv2.LINE_AA, shift=shift)
    alpha = canvas.astype(np.float32) / np.float32(255.0)
    if blur_sigma > 0:
        alpha = _f32(cv2.GaussianBlur(alpha, (0, 0), blur_sigma))
        alpha /= np.float32(max(float(alpha.max()), 1e-6))
    return alpha


def _scratch(image: FloatImage, full: float, rng: np.random.Generator) -> tuple[FloatImage, FloatImage]:
    h, w = image.shape
    side = min(h, w)
    length = side * rng.uniform(0.12, 0.35)
    cy, cx = _centre((h, w), length / 2.0 + 2.0, rng)
    theta = rng.uniform(0.0, math.pi)
    d = np.array([math.sin(theta), math.cos(theta)])
    normal = np.array([d[1], -d[0]])
    bend = length * rng.uniform(-0.15, 0.15)
    t = np.linspace(-0.5, 0.5, 48)[:, None]
    points = np.array([cy, cx]) + t * length * d + (1.0 - 4.0 * t * t) * bend * normal
    thickness = max(1, round(side * rng.uniform(0.003, 0.008)))
    alpha = _draw_polyline((h, w), points, thickness, 0.6)
    # Scratches catch the light (bright) or cut into a coating (dark).
    sign = 1.0 if rng.random() < 0.5 else -1.0
    out = image + np.float32(sign * _delta(image, full, rng, 1.4, 2.6)) * alpha
    return out, alpha


def _crack(image: FloatImage, full: float, rng: np.random.Generator) -> tuple[FloatImage, FloatImage]:
    h, w = image.shape
    side = min(h, w)
    step = max(1.5, side * 0.012)
    length = side * rng.uniform(0.12, 0.3)
    cy, cx = _centre((h, w), length / 2.0 + 2.0, rng)

    def walk(y: float, x: float, theta: float, n: int) -> npt.NDArray[np.float64]:
        turns = np.cumsum(rng.normal(0.0, 0.35, n))  # a jagged, wandering path
        ys = y + np.concatenate([[0.0], np.cumsum(step * np.sin(theta + turns))])
        xs = x + np.concatenate([[0.0], np.cumsum(step * np.cos(theta + turns))])
        return np.stack([ys, xs], axis=1)

    n = max(4, int(length / step))
    theta = rng.uniform(0.0, 2.0 * math.pi)
    trunk = walk(cy - math.sin(theta) * length / 2, cx - math.cos(theta) * length / 2, theta, n)
    paths = [trunk]
    for _ in range(int(rng.integers(0, 3))):  # side branches
        root = trunk[int(rng.integers(1, len(trunk)))]
        paths.append(walk(float(root[0]), float(root[1]), theta + rng.choice([-1.0, 1.0]) * 0.8, n // 3))
    thickness = max(1, round(side / 400.0))
    alpha = np.zeros((h, w), np.float32)
    for path in paths:
        path[:, 0] = np.clip(path[:, 0], 0, h - 1)
        path[:, 1] = np.clip(path[:, 1], 0, w - 1)
        alpha = np.maximum(alpha, _draw_polyline((h, w), path, thickness, 0.5))
    out = image - np.float32(_delta(image, full, rng, 1.6, 3.0)) * alpha  # cracks are dark gaps
    return out, alpha


def _soft_ellipse(
    shape: tuple[int, int], cy: float, cx: float, ry: float, rx: float, angle_rad: float, edge_sigma: float
) -> FloatImage:
    canvas = np.zeros(shape, np.float32)
    cv2.ellipse(
        canvas,
        (round(cx), round(cy)),
        (max(1, round(rx)), max(1, round(ry))),
        math.degrees(angle_rad),
        0,
        360,
        1.0,
        thickness=-1,
    )
    if edge_sigma > 0:
        canvas = _f32(cv2.GaussianBlur(canvas, (0, 0), edge_sigma))
    return canvas


def _spot(image: FloatImage, full: float, rng: np.random.Generator) -> tuple[FloatImage, FloatImage]:
    h, w = image.shape
    side = min(h, w)
    ry, rx = side * rng.uniform(0.015, 0.05, 2)
    cy, cx = _centre((h, w), max(ry, rx) + 2.0, rng)
    alpha = _soft_ellipse((h, w), cy, cx, ry, rx, rng.uniform(0, math.pi), 0.25 * min(ry, rx))
    sign = 1.0 if rng.random() < 0.35 else -1.0  # stains are mostly darker
    out = image + np.float32(sign * _delta(image, full, rng, 1.3, 2.4)) * alpha
    return out, alpha


def _local_blur(image: FloatImage, box: Box, sigma: float) -> FloatImage:
    """``image`` blurred with ``sigma`` inside ``box`` (blurring a margin around it, not the whole image)."""
    y0, y1, x0, x1 = box
    out = image.copy()
    out[y0:y1, x0:x1] = cv2.GaussianBlur(image[y0:y1, x0:x1], (0, 0), sigma, borderType=cv2.BORDER_REFLECT)
    return out


def _dent(image: FloatImage, full: float, rng: np.random.Generator) -> tuple[FloatImage, FloatImage]:
    h, w = image.shape
    side = min(h, w)
    ry, rx = side * rng.uniform(0.04, 0.1, 2)
    r = max(ry, rx)
    cy, cx = _centre((h, w), r + 2.0, rng)
    bump = _soft_ellipse((h, w), cy, cx, ry, rx, rng.uniform(0, math.pi), 0.45 * min(ry, rx))
    smeared = _local_blur(image, _box(cy, cx, 2.5 * r, (h, w)), max(1.0, 0.12 * r))
    # A dent or smudge: the texture is smeared out and the light falls differently on it.
    sign = 1.0 if rng.random() < 0.5 else -1.0
    shade = np.float32(sign * _delta(image, full, rng, 0.9, 1.6))
    out = image + bump * (smeared - image) + shade * bump
    return out, bump


def _missing_pattern(
    image: FloatImage, full: float, rng: np.random.Generator
) -> tuple[FloatImage, FloatImage]:
    h, w = image.shape
    side = min(h, w)
    hy, hx = side * rng.uniform(0.04, 0.09, 2)
    cy, cx = _centre((h, w), max(hy, hx) + 2.0, rng)
    region = np.zeros((h, w), np.float32)
    y0, y1 = round(cy - hy), round(cy + hy)
    x0, x1 = round(cx - hx), round(cx + hx)
    region[max(0, y0) : y1, max(0, x0) : x1] = 1.0
    alpha = _f32(cv2.GaussianBlur(region, (0, 0), max(0.8, 0.1 * min(hy, hx))))
    # The pattern is gone: the local mean remains (plus a slight change of finish).
    flat = _local_blur(image, _box(cy, cx, 4.0 * max(hy, hx), (h, w)), max(hy, hx))
    offset = np.float32(rng.choice([-1.0, 1.0]) * _delta(image, full, rng, 0.3, 0.6))
    out = image + alpha * (flat + offset - image)
    return out, alpha


def _noise_patch(image: FloatImage, full: float, rng: np.random.Generator) -> tuple[FloatImage, FloatImage]:
    h, w = image.shape
    side = min(h, w)
    hy, hx = side * rng.uniform(0.025, 0.06, 2)
    cy, cx = _centre((h, w), max(hy, hx) + 2.0, rng)
    region = np.zeros((h, w), np.float32)
    region[max(0, int(cy - hy)) : int(cy + hy) + 1, max(0, int(cx - hx)) : int(cx + hx) + 1] = 1.0
    alpha = _f32(cv2.GaussianBlur(region, (0, 0), 0.8))
    sigma = _delta(image, full, rng, 1.0, 2.0)
    noise = rng.standard_normal((h, w), dtype=np.float32) * np.float32(sigma)
    return image + alpha * noise, alpha


_INJECTORS: dict[str, Callable[[FloatImage, float, np.random.Generator], tuple[FloatImage, FloatImage]]] = {
    "scratch": _scratch,
    "spot": _spot,
    "crack": _crack,
    "dent": _dent,
    "missing_pattern": _missing_pattern,
    "noise_patch": _noise_patch,
}


def inject_defect(
    image: npt.NDArray[PixelT], kind: str, rng: np.random.Generator
) -> tuple[npt.NDArray[PixelT], npt.NDArray[np.uint8]]:
    """A defective copy of ``image`` (2-D uint8 or uint16) and its mask (uint8, 0 or 255, same shape).

    The input is not modified. The mask marks where the defect is (where its soft map reaches half of
    its peak or 0.35, whichever is lower), so it is never empty.
    """
    if kind not in _INJECTORS:
        raise ValueError(f"unknown defect kind {kind!r}; known: {', '.join(DEFECT_KINDS)}")
    if image.ndim != 2 or image.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"expected a 2-D uint8 or uint16 image, got {image.dtype} {image.shape}")
    if min(image.shape) < 16:
        raise ValueError(f"image too small for a defect: {image.shape}")
    full = float(np.iinfo(image.dtype).max)
    out, alpha = _INJECTORS[kind](image.astype(np.float32), full, rng)
    peak = float(alpha.max())
    mask = np.where(alpha >= min(0.35, 0.5 * peak), 255, 0).astype(np.uint8)
    defective = np.clip(out + np.float32(0.5), 0, full).astype(image.dtype)
    return defective, mask

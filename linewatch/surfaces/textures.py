"""Procedural texture families: one look per ``style_seed`` (a product), one variation per ``rng`` (a part).

Each family renders a float field of zero mean and unit spread; ``render_surface`` maps it to grey levels
with the style's brightness and contrast and adds the part's illumination and sensor noise. Everything
that depends on the style only (spectra, grids, photographs) is cached, so a 512×512 part costs a few
milliseconds (a synthetic camera renders at 20+ frames/s).

numpy + cv2 only: the daemon's synthetic camera uses this module.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np
import numpy.typing as npt

FloatImage = npt.NDArray[np.float32]

_PROCEDURAL = ("stripes", "fractal", "weave", "speckle", "random_phase")
# Real photographs shipped with scikit-image (optional; only where it is installed).
_PHOTOGRAPHS = ("brick", "grass", "gravel")
_HAVE_SKIMAGE = importlib.util.find_spec("skimage") is not None

FAMILIES: tuple[str, ...] = _PROCEDURAL + (_PHOTOGRAPHS if _HAVE_SKIMAGE else ())


@dataclass(frozen=True)
class SurfaceStyle:
    """What makes one product look like itself; drawn once from ``style_seed``."""

    mean: float  # grey level of the surface
    contrast: float  # grey-level spread of the texture
    angle_rad: float  # dominant orientation
    scale: float  # 0..1, where the family's characteristic size lies in its range
    aniso: float  # 0..1, family-specific secondary parameter (streak strength, roughness, ...)
    noise: float  # sensor noise, grey levels
    variant: int  # family-specific discrete choice (waveform, weave vs grid, blob polarity, ...)


def surface_style(family: str, style_seed: int) -> SurfaceStyle:
    """The style of product ``style_seed`` within ``family`` (family and seed together fix it)."""
    family_index = FAMILIES.index(family) if family in FAMILIES else len(FAMILIES)
    rng = np.random.default_rng([int(style_seed) & 0xFFFFFFFF, family_index, 0x5EED])
    return SurfaceStyle(
        mean=float(rng.uniform(80.0, 175.0)),
        contrast=float(rng.uniform(18.0, 38.0)),
        angle_rad=float(rng.uniform(0.0, math.pi)),
        scale=float(rng.uniform(0.0, 1.0)),
        aniso=float(rng.uniform(0.0, 1.0)),
        noise=float(rng.uniform(1.5, 4.0)),
        variant=int(rng.integers(0, 4)),
    )


def _f32(array: npt.ArrayLike) -> FloatImage:
    """cv2 and numpy.fft results as typed float32 arrays (a no-op when they already are)."""
    return np.asarray(array, dtype=np.float32)


def _standardise(field: FloatImage) -> FloatImage:
    field = field - np.float32(field.mean())
    std = float(field.std())
    return field / np.float32(std if std > 1e-6 else 1.0)


def _smooth_noise(height: int, width: int, cell_px: float, rng: np.random.Generator) -> FloatImage:
    """White noise on a coarse grid, bicubically upsampled: smooth noise with features ~``cell_px`` wide."""
    gh = max(2, math.ceil(height / cell_px) + 2)
    gw = max(2, math.ceil(width / cell_px) + 2)
    coarse = rng.standard_normal((gh, gw), dtype=np.float32)
    up = _f32(cv2.resize(coarse, (int(gw * cell_px), int(gh * cell_px)), interpolation=cv2.INTER_CUBIC))
    oy = int(rng.integers(0, max(1, up.shape[0] - height + 1)))
    ox = int(rng.integers(0, max(1, up.shape[1] - width + 1)))
    return np.ascontiguousarray(up[oy : oy + height, ox : ox + width])


def _rotated_coordinates(height: int, width: int, angle_rad: float) -> tuple[FloatImage, FloatImage]:
    """(u, v): pixel coordinates rotated by ``angle_rad`` about the image centre."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    y -= height / 2.0
    x -= width / 2.0
    c, s = np.float32(math.cos(angle_rad)), np.float32(math.sin(angle_rad))
    return x * c + y * s, -x * s + y * c


@lru_cache(maxsize=32)
def _coordinates_cached(height: int, width: int, angle_rad: float) -> tuple[FloatImage, FloatImage]:
    u, v = _rotated_coordinates(height, width, angle_rad)
    u.setflags(write=False)
    v.setflags(write=False)
    return u, v


def _streaks(
    height: int, width: int, angle_rad: float, length_px: int, rng: np.random.Generator
) -> FloatImage:
    """Noise smeared along ``angle_rad``: the grain of brushed or ground metal."""
    diag = math.ceil(math.hypot(height, width)) + 2
    noise = rng.standard_normal((diag, diag), dtype=np.float32)
    noise = _f32(cv2.blur(noise, (max(1, length_px), 1)))
    centre = (diag / 2.0, diag / 2.0)
    rot = cv2.getRotationMatrix2D(centre, math.degrees(angle_rad), 1.0)
    rot[0, 2] -= (diag - width) / 2.0
    rot[1, 2] -= (diag - height) / 2.0
    return _f32(
        cv2.warpAffine(noise, rot, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    )


def _stripes(height: int, width: int, style: SurfaceStyle, rng: np.random.Generator) -> FloatImage:
    u, _ = _coordinates_cached(height, width, style.angle_rad)
    period_px = 6.0 + 40.0 * style.scale
    phase = float(rng.uniform(0.0, 2.0 * math.pi))
    wave = np.sin(u * np.float32(2.0 * math.pi / period_px) + np.float32(phase))
    if style.variant % 2 == 1:  # machined grooves: sharper, flat-topped profile
        wave = np.tanh(np.float32(2.5) * wave)
    grain_px = 9 + int(40 * style.aniso)
    grain = _standardise(_streaks(height, width, style.angle_rad + math.pi / 2, grain_px, rng))
    # Stripe strength and grain strength trade off: from regular grooves to plain brushed metal.
    weight = 0.25 + 0.6 * style.aniso
    return _standardise((1.0 - weight) * _standardise(wave) + weight * grain)


def _fractal(height: int, width: int, style: SurfaceStyle, rng: np.random.Generator) -> FloatImage:
    base_px = 16.0 + 112.0 * style.scale
    persistence = 0.45 + 0.3 * style.aniso  # roughness: more weight on fine octaves
    field = np.zeros((height, width), np.float32)
    cell, amp = base_px, 1.0
    while cell >= 2.0:
        field += np.float32(amp) * _smooth_noise(height, width, cell, rng)
        cell /= 2.0
        amp *= persistence
    return _standardise(field)


def _weave(height: int, width: int, style: SurfaceStyle, rng: np.random.Generator) -> FloatImage:
    u, v = _coordinates_cached(height, width, style.angle_rad * 0.1)  # woven goods run nearly square
    period = np.float32(8.0 + 24.0 * style.scale)
    u = u + np.float32(rng.uniform(0.0, float(period) * 2.0))
    v = v + np.float32(rng.uniform(0.0, float(period) * 2.0))
    fu, fv = u / period, v / period
    cu, cv = np.floor(fu), np.floor(fv)
    pu, pv = fu - cu, fv - cv
    # Thread cross-sections: bright in the middle of a thread, dark in the gaps.
    thread_h = np.sin(np.float32(math.pi) * pv) ** 2
    thread_v = np.sin(np.float32(math.pi) * pu) ** 2
    if style.variant % 2 == 0:  # plain weave: over/under alternates on a checkerboard
        over = ((cu + cv) % 2.0) < 1.0
        field = np.where(over, thread_h * (0.6 + 0.4 * thread_v), thread_v * (0.6 + 0.4 * thread_h))
    else:  # grid / mesh: bright lines on a flat background
        half_line = np.float32(0.06 + 0.12 * style.aniso)  # half the line width, as a fraction of the period
        on_line = (np.abs(pu - 0.5) > 0.5 - half_line) | (np.abs(pv - 0.5) > 0.5 - half_line)
        field = on_line.astype(np.float32)
        field = _f32(cv2.GaussianBlur(field, (0, 0), 0.8))
    # Yarn irregularity: a little smooth noise so no two parts are pixel-identical.
    irregular = _smooth_noise(height, width, float(period) / 2.0, rng)
    return _standardise(field.astype(np.float32) + np.float32(0.12) * irregular)


def _speckle(height: int, width: int, style: SurfaceStyle, rng: np.random.Generator) -> FloatImage:
    sigma_px = 1.5 + 6.0 * style.scale
    # Render at a reduced resolution where blobs are large: same look, a fraction of the blur cost.
    factor = max(1, int(sigma_px // 2))
    sh, sw = max(4, math.ceil(height / factor)), max(4, math.ceil(width / factor))
    density = 0.002 + 0.02 * style.aniso  # blobs per (reduced) pixel
    count = int(rng.poisson(density * sh * sw)) + 1
    impulses = np.zeros((sh, sw), np.float32)
    ys = rng.integers(0, sh, count)
    xs = rng.integers(0, sw, count)
    amps = rng.uniform(0.5, 1.5, count).astype(np.float32)
    if style.variant % 2 == 1:
        amps *= rng.choice(np.array([-1.0, 1.0], np.float32), count)
    np.add.at(impulses, (ys, xs), amps)
    blobs = _f32(cv2.GaussianBlur(impulses, (0, 0), sigma_px / factor))
    if factor > 1:
        blobs = _f32(cv2.resize(blobs, (width, height), interpolation=cv2.INTER_CUBIC))
    else:
        blobs = blobs[:height, :width]
    fine = rng.standard_normal((height, width), dtype=np.float32)
    fine = _f32(cv2.GaussianBlur(fine, (0, 0), 0.7))
    return _standardise(_standardise(blobs) + np.float32(0.25) * _standardise(fine))


@lru_cache(maxsize=16)
def _random_phase_amplitude(height: int, width: int, style: SurfaceStyle) -> FloatImage:
    """The style's amplitude spectrum: a few oriented spectral bumps over a 1/f floor (rfft layout)."""
    rng = np.random.default_rng([int(style.scale * 1e6), int(style.aniso * 1e6), style.variant])
    fy = np.fft.fftfreq(height).astype(np.float32)[:, None]
    fx = np.fft.rfftfreq(width).astype(np.float32)[None, :]
    radius = np.sqrt(fy * fy + fx * fx)
    # 1/f floor, weak beside the bumps: the texture's character comes from the bumps.
    amplitude = _f32(0.003 / np.maximum(radius, np.float32(1.0 / max(height, width))) ** 1.2)
    for _ in range(1 + style.variant):
        f0 = rng.uniform(0.03, 0.18)
        theta = style.angle_rad + rng.uniform(-0.6, 0.6)
        cy, cx = f0 * math.sin(theta), f0 * math.cos(theta)
        bw = 0.008 + 0.03 * style.aniso
        for sy, sx in ((cy, cx), (-cy, -cx)):  # both lobes: a real field has a symmetric spectrum
            amplitude += np.exp(-((fy - sy) ** 2 + (fx - sx) ** 2) / (2.0 * bw * bw)).astype(np.float32)
    amplitude[0, 0] = 0.0
    amplitude.setflags(write=False)
    return amplitude


def _random_phase(height: int, width: int, style: SurfaceStyle, rng: np.random.Generator) -> FloatImage:
    amplitude = _random_phase_amplitude(height, width, style)
    phase = rng.uniform(-math.pi, math.pi, amplitude.shape).astype(np.float32)
    spectrum = amplitude * (np.cos(phase) + 1j * np.sin(phase))
    return _standardise(_f32(np.fft.irfft2(spectrum, s=(height, width))))


@lru_cache(maxsize=len(_PHOTOGRAPHS))
def _photograph(name: str) -> FloatImage:
    import skimage.data  # optional and slow to import: only when a photograph family is asked for

    image = np.asarray(getattr(skimage.data, name)())
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    field = _standardise(image.astype(np.float32))
    field.setflags(write=False)
    return field


def _photo_family(name: str) -> Callable[[int, int, SurfaceStyle, np.random.Generator], FloatImage]:
    def render(height: int, width: int, style: SurfaceStyle, rng: np.random.Generator) -> FloatImage:
        photo = _photograph(name)
        ph, pw = photo.shape
        zoom = 0.5 + 1.0 * style.scale  # output pixels per photo pixel
        crop_h = min(ph, max(8, round(height / zoom)))
        crop_w = min(pw, max(8, round(width / zoom)))
        y0 = int(rng.integers(0, ph - crop_h + 1))
        x0 = int(rng.integers(0, pw - crop_w + 1))
        crop = photo[y0 : y0 + crop_h, x0 : x0 + crop_w]
        if style.variant % 2 == 1:
            crop = crop[:, ::-1]
        out = _f32(cv2.resize(np.ascontiguousarray(crop), (width, height), interpolation=cv2.INTER_LINEAR))
        return _standardise(out)

    return render


_RENDERERS: dict[str, Callable[[int, int, SurfaceStyle, np.random.Generator], FloatImage]] = {
    "stripes": _stripes,
    "fractal": _fractal,
    "weave": _weave,
    "speckle": _speckle,
    "random_phase": _random_phase,
    **{name: _photo_family(name) for name in _PHOTOGRAPHS},
}


def render_surface(
    family: str, height: int, width: int, rng: np.random.Generator, style_seed: int = 0
) -> npt.NDArray[np.uint8]:
    """One part of product (``family``, ``style_seed``): a uint8 height×width image.

    ``style_seed`` fixes the product's look (orientation, frequency, contrast, brightness); ``rng`` varies
    the individual part (phase, noise, illumination) so parts of one product are alike but not identical.
    """
    if family not in FAMILIES:
        raise ValueError(f"unknown surface family {family!r}; known: {', '.join(FAMILIES)}")
    if height < 8 or width < 8:
        raise ValueError(f"surface must be at least 8×8 pixels, got {height}×{width}")
    style = surface_style(family, style_seed)
    field = _RENDERERS[family](height, width, style, rng)
    # Part-to-part illumination: a small brightness offset and a gentle gradient, as under a real lamp.
    gain = np.float32(style.contrast * rng.uniform(0.95, 1.05))
    offset = style.mean + rng.uniform(-3.0, 3.0)
    tilt = rng.uniform(-4.0, 4.0, 2)
    ramp_y = np.linspace(-0.5, 0.5, height, dtype=np.float32)[:, None] * np.float32(tilt[0])
    ramp_x = np.linspace(-0.5, 0.5, width, dtype=np.float32)[None, :] * np.float32(tilt[1])
    image = field * gain + np.float32(offset) + ramp_y + ramp_x
    image += rng.standard_normal((height, width), dtype=np.float32) * np.float32(style.noise)
    return np.asarray(np.clip(image + np.float32(0.5), 0, 255), dtype=np.uint8)

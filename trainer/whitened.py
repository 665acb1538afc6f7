"""The whitened member: matched filters for spots and short lines in the product's own texture spectrum.

A spot is an additive soft disc, a scratch a short soft line; a texture of the random-phase, fractal or
speckle kind is close to stationary coloured noise. For a known template t in stationary Gaussian noise of
power spectrum P the best linear detector is the generalised matched filter r = F⁻¹(X · conj(T) / P), whose
output has the same spread everywhere on good parts. P is fitted per product from good images only (the mean
periodogram of the reflect-padded images, lightly smoothed); the templates are soft discs (radius 4 – 12.5
px, each with a sharp and a soft rim; Gaussian blobs until the sixteenth session) and an elongated Gaussian
line (σ 1.5 × 9 px) in 8 orientations. Each response is divided by its spread on the good images, and the
member's map is the largest |z| over the filters, on FeatureNet's grid: a
standardised distance already, so its prototype in ``prototype.npz`` is fixed (centre 0, scale 1; the fit's
level then scales it), like the context member's.

The graph carries each filter as a spatial kernel g = F⁻¹(T / P) cropped around its centre, on the 2×2-pooled
image (every length halved, as the line bank's filters): Pad, AveragePool, Conv, Abs, ReduceMax — nothing
ONNX Runtime or TensorRT lacks, and no FFT. At 512×512, 20 kernels of 17×17 are ~0.34 G multiply-adds a frame.

Where the whitened good images are far from Gaussian (gravel, grass, bricks, KolektorSDD: excess kurtosis
1–3), the filters are not optimal and their heavy-tailed good responses cost more than they find
(KolektorSDD 0.923 → 0.908); ``trainer fit`` leaves the member out there and records why
(benchmarks/experiments/RESULTS.md §13, §14).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F

from linewatch.bundle.manifest import WhitenedSpec
from trainer.channel_member import ChannelFit, ChannelMember, checked_folds
from trainer.grid import feature_map_size

# Spots are soft discs, not Gaussian blobs. Whitening weighs the frequencies where the texture is weak, and
# in a texture whose power falls with frequency (fractal, speckle, random phase) those are high: what tells a
# stain from the texture's own bright and dark places is its rim, which a Gaussian template does not have
# (the member alone on the research's spots there: 0.55 – 0.93 image AUROC with blobs σ 2, 4, 8 px, 0.71 –
# 0.97 with these discs; RESULTS.md §18). Two edges per radius, a sharp and a soft one (σ 15 % and 40 % of the
# radius), so that neither has to match a stain's own.
DEFAULT_BLOBS: tuple[float, ...] = ()  # σ in input pixels
DEFAULT_DISCS: tuple[tuple[float, float], ...] = tuple(
    (radius, edge) for radius in (4.0, 5.0, 6.5, 8.0, 10.0, 12.5) for edge in (0.15, 0.4)
)  # (radius in input pixels, σ of the edge / radius)
DEFAULT_LINES: tuple[tuple[float, float], ...] = ((1.5, 6.0),)  # (σ across in input pixels, elongation)
DEFAULT_ORIENTATIONS = 8
DEFAULT_KERNEL_SIZE = 17  # on the pooled image: 33 input pixels
SPECTRUM_PAD = 16  # pooled pixels reflected on every side before the FFT: the image is not periodic
KURTOSIS_PAD = 32  # the same at full resolution, for the kurtosis
SPECTRUM_SMOOTHING = 1.0  # σ in frequency bins of the Gaussian smoothing of the mean periodogram
SPECTRUM_FLOOR = 1e-6  # of the largest power: no frequency is divided by ~0
# The member is kept where the whitened good images' mean excess kurtosis is below this: ~0 for stationary
# Gaussian textures (the matched filter's optimality condition), 1–3 for gravel, grass, bricks, KolektorSDD.
# Fixed before it was measured on the product (RESULTS.md §13).
MAX_KURTOSIS = 0.5
# FeatureNet's cell i is centred on input pixel 2i + 15.5: pooled pixel i + 7 of the image without its first
# row and column (as trainer.linebank).
GRID_OFFSET = 7


def _full_resolution(batch: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
    x = batch[:, 0].astype(np.float64)
    return x - x.mean(axis=(1, 2), keepdims=True)


def pooled_images(batch: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
    """N×1×H×W preprocessed images → N×((H-1)//2)×((W-1)//2): each image less its mean, 2×2 means of it
    without its first row and column (what the member's graph filters)."""
    x = _full_resolution(batch)
    n, h, w = x.shape
    ph, pw = (h - 1) // 2, (w - 1) // 2
    return x[:, 1 : 1 + 2 * ph, 1 : 1 + 2 * pw].reshape(n, ph, 2, pw, 2).mean(axis=(2, 4))


def _spectra(images: npt.NDArray[np.float64], pad: int = SPECTRUM_PAD) -> npt.NDArray[np.complex128]:
    return np.fft.rfft2(np.pad(images, ((0, 0), (pad, pad), (pad, pad)), mode="reflect"))



def template_spectra(shape: tuple[int, int], spec: WhitenedSpec) -> list[npt.NDArray[np.complex128]]:
    """rfft2 of the unit-peak templates centred at the origin (wrapped) on the pooled grid (every length
    halved): one per blob, one per disc, then one per line and orientation."""
    hh, ww = shape
    y, x = np.meshgrid(np.fft.fftfreq(hh) * hh, np.fft.fftfreq(ww) * ww, indexing="ij")
    out = [np.fft.rfft2(np.exp(-(x * x + y * y) / (2 * (s / 2) ** 2))) for s in spec.blobs]
    rho = torch.from_numpy(np.hypot(x, y))
    for radius, edge in spec.discs:
        # a disc blurred across its rim: Φ((r − ρ) / σ_edge), radially
        disc = torch.special.ndtr((radius / 2 - rho) / (edge * radius / 2)).numpy()
        out.append(np.fft.rfft2(disc))
    for across, elongation in spec.lines:
        a, b = across / 2, across * elongation / 2
        for k in range(spec.orientations):
            theta = math.pi * k / spec.orientations
            u = x * math.cos(theta) + y * math.sin(theta)
            v = -x * math.sin(theta) + y * math.cos(theta)
            out.append(np.fft.rfft2(np.exp(-(v * v) / (2 * a * a) - (u * u) / (2 * b * b))))
    return out


class WhitenedMember(ChannelMember[WhitenedSpec]):
    """x: N×1×H×W (preprocessed) → N×1×((H-6)//2-12)×((W-6)//2-12): max over the filters of |z|; with
    ``alone`` the same map twice (N×2×…), the second a member that rejects alone (``ScoringSpec.
    alone_members``)."""

    kind = "whitened"

    def __init__(self, blobs: Sequence[float] = DEFAULT_BLOBS,
                 lines: Sequence[tuple[float, float]] = DEFAULT_LINES,
                 orientations: int = DEFAULT_ORIENTATIONS, kernel_size: int = DEFAULT_KERNEL_SIZE,
                 alone: bool = False, discs: Sequence[tuple[float, float]] = DEFAULT_DISCS) -> None:
        # The manifest's schema checks the shape (positive σ, odd kernel, at least one template).
        super().__init__(WhitenedSpec(blobs=tuple(float(b) for b in blobs),
                                      discs=tuple((float(r), float(e)) for r, e in discs),
                                      lines=tuple((float(a), float(e)) for a, e in lines),
                                      orientations=orientations, kernel_size=kernel_size, alone=alone))
        k, n = self._spec.kernel_size, self._spec.filters
        # Buffers, not parameters: fitted from the spectrum, never trained; they travel into the ONNX graph.
        self.register_buffer("kernels", torch.zeros(n, 1, k, k))
        self.register_buffer("inverse_scale", torch.ones(1, n, 1, 1))

    @classmethod
    def from_spec(cls, spec: WhitenedSpec) -> WhitenedMember:
        """An unfitted member of this shape."""
        return cls(spec.blobs, spec.lines, spec.orientations, spec.kernel_size, spec.alone, spec.discs)

    def responses(self, x: torch.Tensor) -> torch.Tensor:
        """N×F×H'×W': each filter's response at the cells, before it is divided by its spread."""
        rows, cols = feature_map_size(x.shape[2]), feature_map_size(x.shape[3])
        x = x - x.mean(dim=(2, 3), keepdim=True)
        half = F.avg_pool2d(x[:, :, 1:, 1:], 2)
        r = self._spec.kernel_size // 2
        # A reflection needs more pixels than it reflects: the smallest inputs repeat their edge instead.
        mode = "reflect" if r < min(half.shape[-2:]) else "replicate"
        padded = F.pad(half, (r, r, r, r), mode=mode)
        # pooled pixel GRID_OFFSET + i sits at padded index GRID_OFFSET + i + r, the centre of its window
        top = left = GRID_OFFSET
        return F.conv2d(padded[:, :, top : top + rows + 2 * r, left : left + cols + 2 * r], self.kernels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = torch.amax(torch.abs(self.responses(x) * self.inverse_scale), dim=1, keepdim=True)
        return torch.cat([z, z], dim=1) if self._spec.alone else z


@dataclass(frozen=True)
class WhitenedFit(ChannelFit[WhitenedMember]):
    """The whitened member's fit: kept where the whitened good images look Gaussian."""

    def note(self) -> str:
        """The provenance note: kept or left out, and why."""
        if math.isnan(self.kurtosis):
            return "left out: the good images are flat (no texture whose spectrum the filters could whiten)"
        verdict = "kept" if self.kept else "left out"
        sign = "<" if self.kept else ">="
        return (f"{verdict}: the whitened good images' mean excess kurtosis {self.kurtosis:.3f} {sign} "
                f"{self.max_kurtosis:g} (a matched filter in the texture's spectrum is optimal where it is "
                "Gaussian)")


def describe_templates(spec: WhitenedSpec) -> str:
    """The templates in words, for the bundle's notes ("discs of radius 4, 5 px, rim σ 0.15, 0.4 of the
    radius; 1 line(s) in 8 orientations")."""
    parts = []
    if spec.blobs:
        parts.append(f"blobs σ {', '.join(f'{b:g}' for b in spec.blobs)} px")
    if spec.discs:
        radii = ", ".join(dict.fromkeys(f"{r:g}" for r, _ in spec.discs))
        rims = ", ".join(dict.fromkeys(f"{e:g}" for _, e in spec.discs))
        parts.append(f"discs of radius {radii} px, rim σ {rims} of the radius")
    if spec.lines:
        parts.append(f"{len(spec.lines)} line(s) in {spec.orientations} orientations")
    return "; ".join(parts)


def _kernels(power: npt.NDArray[np.float64], shape: tuple[int, int], spec: WhitenedSpec) -> torch.Tensor:
    """F×1×k×k spatial kernels g = F⁻¹(T / P) cropped around their centre (correlating with g is multiplying
    the spectrum by conj(T) / P: P is real)."""
    k = spec.kernel_size
    cy, cx = shape[0] // 2, shape[1] // 2
    out = []
    for t in template_spectra(shape, spec):
        g = np.fft.fftshift(np.fft.irfft2(t / power, s=shape))
        out.append(g[cy - k // 2 : cy + k // 2 + 1, cx - k // 2 : cx + k // 2 + 1])
    return torch.from_numpy(np.stack(out)[:, None].astype(np.float32))


def _tapered(pooled: npt.NDArray[np.float64], shape: tuple[int, int]) -> npt.NDArray[np.float64]:
    """Periodograms of the pooled images under a Hann window, zero-padded to ``shape`` and scaled so that
    Σ_f P_f |G_f|² / N² is the mean square of a correlation with g away from the borders: the spectrum the
    cells see. The reflected pad's seams would add power at high frequencies, where a whitening filter's gain
    is largest (3× the measured spread of the σ-2 blob on the tests' streaks)."""
    h, w = pooled.shape[1:]
    window = np.outer(np.hanning(h + 2), np.hanning(w + 2))[1:-1, 1:-1]
    out = np.abs(np.fft.rfft2(pooled * window, s=shape)) ** 2
    return out * (shape[0] * shape[1] / (h * w * float(np.mean(window**2))))


def _spreads(kernels: torch.Tensor, periodogram: npt.NDArray[np.float64], shape: tuple[int, int]
             ) -> npt.NDArray[np.float64]:
    """Each kernel's response spread over images of this mean (tapered) periodogram, by Parseval: the mean
    square of a correlation is Σ_f |X_f|² |G_f|² / N². No pass over the images (the 20 kernels over 150
    images of 1024×1024, once per fold, would cost a fit ~3 min); the frequency 0 is left out, as each
    image's mean is removed."""
    k = kernels.shape[-1]
    padded = np.zeros((kernels.shape[0], *shape))
    padded[:, :k, :k] = kernels[:, 0].double().numpy()
    gain = np.abs(np.fft.rfft2(padded)) ** 2
    # rfft2 holds each frequency once, its mirror image implied: every column but the first (and the last,
    # for an even width) counts twice
    weight = np.full(gain.shape[-1], 2.0)
    weight[0] = 1.0
    if shape[1] % 2 == 0:
        weight[-1] = 1.0
    terms = weight * periodogram * gain
    terms[:, 0, 0] = 0.0
    return np.sqrt(terms.sum(axis=(1, 2))) / (shape[0] * shape[1]) + 1e-12


def _has_texture(periodogram: npt.NDArray[np.float64]) -> bool:
    """Power at any frequency but 0 (each image's mean is removed anyway)."""
    return bool(periodogram.ravel()[1:].max(initial=0.0) > 0.0)


def _smoothed_power(periodogram: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    p = cv2.GaussianBlur(periodogram, (0, 0), SPECTRUM_SMOOTHING)
    p = np.maximum(p, SPECTRUM_FLOOR * p.max())
    p[0, 0] = np.inf  # each image's mean is removed, as the member's graph does
    return p


def _excess_kurtosis(images: npt.NDArray[np.float64], power: npt.NDArray[np.float64], margin: int
                     ) -> list[float]:
    """Per image, the excess kurtosis of the (full-resolution) image whitened by ``power``, the pad and
    ``margin`` more pixels cropped away: where the spectrum falls steeply (a blurred texture), whitening
    amplifies the seams of the reflected pad into the border (Gaussian noise blurred by σ 3, 2×2-pooled: 10.9
    with the border, 0.0 without 8 px of it), and the member's cells start 14 pixels in anyway. At full
    resolution, as the criterion was fixed: 2×2 means are closer to Gaussian than the texture is (KolektorSDD
    0.61 pooled)."""
    pad, (n, h, w) = KURTOSIS_PAD, images.shape
    white = np.fft.irfft2(_spectra(images, pad) / np.sqrt(power), s=(h + 2 * pad, w + 2 * pad))
    m = min(margin, (h - 1) // 4, (w - 1) // 4)  # small images keep at least half their pixels
    d = white[:, pad + m : pad + h - m, pad + m : pad + w - m].reshape(n, -1)
    d = d - d.mean(axis=1, keepdims=True)
    return list(np.mean(d**4, axis=1) / np.maximum(np.mean(d**2, axis=1) ** 2, 1e-300) - 3.0)


def fit_whitened_members(
    template: WhitenedMember,
    batches: Iterable[Iterable[npt.NDArray[np.float32]]],
    groups: Sequence[int],
    n_folds: int = 0,
    max_kurtosis: float = MAX_KURTOSIS,
) -> WhitenedFit:
    """Fit ``template``'s shape on good images.

    ``batches`` is an iterable of two fresh iterables of N×1×H×W batches (the spectra, then the kurtosis:
    two passes over the same images in the same order); ``groups`` gives each image's fold, 0 ≤ fold <
    ``n_folds`` (0 or 1 folds: no fold members). The member on all images decides the kurtosis; each fold
    member is fitted on the other folds' images only, as calibration must see images its member did not."""
    spec = template.spec()
    passes = iter(batches)
    n_groups = checked_folds(groups, n_folds, "a whitened member")
    totals: list[npt.NDArray[np.float64]] = []
    tapered: list[npt.NDArray[np.float64]] = []
    full_total: npt.NDArray[np.float64] | float = 0.0
    counts = [0] * n_groups
    shape: tuple[int, int] | None = None
    i = 0
    for batch in next(passes):
        pooled = pooled_images(batch)
        power = np.abs(_spectra(pooled)) ** 2
        full_total = full_total + (np.abs(_spectra(_full_resolution(batch), KURTOSIS_PAD)) ** 2).sum(axis=0)
        if shape is None:
            shape = (pooled.shape[1] + 2 * SPECTRUM_PAD, pooled.shape[2] + 2 * SPECTRUM_PAD)
            totals = [np.zeros(power.shape[1:]) for _ in range(n_groups)]
            tapered = [np.zeros(power.shape[1:]) for _ in range(n_groups)]
        for p, t in zip(power, _tapered(pooled, shape), strict=True):
            totals[groups[i]] += p
            tapered[groups[i]] += t
            counts[groups[i]] += 1
            i += 1
    if shape is None or i != len(groups):
        raise ValueError(f"{len(groups)} images were announced, {i} came")

    def per_member(sums: list[npt.NDArray[np.float64]]) -> list[npt.NDArray[np.float64]]:
        """The mean over each member's images: all of them, then all but each fold's."""
        everything = sum(sums, np.zeros_like(sums[0]))
        out = [everything / len(groups)]
        if n_groups > 1:
            out += [(everything - sums[g]) / (len(groups) - counts[g]) for g in range(n_groups)]
        return out

    powers = [_smoothed_power(p) for p in per_member(totals)]
    periodograms = per_member(tapered)

    if not all(_has_texture(p) for p in (np.asarray(full_total), *periodograms)):
        # blank parts: nothing to whiten, and a spectrum of zeros would make every kernel inf
        return WhitenedFit(None, [], math.nan, max_kurtosis)
    full_power = _smoothed_power(np.asarray(full_total) / len(groups))
    margin = 2 * (spec.kernel_size // 2)
    kurtosis = float(np.mean([k for batch in next(passes)
                              for k in _excess_kurtosis(_full_resolution(batch), full_power, margin)]))
    if not kurtosis < max_kurtosis:
        return WhitenedFit(None, [], kurtosis, max_kurtosis)

    members = []
    for power, periodogram in zip(powers, periodograms, strict=True):
        member = WhitenedMember.from_spec(spec)
        member.kernels.copy_(_kernels(power, shape, spec))
        member.inverse_scale.copy_(torch.from_numpy(1.0 / _spreads(member.kernels, periodogram, shape))
                                   .float().reshape(1, -1, 1, 1))
        member.fitted = True
        members.append(member.eval())
    return WhitenedFit(members[0], members[1:], kurtosis, max_kurtosis)

"""Matched filters in the texture's own noise: does a product-fitted whitening find the spots the default hides?

A spot is an additive soft disc; a texture of the random-phase, fractal or grass kind is close to stationary
coloured noise. For a known template t in stationary Gaussian noise of power spectrum P, the best linear
detector is the generalised matched filter  r = F⁻¹( X · conj(T) / P ), whose output is white-equivalent:
its spread on good parts is the same everywhere. P is fitted per product from good images only (the mean of
their periodograms, reflect-padded, lightly smoothed); the templates are Gaussians of several σ (blobs) and
oriented elongated Gaussians (lines). Every response is z-scored by its spread on the training images.

Prints per family and defect kind the image AUROC of (a) the whitened filters alone, score = max |z|;
(b) the default stack's map (cached: --stack-cache); (c) the stack plus the whitened map as a fourth member,
levelled like the others (median good maximum of held-out training images).

    .venv/bin/python benchmarks/experiments/whiten.py --blobs 2,4,8 --lines 1.5x6
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import common as C
from blobbank import on_feature_grid
from smoothing import smooth
from train_probe import synth_set

PAD = 32  # reflect padding before the FFT: the image is not periodic


def padded(img: np.ndarray) -> np.ndarray:
    x = img.astype(np.float32)
    return np.pad(x - x.mean(), PAD, mode="reflect")


def templates(shape: tuple[int, int], blobs: list[float], lines: list[tuple[float, float]], n_orient: int) -> list[np.ndarray]:
    """Spectra of unit-peak templates centred at the origin (wrapped), one per blob σ and per line × orientation."""
    hh, ww = shape
    yy = np.fft.fftfreq(hh) * hh
    xx = np.fft.fftfreq(ww) * ww
    y, x = np.meshgrid(yy, xx, indexing="ij")
    out = []
    for s in blobs:
        out.append(np.fft.rfft2(np.exp(-(x * x + y * y) / (2 * s * s))))
    for across, along in lines:
        for k in range(n_orient):
            th = math.pi * k / n_orient
            u = x * math.cos(th) + y * math.sin(th)
            v = -x * math.sin(th) + y * math.cos(th)
            out.append(np.fft.rfft2(np.exp(-(v * v) / (2 * across * across) - (u * u) / (2 * along * along))))
    return out


class Whitened:
    def __init__(self, train: list[np.ndarray], blobs: list[float], lines: list[tuple[float, float]], n_orient: int,
                 smooth_bins: float, spectra=None):  # spectra(shape) → template spectra, instead of blobs / lines
        xs = [np.fft.rfft2(padded(t)) for t in train]
        p = np.mean([np.abs(f) ** 2 for f in xs], axis=0)
        if smooth_bins > 0:
            p = cv2.GaussianBlur(p.astype(np.float64), (0, 0), smooth_bins)
        p = np.maximum(p, 1e-6 * p.max())
        p[0, 0] = np.inf  # the image's mean is removed, as the product's input is
        self.p = p
        self.shape = padded(train[0]).shape
        self.t = spectra(self.shape) if spectra else templates(self.shape, blobs, lines, n_orient)
        self.nb = len(blobs)
        self.n_orient = n_orient
        raw = np.stack([self._responses(f) for f in xs])  # N×C×H×W
        self.scale = raw.std(axis=(0, 2, 3)) + 1e-12

    def _responses(self, f: np.ndarray) -> np.ndarray:
        r = np.stack([np.fft.irfft2(f * np.conj(t) / self.p, s=self.shape) for t in self.t])
        return r[:, PAD:-PAD, PAD:-PAD]

    def zmap(self, img: np.ndarray) -> np.ndarray:
        """max over templates of |z| (lines: max over orientations), input resolution."""
        z = np.abs(self._responses(np.fft.rfft2(padded(img))) / self.scale[:, None, None])
        return z.max(axis=0).astype(np.float32)


class TruncatedWhitened:
    """§9's matched filters as spatial kernels cropped to k × k around their centre: what a per-product bank of
    convolutions in the ONNX graph would compute (the FFT at the input size is the exact version). Correlating
    with g = F⁻¹(T / P) is multiplying by conj(T) / P in the frequency domain (P is real)."""

    def __init__(self, train: list[np.ndarray], k: int):
        exact = Whitened(train, [2.0, 4.0, 8.0], [(1.5, 9.0)], 8, 1.0)
        self.kernels = []
        for t in exact.t:
            g = np.fft.fftshift(np.fft.irfft2(t / exact.p, s=exact.shape))
            cy, cx = g.shape[0] // 2, g.shape[1] // 2
            self.kernels.append(g[cy - k // 2 : cy + k // 2 + 1, cx - k // 2 : cx + k // 2 + 1].astype(np.float32))
        self.scale = np.stack([self._responses(t) for t in train]).std(axis=(0, 2, 3)) + 1e-12

    def _responses(self, img: np.ndarray) -> np.ndarray:
        x = img.astype(np.float32) - float(img.mean())
        return np.stack([cv2.filter2D(x, cv2.CV_32F, kern, borderType=cv2.BORDER_REFLECT) for kern in self.kernels])

    def zmap(self, img: np.ndarray) -> np.ndarray:
        return np.abs(self._responses(img) / self.scale[:, None, None]).max(axis=0).astype(np.float32)


PPAD = 16  # reflect padding of the 2×2-pooled image before its FFT


def pool2(img: np.ndarray) -> np.ndarray:
    """The image minus its mean, 2×2-pooled as FeatureNet's grid sees it: means of x[1:, 1:], (H−1)//2 × (W−1)//2
    (the pooled pixel i + 7 is feature cell i, blobbank.on_feature_grid)."""
    x = img.astype(np.float32)
    x = x - x.mean()
    ph, pw = (x.shape[0] - 1) // 2, (x.shape[1] - 1) // 2
    # exact 2×2 means, as the product's avg_pool2d: cv2.resize's INTER_AREA to (W−1)//2 spreads 255 px over 127
    return x[1 : 1 + 2 * ph, 1 : 1 + 2 * pw].reshape(ph, 2, pw, 2).mean(axis=(1, 3))


def pooled_spectrum(pooled: list[np.ndarray]) -> np.ndarray:
    """Whitened's noise spectrum on pooled images (16-px reflect padding, smoothed σ 1 bin, floored, no DC)."""
    p = np.mean([np.abs(np.fft.rfft2(np.pad(x, PPAD, mode="reflect"))) ** 2 for x in pooled], axis=0)
    p = cv2.GaussianBlur(p.astype(np.float64), (0, 0), 1.0)
    p = np.maximum(p, 1e-6 * p.max())
    p[0, 0] = np.inf
    return p


class PooledWhitened:
    """TruncatedWhitened on the 2×2-pooled image, what the product's ONNX graph would compute (a quarter of the
    pixels): the spectrum of the pooled good images, the templates with every σ halved (blobs 1, 2, 4; a 0.75 ×
    4.5 line in 8 orientations), g = F⁻¹(T / P) cropped to k × k, cv2.filter2D with reflected borders, each
    response z-scored by its spread on the pooled training images; the map is max |z| on the feature grid."""

    def __init__(self, train: list[np.ndarray], k: int):
        xs = [pool2(t) for t in train]
        self.p = pooled_spectrum(xs)
        shape = (xs[0].shape[0] + 2 * PPAD, xs[0].shape[1] + 2 * PPAD)
        self.kernels = []
        for t in templates(shape, [1.0, 2.0, 4.0], [(0.75, 4.5)], 8):
            g = np.fft.fftshift(np.fft.irfft2(t / self.p, s=shape))
            cy, cx = g.shape[0] // 2, g.shape[1] // 2
            self.kernels.append(g[cy - k // 2 : cy + k // 2 + 1, cx - k // 2 : cx + k // 2 + 1].astype(np.float32))
        self.scale = np.stack([self._responses(x) for x in xs]).std(axis=(0, 2, 3), dtype=np.float64) + 1e-12

    def _responses(self, pooled: np.ndarray) -> np.ndarray:
        return np.stack([cv2.filter2D(pooled, cv2.CV_32F, kern, borderType=cv2.BORDER_REFLECT) for kern in self.kernels])

    def zmap(self, img: np.ndarray) -> np.ndarray:
        """max over kernels of |z| on the feature grid (cell i, j = pooled pixel i + 7, j + 7)."""
        hh, ww = img.shape
        rows, cols = (hh - 6) // 2 - 12, (ww - 6) // 2 - 12
        z = np.abs(self._responses(pool2(img)) / self.scale[:, None, None]).max(axis=0)
        return z[7 : 7 + rows, 7 : 7 + cols].astype(np.float32)


def pooled_whitened_kurtosis(train: list[np.ndarray]) -> float:
    """whitened_kurtosis on the 2×2-pooled good images (pool2), whitened by their own spectrum (pooled_spectrum)."""
    xs = [np.pad(pool2(t), PPAD, mode="reflect") for t in train]
    p = pooled_spectrum([x[PPAD:-PPAD, PPAD:-PPAD] for x in xs])
    out = []
    for x in xs:
        white = np.fft.irfft2(np.fft.rfft2(x) / np.sqrt(p), s=x.shape)[PPAD:-PPAD, PPAD:-PPAD].ravel()
        d = white - white.mean()
        out.append(float(np.mean(d**4) / np.mean(d**2) ** 2 - 3.0))
    return float(np.mean(out))


def whitened_kurtosis(train: list[np.ndarray]) -> float:
    """Mean excess kurtosis of the good training images after whitening by their own mean spectrum: ~0 where
    the texture is stationary Gaussian noise (the matched filter's optimality condition), 1-2 for gravel,
    brick, grass and KolektorSDD. A criterion from good images only."""
    w = Whitened(train, [2.0], [], 1, 1.0)
    out = []
    for t in train:
        white = np.fft.irfft2(np.fft.rfft2(padded(t)) / np.sqrt(w.p), s=w.shape)[PAD:-PAD, PAD:-PAD].ravel()
        d = white - white.mean()
        out.append(float(np.mean(d**4) / np.mean(d**2) ** 2 - 3.0))
    return float(np.mean(out))


def grid(m: np.ndarray) -> np.ndarray:
    hh, ww = m.shape
    return on_feature_grid(m, (hh - 6) // 2 - 12, (ww - 6) // 2 - 12)


def per_kind(scores: np.ndarray, split: C.Split) -> dict[str, float]:
    kinds = sorted({n.split("/")[0] for n in split.test_names} - {"good"})
    good = np.array([n.startswith("good/") for n in split.test_names])
    out = {"all": C.auroc(scores, split.labels)}
    for k in kinds:
        sel = good | np.array([n.startswith(k + "/") for n in split.test_names])
        out[k] = C.auroc(scores[sel], split.labels[sel])
    return out


def stack_maps(fam: Path, split: C.Split, cache: Path) -> np.ndarray:
    path = cache / f"{fam.name}.npy"
    if path.exists():
        return np.load(path)
    import ensemble as E

    E.K = 64
    specs = ["trainer/backbones/default_h16.pt#256", "random#256", "linebank#64"]
    maps = np.mean([E.maps_for(s, split, split.train[0].shape, 16) for s in specs], axis=0)
    cache.mkdir(parents=True, exist_ok=True)
    np.save(path, maps)
    return maps


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--blobs", default="2,4,8")
    ap.add_argument("--lines", default="", help="AxE list, e.g. 1.5x6,2x8 (σ across, elongation)")
    ap.add_argument("--orient", type=int, default=8)
    ap.add_argument("--smooth-bins", type=float, default=1.0)
    ap.add_argument("--map-sigma", type=float, default=1.0, help="Gaussian σ in cells on the gridded map")
    ap.add_argument("--weight", type=float, default=1.0, help="the whitened member's weight in the average")
    ap.add_argument("--stack-cache", type=Path, default=C.CACHE / "stack-maps")
    ap.add_argument("--families", default="")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    C.set_threads(1)
    blobs = [float(s) for s in args.blobs.split(",") if s]
    lines = [(float(a), float(e) * float(a)) for a, e in (s.split("x") for s in args.lines.split(",") if s)]
    rows: dict[str, dict[str, dict[str, float]]] = {}
    for fam in sorted(p for p in synth_set(args.seed).iterdir() if p.is_dir()):
        if args.families and fam.name not in args.families.split(","):
            continue
        split = C.load_mvtec(fam)
        half = len(split.train) // 2
        ref = Whitened(split.train[:half], blobs, lines, args.orient, args.smooth_bins)
        level = float(np.median([smooth(grid(ref.zmap(t))[None], args.map_sigma).max() for t in split.train[half:]]))
        w = Whitened(split.train, blobs, lines, args.orient, args.smooth_bins)
        wmaps = smooth(np.stack([grid(w.zmap(t)) for t in split.test]), args.map_sigma) / level
        cache = args.stack_cache if args.seed == 0 else args.stack_cache.with_name(f"{args.stack_cache.name}-s{args.seed}")
        smaps = stack_maps(fam, split, cache)
        combo = (3 * smaps + args.weight * wmaps) / (3 + args.weight)
        rows[fam.name] = {
            "whitened": per_kind(wmaps.reshape(len(wmaps), -1).max(1), split),
            "stack": per_kind(smaps.reshape(len(smaps), -1).max(1), split),
            "stack+whitened": per_kind(combo.reshape(len(combo), -1).max(1), split),
        }
        r = rows[fam.name]
        print(f"{fam.name:13s} " + "  ".join(f"{k} {v['all']:.3f} (spot {v.get('spot', float('nan')):.2f})"
                                              for k, v in r.items()), flush=True)
    kinds = ["all", "crack", "scratch", "spot", "dent", "missing_pattern", "noise_patch"]
    for name in ("whitened", "stack", "stack+whitened"):
        print(f"\n{name}: " + " ".join(f"{k}" for k in kinds))
        for fam, r in rows.items():
            print(f"  {fam:13s} " + " ".join(f"{r[name].get(k, float('nan')):.3f}" for k in kinds))
        print(f"  {'mean':13s} " + " ".join(f"{np.mean([r[name].get(k, np.nan) for r in rows.values()]):.3f}" for k in kinds)
              + f"  worst {min(r[name]['all'] for r in rows.values()):.3f}")


if __name__ == "__main__":
    main()

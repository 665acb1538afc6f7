"""A fixed bank of oriented, elongated line filters as a third map beside the trained and untrained networks.

The misses that remain (RESULTS.md §5, §6) are faint thin lines much longer than the networks' 32-px field:
KolektorSDD's cracks (250–350 px) and the synthetic scratches and cracks on grass. A second derivative of a
Gaussian across a line times a long Gaussian along it (the Leung–Malik / Schmid texture-bank shape) integrates
a line's contrast over its length, which no 32-px window can. Used like a backbone: its responses, sampled on
the networks' grid, get the product's scoring (mean removed, nearest of 64 standardised centres, σ 1).

    .venv/bin/python benchmarks/experiments/ensemble.py --data ksdd \
        --features trainer/backbones/default_h16.pt,random,bank:1.5x4
"""

from __future__ import annotations

import cv2
import numpy as np


def line_kernel(sigma_across: float, sigma_along: float, theta: float) -> np.ndarray:
    """Zero-mean, L1-normalised d²/dv² G(v; σ_across) · G(u; σ_along); dark lines on a bright surround give a
    positive response."""
    r = int(np.ceil(3 * max(sigma_across, sigma_along)))
    y, x = np.mgrid[-r : r + 1, -r : r + 1].astype(np.float64)
    u = x * np.cos(theta) + y * np.sin(theta)
    v = -x * np.sin(theta) + y * np.cos(theta)
    g = np.exp(-0.5 * (u / sigma_along) ** 2 - 0.5 * (v / sigma_across) ** 2)
    k = (v**2 / sigma_across**4 - 1 / sigma_across**2) * g
    k -= k.mean()
    return (k / np.abs(k).sum()).astype(np.float32)


def bank_kernels(spec: str, orientations: int = 8) -> list[np.ndarray]:
    """spec 'AxE[;AxE...]' (e.g. '1.5x4;3x4'): σ across and elongation per scale, each at
    ``orientations`` angles."""
    out = []
    for part in spec.split(";"):
        a, e = (float(t) for t in part.split("x"))
        out += [line_kernel(a, a * e, np.pi * i / orientations) for i in range(orientations)]
    return out


def bank_features(spec: str):
    """N×H×W inputs → N×C×H'×W' responses on FeatureNet's grid: cell (i, j) ↔ input pixel 2i + 15.5 (the
    centre of its 32-px field), responses mean-pooled 2×2 like the network's pool. 'SPEC:max' keeps, per
    scale, only the strongest dark and bright line response over the orientations (rotation-invariant)."""
    spec, _, mode = spec.partition(":")
    kernels = bank_kernels(spec)

    def run(x: np.ndarray) -> np.ndarray:
        n, hh, ww = x.shape
        rows, cols = (hh - 6) // 2 - 12, (ww - 6) // 2 - 12
        out = np.empty((n, len(kernels), rows, cols), np.float32)
        for i, img in enumerate(x):
            for c, k in enumerate(kernels):
                r = cv2.filter2D(img, cv2.CV_32F, k, borderType=cv2.BORDER_REFLECT)
                r = cv2.resize(r, (ww // 2, hh // 2), interpolation=cv2.INTER_AREA)
                out[i, c] = r[7 : 7 + rows, 7 : 7 + cols]
        if mode == "max":
            per_scale = out.reshape(n, -1, 8, rows, cols)
            return np.concatenate([per_scale.max(2), per_scale.min(2)], axis=1)
        return out

    return run

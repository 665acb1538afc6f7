"""Isotropic blob filters (scale-normalised Laplacian of Gaussian) as a member beside the networks and the
line bank.

What the default still hides on the synthetic surfaces is mostly spots (per-kind image AUROC 0.74–0.95 on
brick, grass, gravel, random_phase, fractal): soft-edged discs of 1.5–5 % of the image side whose contrast is
1.3–2.4 times the texture's own spread. Inside a 32-px field such a spot is a local change of brightness
that the texture's own shadows also make; a LoG at the spot's scale averages the texture out over the
whole disc and keeps the sign (dark or bright). Used like a backbone: responses sampled on the networks'
grid (cell i ↔ input pixel 2i + 15.5), then the product's scoring.

    .venv/bin/python benchmarks/experiments/ensemble.py --data synth \
        --features trainer/backbones/default_h16.pt#256,random#256,linebank#64,blob:2;4;8#64
"""

from __future__ import annotations

import cv2
import numpy as np


def on_feature_grid(response: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """An input-resolution H×W map sampled on FeatureNet's grid: cell i is centred on input pixel 2i + 15.5, the
    centre of the 2×2 pixels that pooled pixel i + 7 of the map without its first row and column averages."""
    hh, ww = response.shape
    pooled = cv2.resize(response[1:, 1:], ((ww - 1) // 2, (hh - 1) // 2), interpolation=cv2.INTER_AREA)
    return pooled[7 : 7 + rows, 7 : 7 + cols]


def blob_features(spec: str):
    """spec 'S[;S...]': σ in input pixels. Returns N×H×W → N×C×H'×W', one channel per σ: σ²·∇²G * x (dark blob
    positive), on FeatureNet's grid."""
    sigmas = [float(s) for s in spec.split(";")]

    def run(x: np.ndarray) -> np.ndarray:
        n, hh, ww = x.shape
        rows, cols = (hh - 6) // 2 - 12, (ww - 6) // 2 - 12
        out = np.empty((n, len(sigmas), rows, cols), np.float32)
        for i, img in enumerate(x):
            for c, s in enumerate(sigmas):
                g = cv2.GaussianBlur(img, (0, 0), s, borderType=cv2.BORDER_REFLECT)
                lap = cv2.Laplacian(g, cv2.CV_32F, ksize=1, borderType=cv2.BORDER_REFLECT) * (s * s)
                out[i, c] = on_feature_grid(lap, rows, cols)
        return out

    return run


def moment_features(spec: str):
    """spec 'S[;S...]': Gaussian-windowed local mean and local spread at each σ (input pixels), on FeatureNet's
    grid. A stain keeps the texture and shifts its level (dark and textured); a shadow of the texture itself is
    dark and flat: the pair (mean, spread) tells them apart where either alone does not."""
    sigmas = [float(s) for s in spec.split(";")]

    def run(x: np.ndarray) -> np.ndarray:
        n, hh, ww = x.shape
        rows, cols = (hh - 6) // 2 - 12, (ww - 6) // 2 - 12
        out = np.empty((n, 2 * len(sigmas), rows, cols), np.float32)
        for i, img in enumerate(x):
            for c, s in enumerate(sigmas):
                m = cv2.GaussianBlur(img, (0, 0), s, borderType=cv2.BORDER_REFLECT)
                v = cv2.GaussianBlur(img * img, (0, 0), s, borderType=cv2.BORDER_REFLECT) - m * m
                out[i, 2 * c] = on_feature_grid(m, rows, cols)
                out[i, 2 * c + 1] = on_feature_grid(np.sqrt(np.maximum(v, 0.0)), rows, cols)
        return out

    return run

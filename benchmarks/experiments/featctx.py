"""A context-conditioned prototype in feature space (fusion.py members QT, QR).

The context member (context.py, trainer/context.py) predicts a disc's brightness from a ring around it and
scores the standardised residual; it lifted the synthetic surfaces 0.961 → 0.983 but is blind where brightness
alone does not tell a stain from the texture's own dark places (gravel spots 0.50 alone). Here the same idea on a
network's features: per radius r (cells) a small network predicts the mean of the features over a disc (Gaussian
σ = r cells) from the features' local means (σ = r/2) on two rings (2r + 1 and 4r + 1 cells, 8 angles), as a mean
and a spread per channel (Gaussian negative log-likelihood); the map is max over radii of the root mean square z
over the channels. Fitted on good images only.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
from context import fit_gaussian_mlp

RADII = (1.0, 2.0, 4.0)
ANGLES = 8


def _blur(f: np.ndarray, s: float) -> np.ndarray:
    """C×H×W, each channel blurred (reflecting edges)."""
    return np.stack([cv2.GaussianBlur(c, (0, 0), s, borderType=cv2.BORDER_REFLECT) for c in f])


def descriptors(f: np.ndarray, r: float) -> tuple[np.ndarray, np.ndarray]:
    """(centre C×H×W, context (2·ANGLES·C)×H×W) of one image's features C×H×W."""
    centre = _blur(f, r)
    local = _blur(f, max(r / 2, 0.7))
    pad = math.ceil(4 * r + 2)
    lp = np.pad(local, ((0, 0), (pad, pad), (pad, pad)), mode="reflect")
    _, hh, ww = f.shape
    ctx = []
    for rho in (2 * r + 1, 4 * r + 1):
        for k in range(ANGLES):
            dy = round(rho * math.sin(2 * math.pi * k / ANGLES))
            dx = round(rho * math.cos(2 * math.pi * k / ANGLES))
            ctx.append(lp[:, pad + dy : pad + dy + hh, pad + dx : pad + dx + ww])
    return centre, np.concatenate(ctx)


class FeatureContext:
    def __init__(self, train: np.ndarray, radii: tuple[float, ...] = RADII, steps: int = 600, seed: int = 0,
                 max_samples: int = 300_000, hidden: int = 128):
        import torch

        torch.manual_seed(seed)
        self.radii = radii
        self.nets, self.norm = [], []
        rng = np.random.default_rng(seed)
        per_image = max_samples // len(train)
        for r in radii:
            ys, xs = [], []
            for f in train:
                c, ctx = descriptors(f, r)
                c, ctx = c.reshape(len(c), -1).T, ctx.reshape(len(ctx), -1).T
                pick = rng.permutation(len(c))[:per_image]
                ys.append(c[pick])
                xs.append(ctx[pick])
            y, x = np.concatenate(ys), np.concatenate(xs)
            mu, sd = x.mean(0), x.std(0) + 1e-6
            ymu, ysd = y.mean(0), y.std(0) + 1e-6
            self.norm.append((mu, sd, ymu, ysd))
            self.nets.append(fit_gaussian_mlp((x - mu) / sd, (y - ymu) / ysd, hidden, steps, seed))

    def maps(self, feats: np.ndarray) -> np.ndarray:
        """N×H×W: max over radii of the root mean square z over the channels."""
        import torch

        out = []
        for f in feats:
            best = None
            for r, net, (mu, sd, ymu, ysd) in zip(self.radii, self.nets, self.norm, strict=True):
                c, ctx = descriptors(f, r)
                x = ((ctx.reshape(len(ctx), -1).T - mu) / sd).astype(np.float32)
                with torch.no_grad():
                    o = net(torch.from_numpy(x)).numpy()
                z = ((c.reshape(len(c), -1).T - ymu) / ysd - o[:, 0::2]) * np.exp(-0.5 * np.clip(o[:, 1::2], -8, 4))
                m = np.sqrt((z**2).mean(1)).reshape(f.shape[1:])
                best = m if best is None else np.maximum(best, m)
            out.append(best)
        return np.stack(out).astype(np.float32)

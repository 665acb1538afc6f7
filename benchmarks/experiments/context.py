"""A context-conditioned prototype: is a place's brightness what its surroundings predict?

The synthetic spots keep the texture and shift its level over a disc; the texture's own dark places (shadows
between grass blades, gaps in gravel) are just as dark but follow from what is around them and are flat. A global
prototype (k-means centres) sees both as "dark, rare"; whitened matched filters (whiten.py) model the texture as
Gaussian and fail where it is not. Here a small network, fitted per product on good images only, predicts the
mean brightness of a disc of radius r (Gaussian σ = r) from a ring of samples around it (local means at σ = r/2,
radii 2r + 2 and 4r + 2, 12 angles) and from the local roughness at the centre and on the rings (a stain keeps
the roughness, a shadow is flat). It predicts a mean and a spread (Gaussian negative log-likelihood), so
z = (observed − predicted) / spread is a standardised distance to a prototype that depends on the context.
The map is max over radii of |z| on the networks' grid, σ 1, a member like the others (fusion.py member P).
"""

from __future__ import annotations

import math

import cv2
import numpy as np

RADII = (2.0, 4.0, 8.0)
ANGLES = 12


def _blur(x: np.ndarray, s: float) -> np.ndarray:
    return cv2.GaussianBlur(x, (0, 0), s, borderType=cv2.BORDER_REFLECT)


def line_kernel(sigma_across: float, sigma_along: float, theta: float) -> np.ndarray:
    """A normalised anisotropic Gaussian: the mean of a line segment at angle theta."""
    rad = math.ceil(3 * max(sigma_across, sigma_along))
    y, x = np.mgrid[-rad : rad + 1, -rad : rad + 1].astype(np.float64)
    u = x * math.cos(theta) + y * math.sin(theta)
    v = -x * math.sin(theta) + y * math.cos(theta)
    k = np.exp(-0.5 * (u / sigma_along) ** 2 - 0.5 * (v / sigma_across) ** 2)
    return (k / k.sum()).astype(np.float32)


def descriptors(img: np.ndarray, r: float, lines: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(centre means K×H×W: the disc, then ``lines`` oriented segments σ 1 × 2r; context C×H×W) of a
    mean-removed float image."""
    x = (img - img.mean()).astype(np.float32)
    centre = np.stack([_blur(x, r)] + [cv2.filter2D(x, -1, line_kernel(1.0, 2 * r, math.pi * i / lines),
                                                    borderType=cv2.BORDER_REFLECT) for i in range(lines)])
    local = _blur(x, max(r / 2, 1.0))
    rough = _blur(np.abs(x - _blur(x, 1.0)), max(r / 2, 1.0))
    pad = math.ceil(4 * r + 3)
    lp = np.pad(local, pad, mode="reflect")
    rp = np.pad(rough, pad, mode="reflect")
    hh, ww = x.shape
    ctx = [rough]
    for rho in (2 * r + 2, 4 * r + 2):
        for k in range(ANGLES):
            dy = round(rho * math.sin(2 * math.pi * k / ANGLES))
            dx = round(rho * math.cos(2 * math.pi * k / ANGLES))
            ctx.append(lp[pad + dy : pad + dy + hh, pad + dx : pad + dx + ww])
            ctx.append(rp[pad + dy : pad + dy + hh, pad + dx : pad + dx + ww])
    return centre, np.stack(ctx)


def fit_gaussian_mlp(x: np.ndarray, y: np.ndarray, hidden: int, steps: int, seed: int, min_log_var: float = -8.0,
                     weight_decay: float = 0.0):
    """An MLP x (M×C) → per target column (mean, log variance), fitted by the Gaussian negative log-likelihood
    of y (M×K): AdamW 2e-3, batches of 4096, the rate cut to 5e-4 for the last third. Its weights start from
    torch's global random state (the caller seeds it); the batches come from ``seed``."""
    import torch

    xt, yt = torch.from_numpy(x.astype(np.float32)), torch.from_numpy(y.astype(np.float32))
    net = torch.nn.Sequential(torch.nn.Linear(x.shape[1], hidden), torch.nn.ReLU(),
                              torch.nn.Linear(hidden, hidden), torch.nn.ReLU(),
                              torch.nn.Linear(hidden, 2 * y.shape[1]))
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=weight_decay)
    g = torch.Generator().manual_seed(seed)
    for step in range(steps):
        idx = torch.randint(0, len(xt), (4096,), generator=g)
        out = net(xt[idx])
        m, lv = out[:, 0::2], out[:, 1::2].clamp(min_log_var, 4)
        loss = (0.5 * lv + 0.5 * (yt[idx] - m) ** 2 * torch.exp(-lv)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step == steps * 2 // 3:
            for grp in opt.param_groups:
                grp["lr"] = 5e-4
    return net.eval()


class ContextModel:
    """Per radius an MLP context → (mean, log variance) of the centre, fitted on good images."""

    def __init__(self, train: list[np.ndarray], radii: tuple[float, ...] = RADII, steps: int = 600, seed: int = 0,
                 max_samples: int = 1_000_000, hidden: int = 64,
                 min_log_var: float = -8.0, weight_decay: float = 0.0, lines: int = 0):
        import torch

        torch.manual_seed(seed)
        self.radii = radii
        self.lines = lines
        self.nets = []
        self.norm = []
        for r in radii:
            cs, xs = [], []
            rng = np.random.default_rng(seed)
            per_image = max_samples // len(train)
            for t in train:
                c, ctx = descriptors(t, r, lines)
                c, ctx = c[:, ::2, ::2].reshape(len(c), -1).T, ctx[:, ::2, ::2].reshape(len(ctx), -1).T
                pick = rng.permutation(len(c))[:per_image]
                cs.append(c[pick])
                xs.append(ctx[pick])
            y = np.concatenate(cs)
            x = np.concatenate(xs)
            mu, sd = x.mean(0), x.std(0) + 1e-6
            ysd = y.std(0) + 1e-6
            self.norm.append((mu, sd, ysd))
            self.nets.append(fit_gaussian_mlp((x - mu) / sd, y / ysd, hidden, steps, seed, min_log_var,
                                              weight_decay))
        self.min_log_var = min_log_var

    def zstack(self, img: np.ndarray) -> np.ndarray:
        """Signed z per radius, R×H×W at input resolution."""
        import torch

        out_z = []
        for r, net, (mu, sd, ysd) in zip(self.radii, self.nets, self.norm, strict=True):
            c, ctx = descriptors(img, r, self.lines)
            x = ((ctx.reshape(len(ctx), -1).T - mu) / sd).astype(np.float32)
            with torch.no_grad():
                out = net(torch.from_numpy(x)).numpy()
            z = (c.reshape(len(c), -1).T / ysd - out[:, 0::2]) * np.exp(
                -0.5 * np.clip(out[:, 1::2], self.min_log_var, 4))
            out_z.extend(z.T.reshape(c.shape).astype(np.float32))
        return np.stack(out_z)

    def zmap(self, img: np.ndarray) -> np.ndarray:
        """max over radii of |z|, input resolution."""
        return np.abs(self.zstack(img)).max(axis=0)

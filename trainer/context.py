"""The context member: is a place as bright as its surroundings say it should be?

A stain keeps a texture and shifts its brightness over a small disc; the texture's own dark places (the
shadows between grass blades, the gaps in gravel) are just as dark, but they follow from what is around
them, and they are flat. The networks' nearest-centre prototype sees both as "dark and rare", a line filter
sees neither, and a matched filter in the texture's spectrum only works where the texture is Gaussian
(RESULTS.md §8, §9).

This member is a prototype that depends on the context. Per radius r (2, 4, 8 input pixels) a small network,
fitted per product on its good images only, predicts the brightness of a disc (Gaussian σ = r) from a ring
of local means around it (σ = r/2, at radii 2r + 2 and 4r + 2, 12 angles each) and from the local roughness
at the centre and on the ring (mean absolute detail at σ 1): a stain keeps the roughness, a shadow is flat.
It predicts a mean and a spread (Gaussian negative log-likelihood), so z = (observed − predicted) / spread
is a standardised distance to what the context predicts; the member's map is the largest |z| over the radii,
on FeatureNet's grid. Its prototype in ``prototype.npz`` is therefore fixed (centre 0, scale 1; the fit's
level then scales it): what is learned lives in the member's weights, which travel inside ``model.onnx``.

Measured (RESULTS.md §10): alone it is the best single member on grass and brick and near chance on
KolektorSDD; added to the networks and the line bank it lifts the synthetic surfaces 0.961 → 0.983 (worst
0.883 → 0.953).

Everything runs on the grid the networks use: 2×2 means of the (padded) image and of its detail, centred
like the cells, blurred there with σ halved, the ring samples as shifted slices, so the graph is Pad, Conv,
Abs, AveragePool, Slice, Concat, 1×1 Conv, Relu, Exp and ReduceMax — nothing ONNX Runtime or TensorRT lacks.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from torch import nn

from linewatch.bundle.manifest import ContextSpec
from trainer.filters import gaussian_kernel, separable_blur
from trainer.grid import feature_map_size

DEFAULT_RADII: tuple[float, ...] = (2.0, 4.0, 8.0)
DEFAULT_ANGLES = 12
DEFAULT_HIDDEN = 64
ROUGHNESS_SIGMA = 1.0  # the detail a stain keeps: the image minus its σ-1 blur
# The image is padded by this many pixels before the blurs (reflected where it is large enough): the outer
# ring at r = 8 reaches 34 px beyond a border cell and its σ-4 blur 12 px more; the zero padding of the
# convolutions disturbs only the outermost 24 px of the pad (12 pooled pixels). Even, so cell centres stay on
# 2×2 pool boundaries.
PAD = 56
# FeatureNet's cell i is centred on input pixel 2i + 15.5, padded pixel 2i + 15.5 + PAD; the 2×2 means of
# the padded image without its first row and column are centred on 2q + 1.5: cell i is pooled pixel
# i + CELL_OFFSET.
CELL_OFFSET = (14 + PAD) // 2
# Training: samples of (context, centre) per radius, steps of the Adam schedule, batch.
MAX_SAMPLES = 500_000
STEPS = 600
BATCH = 4096
LEARNING_RATE = 2e-3
LOG_VARIANCE_RANGE = (-8.0, 4.0)  # the predicted log variance is clamped: no spread of 0 or of e²


def ring_offsets(radius: float, angles: int) -> list[tuple[int, int]]:
    """(dy, dx) in cells (2 input pixels) of the ring samples around a centre of ``radius`` input pixels:
    ``angles`` directions at 2r + 2 and at 4r + 2 pixels, inner ring first."""
    out = []
    for rho in (2 * radius + 2, 4 * radius + 2):
        for k in range(angles):
            a = 2 * math.pi * k / angles
            out.append((round(rho * math.sin(a) / 2), round(rho * math.cos(a) / 2)))
    return out


class ContextMember(nn.Module):
    """x: N×1×H×W (preprocessed) → N×1×((H-6)//2-12)×((W-6)//2-12): max over radii of |z|."""

    def __init__(self, radii: Sequence[float] = DEFAULT_RADII, angles: int = DEFAULT_ANGLES,
                 hidden: int = DEFAULT_HIDDEN) -> None:
        super().__init__()
        if not radii or min(radii) <= 0:
            raise ValueError(f"context radii must be positive, got {list(radii)}")
        if max(radii) > 8:
            raise ValueError(f"context radii above 8 px need a larger pad than {PAD} px, got {list(radii)}")
        if angles < 1 or hidden < 1:
            raise ValueError(f"angles and hidden must be >= 1, got {angles}, {hidden}")
        self.radii = tuple(float(r) for r in radii)
        self.angles = angles
        self.hidden = hidden
        # σ of the blurs on the 2×2-pooled image (half the input-pixel σ), and the full-resolution detail blur
        self.sigmas = sorted({*(r / 2 for r in self.radii), *(self._local(r) / 2 for r in self.radii)})
        for i, s in enumerate(self.sigmas):
            self.register_buffer(f"blur{i}", gaussian_kernel(s))
        self.register_buffer("detail_blur", gaussian_kernel(ROUGHNESS_SIGMA))
        n_in = self.context_channels
        # The initial weights are overwritten by the fit; the caller's random state is left as it was.
        with torch.random.fork_rng():
            self.mlps = nn.ModuleList(
                nn.Sequential(nn.Conv2d(n_in, hidden, 1), nn.ReLU(), nn.Conv2d(hidden, hidden, 1), nn.ReLU(),
                              nn.Conv2d(hidden, 2, 1))
                for _ in self.radii
            )
        self.mlps.requires_grad_(False)  # fitted by train_member on sample rows, never through this graph
        # Standardisation of each radius' inputs and target, fitted with the weights (buffers: they travel).
        self.register_buffer("in_mean", torch.zeros(len(self.radii), n_in, 1, 1))
        self.register_buffer("in_scale", torch.ones(len(self.radii), n_in, 1, 1))
        self.register_buffer("target_scale", torch.ones(len(self.radii)))
        self.fitted = False  # train_member sets it; a bundle is never written with an unfitted member

    @staticmethod
    def _local(radius: float) -> float:
        return max(radius / 2, 1.0)

    @property
    def context_channels(self) -> int:
        """Inputs of each radius' network: the roughness at the centre, then mean and roughness per ring
        sample."""
        return 1 + 4 * self.angles

    @property
    def feature_dim(self) -> int:
        return 1

    def spec(self) -> ContextSpec:
        """The manifest's description of this member's shape (its weights are in model.onnx)."""
        return ContextSpec(radii=self.radii, angles=self.angles, hidden=self.hidden)

    def describe(self) -> dict[str, object]:
        """The same as a plain dict, for a backbone's provenance."""
        return {"kind": "context", "fitted": self.fitted, **self.spec().model_dump(mode="json")}

    def _blur(self, x: torch.Tensor, sigma: float | None) -> torch.Tensor:
        """Separable Gaussian blur (zero padding); ``sigma`` one of ``self.sigmas``, None: the detail blur."""
        k = self.detail_blur if sigma is None else getattr(self, f"blur{self.sigmas.index(sigma)}")
        return separable_blur(x, k)

    def descriptors(self, x: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per radius (centre brightness N×1×H'×W', context N×C×H'×W') on FeatureNet's grid."""
        rows, cols = feature_map_size(x.shape[2]), feature_map_size(x.shape[3])
        x = x - x.mean(dim=(2, 3), keepdim=True)
        # A reflection needs more pixels than it reflects: the smallest inputs repeat their edge instead.
        mode = "reflect" if min(x.shape[-2:]) > PAD else "replicate"
        xp = F.pad(x, (PAD, PAD, PAD, PAD), mode=mode)
        # The detail a stain keeps is pixel-scale: taken at full resolution. Everything after runs on 2×2
        # means (pooled pixel q centred on padded pixel 2q + 1.5, as the cells) with σ halved, as the line
        # bank's filters do: a quarter of the pixels, half the taps (the member at 512×512: 65 → 44 ms).
        sources = {name: F.avg_pool2d(t[:, :, 1:, 1:], 2)
                   for name, t in (("mean", xp), ("detail", torch.abs(xp - self._blur(xp, None))))}
        pooled: dict[tuple[str, float], torch.Tensor] = {}

        def at_cells(kind: str, sigma: float) -> torch.Tensor:
            if (kind, sigma) not in pooled:
                pooled[kind, sigma] = self._blur(sources[kind], sigma / 2)
            return pooled[kind, sigma]

        def shifted(t: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
            top, left = CELL_OFFSET + dy, CELL_OFFSET + dx
            return t[:, :, top : top + rows, left : left + cols]

        out = []
        for r in self.radii:
            local, rough = at_cells("mean", self._local(r)), at_cells("detail", self._local(r))
            ring = [shifted(t, dy, dx) for dy, dx in ring_offsets(r, self.angles) for t in (local, rough)]
            out.append((shifted(at_cells("mean", r), 0, 0), torch.cat([shifted(rough, 0, 0), *ring], dim=1)))
        return out

    def z_maps(self, x: torch.Tensor) -> torch.Tensor:
        """N×R×H'×W' signed z per radius."""
        zs = []
        for i, (centre, context) in enumerate(self.descriptors(x)):
            out = self.mlps[i]((context - self.in_mean[i]) / self.in_scale[i])
            log_var = torch.clamp(out[:, 1:2], *LOG_VARIANCE_RANGE)
            zs.append((centre / self.target_scale[i] - out[:, 0:1]) * torch.exp(-0.5 * log_var))
        return torch.cat(zs, dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.amax(torch.abs(self.z_maps(x)), dim=1, keepdim=True)


@dataclass
class _Samples:
    """(context, centre) samples of one radius from each image, kept per image so folds can leave some out."""

    context: list[npt.NDArray[np.float32]]
    centre: list[npt.NDArray[np.float32]]


def collect_samples(member: ContextMember, batches: Iterable[npt.NDArray[np.float32]], n_images: int,
                    seed: int = 0) -> list[_Samples]:
    """Per radius, up to ``MAX_SAMPLES // n_images`` random cells of every image (seeded), in image order."""
    rng = np.random.default_rng(seed)
    per_image = max(1, MAX_SAMPLES // max(1, n_images))
    samples = [_Samples([], []) for _ in member.radii]
    with torch.no_grad():
        for batch in batches:
            described = member.descriptors(torch.from_numpy(np.ascontiguousarray(batch)))
            for i, (centre, context) in enumerate(described):
                c = centre.flatten(1).numpy()  # N×P
                ctx = context.flatten(2).numpy()  # N×C×P
                for n in range(len(c)):
                    pick = rng.permutation(c.shape[1])[:per_image]
                    samples[i].centre.append(c[n, pick].astype(np.float32))
                    samples[i].context.append(ctx[n][:, pick].T.astype(np.float32))
    return samples


def train_member(samples: list[_Samples], keep: Sequence[int], radii: Sequence[float] = DEFAULT_RADII,
                 angles: int = DEFAULT_ANGLES, hidden: int = DEFAULT_HIDDEN, seed: int = 0,
                 steps: int = STEPS) -> ContextMember:
    """A member fitted on the samples of the images ``keep`` (indices into the sample lists)."""
    if not keep:
        raise ValueError("a context member needs at least one good image")
    threads = torch.get_num_threads()
    # One thread: these small layers gain nothing from two, and two threads beside another busy process
    # spin-wait (200 instead of 5 ms a step on this 2-core machine).
    torch.set_num_threads(1)
    try:
        return _train(samples, keep, radii, angles, hidden, seed, steps)
    finally:
        torch.set_num_threads(threads)


def _train(samples: list[_Samples], keep: Sequence[int], radii: Sequence[float], angles: int, hidden: int,
           seed: int, steps: int) -> ContextMember:
    with torch.random.fork_rng():  # the caller's random state is left as it was
        torch.manual_seed(seed)
        member = ContextMember(radii, angles, hidden)
        for i, part in enumerate(samples):
            x = np.concatenate([part.context[k] for k in keep])
            y = np.concatenate([part.centre[k] for k in keep])
            mean, scale = x.mean(axis=0), x.std(axis=0) + 1e-6
            y_scale = float(y.std()) + 1e-6
            member.in_mean[i] = torch.from_numpy(mean).reshape(-1, 1, 1)
            member.in_scale[i] = torch.from_numpy(scale).reshape(-1, 1, 1)
            member.target_scale[i] = y_scale
            _fit_one(member.mlps[i], torch.from_numpy((x - mean) / scale), torch.from_numpy(y / y_scale),
                     steps)
    member.fitted = True
    return member.eval()


def _fit_one(mlp: nn.Sequential, x: torch.Tensor, y: torch.Tensor, steps: int) -> None:
    """Gaussian negative log-likelihood of y given x, Adam, the rate cut by 4 for the last third. Trained as
    Linear layers on sample rows (twice as fast as 1×1 convolutions on 1×1 maps), then copied into ``mlp``."""
    convs = [m for m in mlp if isinstance(m, nn.Conv2d)]
    layers = [nn.Linear(c.in_channels, c.out_channels) for c in convs]
    for c, lin in zip(convs, layers, strict=True):
        with torch.no_grad():
            lin.weight.copy_(c.weight.reshape(c.out_channels, c.in_channels))
            lin.bias.copy_(c.bias)
    net = nn.Sequential(layers[0], nn.ReLU(), layers[1], nn.ReLU(), layers[2])
    optimiser = torch.optim.Adam(net.parameters(), lr=LEARNING_RATE)
    for step in range(steps):
        idx = torch.randint(0, len(x), (min(BATCH, len(x)),))
        out = net(x[idx])
        log_var = torch.clamp(out[:, 1], *LOG_VARIANCE_RANGE)
        loss = (0.5 * log_var + 0.5 * (y[idx] - out[:, 0]) ** 2 * torch.exp(-log_var)).mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        if step == steps * 2 // 3:
            for group in optimiser.param_groups:
                group["lr"] = LEARNING_RATE / 4
    with torch.no_grad():
        for c, lin in zip(convs, layers, strict=True):
            c.weight.copy_(lin.weight.reshape(c.weight.shape))
            c.bias.copy_(lin.bias)

"""The fully convolutional feature network of the paper (DESIGN 2.2) and the scoring head (DESIGN 2.4).

    Conv 7×7 (1→h, ELU) → MaxPool 2×2/2 → 3 × ResidualBlock → Conv 1×1 (h→h, linear)
    ResidualBlock: Conv 5×5 (h→h, ELU) → Conv 1×1 (h→h, linear) + input cropped by 2 px on every side

No padding anywhere, no batch norm: a 32×32 patch gives a 1×1×h feature, a 512×512 image 241×241×h, one
feature per 32×32 neighbourhood at stride 2.

``FeatureNet(h, members=M)`` is M such networks side by side in one module (grouped convolutions: member m
owns channels m·h..(m+1)·h−1 of every layer, and no weight connects two members), so an ensemble exports,
compiles and runs as one graph; ``FeatureNet.stack`` builds one from M trained or untrained networks.
``Backbone`` is what a product is fitted with: the networks and, optionally, the fixed line bank
(``trainer.linebank``) whose channels come last. The scoring head scores every member against its own
prototype and averages the members' distance maps.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from linewatch.bundle.manifest import ContextSpec, ExtremesSpec, LineBankSpec, WhitenedSpec, alone_members
from trainer.context import ContextMember
from trainer.extremes import ExtremesMember
from trainer.filters import gaussian_kernel, separable_blur
from trainer.grid import feature_map_size as feature_map_size  # re-exported: the model's own output size
from trainer.linebank import LineBank
from trainer.whitened import WhitenedMember

RECEPTIVE_FIELD = 32
STRIDE = 2


class ResidualBlock(nn.Module):
    def __init__(self, h: int, members: int = 1) -> None:
        super().__init__()
        width = h * members
        self.conv5 = nn.Conv2d(width, width, kernel_size=5, groups=members)
        self.conv1 = nn.Conv2d(width, width, kernel_size=1, groups=members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv1(F.elu(self.conv5(x)))
        return y + x[:, :, 2:-2, 2:-2]


class FeatureNet(nn.Module):
    """x: N×1×H×W in [-1, 1] → N×(members·h)×((H-6)//2-12)×((W-6)//2-12)."""

    def __init__(self, h: int = 16, members: int = 1) -> None:
        super().__init__()
        if h <= 0:
            raise ValueError(f"h must be positive, got {h}")
        if members <= 0:
            raise ValueError(f"members must be positive, got {members}")
        self.h = h  # one member's width (what a checkpoint's "h" says)
        self.members = members
        width = h * members
        self.stem = nn.Conv2d(1, width, kernel_size=7)  # one input channel: M stems are one wider stem
        self.pool = nn.MaxPool2d(kernel_size=2, stride=2)
        self.blocks = nn.Sequential(*(ResidualBlock(h, members) for _ in range(3)))
        self.head = nn.Conv2d(width, width, kernel_size=1, groups=members)

    @property
    def feature_dim(self) -> int:
        """Channels of the feature map: members × h."""
        return self.h * self.members

    @classmethod
    def stack(cls, nets: Sequence[FeatureNet]) -> FeatureNet:
        """One network computing ``nets`` side by side (their channels concatenated in order); the weights
        are copied, so the result equals running each net and concatenating the outputs."""
        if not nets:
            raise ValueError("nothing to stack")
        h = nets[0].h
        if any(n.h != h for n in nets):
            raise ValueError(f"members of one stack need one width, got h={[n.h for n in nets]}")
        singles = [m for n in nets for m in n.split()]
        out = cls(h, members=len(singles))
        states = [m.state_dict() for m in singles]
        # Grouped convolution weights are stored member after member along the output channels.
        out.load_state_dict({name: torch.cat([s[name] for s in states]) for name in states[0]})
        return out.eval()

    def split(self) -> list[FeatureNet]:
        """The members as separate networks (copies)."""
        state = self.state_dict()
        parts = []
        for m in range(self.members):
            net = FeatureNet(self.h)
            net.load_state_dict({k: v[m * self.h : (m + 1) * self.h].clone() for k, v in state.items()})
            parts.append(net.eval())
        return parts

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(F.elu(self.stem(x)))
        x = self.blocks(x)
        return self.head(x)


def nearest_centre_distance(
    features: torch.Tensor, centres: torch.Tensor, scale: torch.Tensor
) -> torch.Tensor:
    """N×h×H'×W' features, K×h×1×1 centres, 1×h×1×1 scale → N×H'×W' Euclidean distance of every
    (scaled) feature vector to its nearest (scaled) centre.

    min_k ‖g − c_k‖² = ‖g‖² + min_k (‖c_k‖² − 2 g·c_k), and the bracket is one MatMul of [g, 1] with
    [−2c, ‖c‖²]: the only pass over the N×P×K products is the ReduceMin (exports as plain Sub/Div/Concat/
    MatMul/ReduceMin/ReduceSum; K=64 adds ~4 % FLOPs at h=16). Both sides are first moved by the mean centre
    so the terms stay small and float32 does not cancel.
    """
    n, h, rows, cols = features.shape
    c = (centres / scale).reshape(-1, h)  # K×h
    offset = c.mean(dim=0)
    c = c - offset
    g = (features / scale).reshape(n, h, rows * cols).transpose(1, 2) - offset  # N×P×h
    g1 = torch.cat([g, torch.ones_like(g[:, :, :1])], dim=2)  # N×P×(h+1)
    c1 = torch.cat([-2.0 * c, torch.sum(c * c, dim=1, keepdim=True)], dim=1)  # K×(h+1)
    nearest = torch.sum(g * g, dim=2) + torch.amin(torch.matmul(g1, c1.t()), dim=2)
    return torch.sqrt(torch.clamp(nearest, min=0.0)).reshape(n, rows, cols)


def smooth_heatmap(heatmap: torch.Tensor, sigma: float) -> torch.Tensor:
    """N×H'×W' → the same, Gaussian-smoothed with σ in cells (separable, zero padding renormalised by the
    smoothed ones map, so borders are weighted averages of what exists: no edge mode Pad needed)."""
    k = gaussian_kernel(sigma)
    x = heatmap.unsqueeze(1)
    return (separable_blur(x, k) / separable_blur(torch.ones_like(x), k)).squeeze(1)


class ScoringHead(nn.Module):
    """Feature map + prototype → (heatmap, score); the part of the decision that travels inside the ONNX.

    Global/spatial prototype: ``mean`` and ``scale`` are 1×h×H'×W' (a global prototype is broadcast to every
    position; scale is all ones when distances are not standardised); heatmap = ‖(f − mean) / scale‖ (L2 or
    L1 over channels). Clusters prototype (``clusters=True``): ``mean`` holds K×h×1×1 centres, ``scale`` is
    1×h×1×1, heatmap = L2 distance to the nearest centre. ``member_dims`` (more than one entry): the h
    channels are consecutive groups of these sizes (the members of a ``Backbone``: stacked networks, then
    the line bank); each group's distance is measured on its own channels (its own nearest centre) and the
    heatmap is their mean. ``smoothing`` σ > 0 (cells): the heatmap is
    Gaussian-smoothed (PatchCore does the same to its anomaly map). score = max over the k×k mean-pooled
    heatmap (k = 1 is the paper's single-pixel maximum).

    ``alone`` (member indices, ``ScoringSpec.alone_members``): those members are not averaged; each one's
    map is a path of its own, unsmoothed unless it is in ``smoothed_alone`` (``ScoringSpec.
    smoothed_alone_members``). The heatmap is the largest of the averaged map's and theirs, the
    score the largest of the paths' scores (``paths``): a mark one member sees far beyond its good parts
    rejects the part although the others see nothing there (averaged, it would count a fifth).
    ``alone_exponents`` (``ScoringSpec.alone_exponents``, one per alone member or none): each alone path's map
    and score raised to that power before the maximum, which puts its fitted tail on the averaged path's
    (``trainer.calibration.join_paths``; its weight is in the prototype's scale, a graph input).
    """

    def __init__(
        self,
        distance: str = "l2",
        pooling: int = 1,
        clusters: bool = False,
        smoothing: float = 0.0,
        member_dims: Sequence[int] | None = None,
        alone: Sequence[int] = (),
        smoothed_alone: Sequence[int] = (),
        alone_exponents: Sequence[float] = (),
    ) -> None:
        super().__init__()
        dims = tuple(int(d) for d in member_dims) if member_dims is not None else ()
        if member_dims is not None and (not dims or min(dims) < 1):
            raise ValueError(f"member_dims must be positive channel counts, got {member_dims}")
        self.member_dims = dims  # () or one entry: a single member, whatever its width
        self.alone = tuple(sorted({int(i) for i in alone}))
        if self.alone and (self.alone[0] < 0 or self.alone[-1] >= len(dims) or len(self.alone) >= len(dims)):
            raise ValueError(f"alone members {list(alone)} must be some, not all, of the {len(dims)} members")
        self.smoothed_alone = tuple(sorted({int(i) for i in smoothed_alone}))
        self.alone_exponents = tuple(float(a) for a in alone_exponents)
        if self.alone_exponents and (len(self.alone_exponents) != len(self.alone)
                                     or min(self.alone_exponents) <= 0.0):
            raise ValueError(f"alone exponents {list(alone_exponents)} must be positive, one per alone "
                             f"member {list(self.alone)}")
        if not set(self.smoothed_alone) <= set(self.alone):
            raise ValueError(f"smoothed alone members {list(smoothed_alone)} are not among "
                             f"{list(self.alone)}")
        if distance not in ("l2", "l1"):
            raise ValueError(f"distance must be 'l2' or 'l1', got {distance!r}")
        if pooling < 1:
            raise ValueError(f"pooling must be >= 1, got {pooling}")
        if clusters and distance != "l2":
            raise ValueError("a clusters prototype needs distance 'l2'")
        if smoothing < 0:
            raise ValueError(f"smoothing must be >= 0, got {smoothing}")
        self.distance = distance
        self.pooling = pooling
        self.clusters = clusters
        self.smoothing = smoothing

    def distance_map(self, features: torch.Tensor, mean: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """N×H'×W' distances of one member's (or a single network's) features to its prototype."""
        if self.clusters:
            return nearest_centre_distance(features, mean, scale)
        if self.distance == "l2":
            dev = (features - mean) / scale
            return torch.sqrt(torch.sum(dev * dev, dim=1))
        return torch.sum(torch.abs((features - mean) / scale), dim=1)

    def member_maps(
        self, features: torch.Tensor, mean: torch.Tensor, scale: torch.Tensor
    ) -> list[torch.Tensor]:
        """Each member's N×H'×W' distance map, in member order."""
        if len(self.member_dims) <= 1:
            return [self.distance_map(features, mean, scale)]
        dims, n = list(self.member_dims), len(self.member_dims)
        if len(set(dims)) == 1:  # equal widths: the Slice graph stacked pairs have always exported
            parts = [torch.chunk(t, n, dim=1) for t in (features, mean, scale)]
        else:
            parts = [torch.split(t, dims, dim=1) for t in (features, mean, scale)]
        return [self.distance_map(f, m, s) for f, m, s in zip(*parts, strict=True)]

    def finish(self, heatmap: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(smoothed heatmap, score = max of its k×k mean-pooled version)."""
        if self.smoothing > 0:
            heatmap = smooth_heatmap(heatmap, self.smoothing)
        return heatmap, self.top(heatmap)

    def top(self, heatmap: torch.Tensor) -> torch.Tensor:
        """N: the max of the k×k mean-pooled heatmap."""
        pooled = heatmap
        if self.pooling > 1:
            pooled = F.avg_pool2d(heatmap.unsqueeze(1), kernel_size=self.pooling, stride=1).squeeze(1)
        return torch.amax(pooled, dim=(1, 2))

    def member_scores(self, features: torch.Tensor, mean: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """N×M: the score each member's map alone would give (smoothed and pooled as the heatmap is, an alone
        member's as its path is); what a fit measures each member's good-part level on."""
        maps = self.member_maps(features, mean, scale)
        scores = [self.top(self._alone_map(i, m)) if i in self.alone else self.finish(m)[1]
                  for i, m in enumerate(maps)]
        return torch.stack(scores, dim=1)

    def _alone_map(self, member: int, heatmap: torch.Tensor) -> torch.Tensor:
        smoothed = member in self.smoothed_alone and self.smoothing > 0
        return smooth_heatmap(heatmap, self.smoothing) if smoothed else heatmap

    def paths(
        self, features: torch.Tensor, mean: torch.Tensor, scale: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(heatmap, N×(1 + len(alone)) path scores): the averaged members' smoothed map and score first,
        then each alone member's."""
        maps = self.member_maps(features, mean, scale)
        averaged = [m for i, m in enumerate(maps) if i not in self.alone]
        heatmap, score = self.finish(averaged[0] if len(averaged) == 1 else torch.stack(averaged).mean(dim=0))
        scores = [score]
        for k, i in enumerate(self.alone):
            alone = self._alone_map(i, maps[i])
            alone_score = self.top(alone)
            # The power after the pooled maximum, as the fit computed it (with k×k pooling the maximum of
            # pooled powers would differ); exponent 1 adds no node: such a graph is byte for byte as before.
            if self.alone_exponents and self.alone_exponents[k] != 1.0:
                alone, alone_score = alone ** self.alone_exponents[k], alone_score ** self.alone_exponents[k]
            heatmap = torch.maximum(heatmap, alone)
            scores.append(alone_score)
        return heatmap, torch.stack(scores, dim=1)

    def forward(
        self, features: torch.Tensor, mean: torch.Tensor, scale: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.alone:
            heatmap, scores = self.paths(features, mean, scale)
            return heatmap, torch.amax(scores, dim=1)
        maps = self.member_maps(features, mean, scale)
        return self.finish(maps[0] if len(maps) == 1 else torch.stack(maps).mean(dim=0))


class Backbone(nn.Module):
    """What a product is fitted with: feature networks (one, or a stack of equal widths), optionally the
    fixed line bank (trainer/linebank.py), the whitened member (trainer/whitened.py), the grey-level extremes
    member (trainer/extremes.py) and the context member (trainer/context.py), the last three fitted per
    product, their channels concatenated in that order. Its
    members are the networks and each of the others; the scoring head scores each against its own
    prototype."""

    def __init__(self, nets: FeatureNet, lines: LineBank | None = None, context: ContextMember | None = None,
                 whitened: WhitenedMember | None = None, extremes: ExtremesMember | None = None) -> None:
        super().__init__()
        self.nets = nets
        self.lines = lines
        self.whitened = whitened
        self.extremes = extremes
        self.context = context

    def with_fitted(self, whitened: WhitenedMember | None, extremes: ExtremesMember | None,
                    context: ContextMember | None) -> Backbone:
        """The same networks and bank with other per-product members (the fit's per-fold members, or none
        where the fit leaves one out)."""
        return Backbone(self.nets, self.lines, context, whitened, extremes)

    @classmethod
    def of(cls, model: FeatureNet | Backbone) -> Backbone:
        """``model`` as a Backbone (a bare network gets no line bank)."""
        return model if isinstance(model, Backbone) else cls(model)

    @property
    def h(self) -> int:
        """One network's width."""
        return self.nets.h

    @property
    def members(self) -> int:
        """Networks in the stack (the other members are not counted, as in ``ScoringSpec.members``)."""
        return self.nets.members

    @property
    def feature_dim(self) -> int:
        return sum(self.member_dims)

    @property
    def networks_only(self) -> bool:
        """No member beside the networks: such a backbone exports and hashes as its networks alone."""
        return not self._beside_networks()

    def _beside_networks(self) -> list[nn.Module]:
        return [m for m in (self.lines, *self._per_product()) if m is not None]

    @property
    def fitted_per_product(self) -> bool:
        """Has members ``trainer fit`` fits per product (whitened, extremes, context)."""
        return any(m is not None for m in self._per_product())

    def _per_product(self) -> tuple[WhitenedMember | None, ExtremesMember | None, ContextMember | None]:
        """The members fitted per product, in channel order (None where absent)."""
        return (self.whitened, self.extremes, self.context)

    @property
    def line_bank(self) -> LineBankSpec | None:
        """The manifest's description of the line bank (None without one)."""
        return self.lines.spec() if self.lines is not None else None

    @property
    def whitened_spec(self) -> WhitenedSpec | None:
        """The manifest's description of the whitened member (None without one)."""
        return self.whitened.spec() if self.whitened is not None else None

    @property
    def extremes_spec(self) -> ExtremesSpec | None:
        """The manifest's description of the extremes member (None without one)."""
        return self.extremes.spec() if self.extremes is not None else None

    @property
    def context_spec(self) -> ContextSpec | None:
        """The manifest's description of the context member (None without one)."""
        return self.context.spec() if self.context is not None else None

    @property
    def member_dims(self) -> tuple[int, ...]:
        """Channels of each member in channel order: the networks', the line bank's, the whitened, extremes
        and context member's."""
        return (self.nets.h,) * self.nets.members + tuple(
            d for m in self._beside_networks() for d in m.spec().member_dims)

    @property
    def alone_members(self) -> tuple[int, ...]:
        """Indices (into ``member_dims``) of the members whose maps reject on their own (the whitened member's
        copy, the extremes member's dark channel), as ``ScoringSpec.alone_members``."""
        return alone_members(self.nets.members, [m.spec() for m in self._beside_networks()])

    @property
    def smoothed_alone_members(self) -> tuple[int, ...]:
        """The alone members whose maps the head smooths (``ScoringSpec.smoothed_alone_members``)."""
        return alone_members(self.nets.members, [m.spec() for m in self._beside_networks()], smoothed=True)

    @property
    def fixed_members(self) -> tuple[int, ...]:
        """Members whose prototype is fixed (centre 0, scale 1): those fitted per product, each a standardised
        distance already."""
        n = len(self.member_dims)
        fitted = sum(len(m.spec().member_dims) for m in self._per_product() if m is not None)
        return tuple(range(n - fitted, n))

    @property
    def unfitted(self) -> list[str]:
        """The per-product members not fitted yet (what must happen before an export)."""
        return [name for name, m in zip(("whitened", "extremes", "context"), self._per_product(), strict=True)
                if m is not None and not m.fitted]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        others = self._beside_networks()
        if not others:
            return self.nets(x)
        return torch.cat([self.nets(x)] + [m(x) for m in others], dim=1)


class InspectionModel(nn.Module):
    """Backbone + scoring head: the graph exported to ``model.onnx`` (inputs image, prototype_mean,
    prototype_scale; outputs heatmap, score)."""

    def __init__(self, backbone: FeatureNet | Backbone, head: ScoringHead) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(
        self, image: torch.Tensor, prototype_mean: torch.Tensor, prototype_scale: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.head(self.backbone(image), prototype_mean, prototype_scale)


class PathScoresModel(InspectionModel):
    """The same inputs → N×P path scores (``ScoringHead.paths``): the trainer's graph for weighing the members
    that reject alone against the averaged map; never part of a bundle."""

    def forward(  # type: ignore[override]
        self, image: torch.Tensor, prototype_mean: torch.Tensor, prototype_scale: torch.Tensor
    ) -> torch.Tensor:
        return self.head.paths(self.backbone(image), prototype_mean, prototype_scale)[1]


class MemberScoresModel(InspectionModel):
    """The same inputs → N×M member scores (``ScoringHead.member_scores``): the trainer's graph for
    measuring each member's good-part level; never part of a bundle."""

    def forward(  # type: ignore[override]
        self, image: torch.Tensor, prototype_mean: torch.Tensor, prototype_scale: torch.Tensor
    ) -> torch.Tensor:
        return self.head.member_scores(self.backbone(image), prototype_mean, prototype_scale)

"""A product's prototype from the feature maps of its good images (DESIGN 2.4, 2.5).

- ``global`` (the paper): one mean feature vector over every position of every good image, broadcast to
  1×h×H'×W'; with standardisation, one spread per channel.
- ``spatial`` (aligned parts): mean and spread per feature position over the good images.
- ``clusters``: K k-means centres of feature vectors sampled from every good image (``trainer.clustering``);
  the distance map is the distance to the nearest centre. With standardisation, one spread per channel.
  A backbone's members (``member_dims``: consecutive channel groups, e.g. two networks and the line bank) are
  clustered each on its own channels: centre k of one member has nothing to do with centre k of another, and
  the scoring head looks for each member's nearest centre separately. A member narrower than the widest gets
  proportionally fewer centres (``member_clusters``). ``trainer.fit`` then puts each member's map on the
  scale of its own good parts (``Prototype.levelled``): the members' distances are not in one unit, and the
  mean of the maps should weigh each member alike. A member whose features are a distance already (the
  context member's |z|, ``fixed_members``) gets centre 0 and scale 1 in every mode: its distance is its value.

Feature maps arrive batch by batch and are folded into float64 running statistics (Chan et al.'s parallel
mean/variance update), so 150+ large images never need to be in memory at once and the sums do not lose
precision. The spread used for standardised distances is floored at ``scale_floor`` × the median channel
spread: a dead channel or a position that never varied among a few dozen images must not turn float noise
into a huge distance. Each member of a stack gets its own floor from its own channels: an untrained network's
features spread ~50× less than a trained one's, and one floor from the median of both would replace every
spread of the quieter member.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
import numpy.typing as npt

from trainer.clustering import kmeans

PrototypeMode = Literal["global", "spatial", "clusters"]
DEFAULT_SCALE_FLOOR = 0.1
DEFAULT_CLUSTERS = 256  # trainer fit's default K (README "Accuracy": 64 -> 256 +0.012..0.016 synthetic)
SAMPLES_PER_IMAGE = 2048  # feature vectors kept per good image for k-means
MAX_SAMPLES = 200_000  # k-means runs on at most this many (seeded subsample)
_ABSOLUTE_FLOOR = 1e-6


@dataclass(frozen=True, slots=True)
class Prototype:
    """The tensors the scoring head compares against (float32; shapes as ``linewatch.bundle.manifest.
    prototype_shapes``: 1×h×H'×W' each, or K×h×1×1 centres and a 1×h×1×1 scale for clusters)."""

    mean: npt.NDArray[np.float32]
    scale: npt.NDArray[np.float32]
    mode: PrototypeMode
    standardised: bool
    n_images: int
    scale_floors: tuple[float, ...]  # absolute floor of each member's channels (0 when not standardised)
    levels: tuple[float, ...] = ()  # each member's good-part level, folded into its scale (``levelled``)

    def levelled(self, levels: Sequence[float], member_dims: Sequence[int]) -> Prototype:
        """This prototype with member m's distances divided by ``levels[m]``: its scale multiplied by it
        (the distance is ‖(f − c) / scale‖, and the centres stay where they are)."""
        return replace(self.scaled(levels, member_dims), levels=tuple(float(v) for v in levels))

    def scaled(self, divisors: Sequence[float], member_dims: Sequence[int]) -> Prototype:
        """This prototype with member m's distances divided by ``divisors[m]`` (``levels`` as they were)."""
        if len(divisors) != len(member_dims) or min(divisors) <= 0:
            raise ValueError(f"need one positive level per member ({len(member_dims)}), got {list(divisors)}")
        factor = np.repeat(np.asarray(divisors, np.float64), member_dims).reshape(1, -1, 1, 1)
        return replace(self, scale=np.ascontiguousarray(self.scale * factor, dtype=np.float32))


class PrototypeAccumulator:
    """Running float64 mean and squared deviations of feature maps N×h×H'×W'."""

    def __init__(
        self, mode: PrototypeMode, clusters: int = DEFAULT_CLUSTERS, seed: int = 0,
        member_dims: Sequence[int] | None = None, fixed_members: Sequence[int] = (),
    ) -> None:
        if mode not in ("global", "spatial", "clusters"):
            raise ValueError(f"prototype mode must be 'global', 'spatial' or 'clusters', got {mode!r}")
        if clusters < 1:
            raise ValueError(f"clusters must be >= 1, got {clusters}")
        dims = tuple(int(d) for d in member_dims) if member_dims is not None else None
        if dims is not None and (not dims or min(dims) < 1):
            raise ValueError(f"member_dims must be positive channel counts, got {member_dims}")
        self.mode: PrototypeMode = mode
        self.clusters = clusters
        self.member_dims = dims  # None: one member, whatever the channel count
        if fixed_members and (dims is None or min(fixed_members) < 0 or max(fixed_members) >= len(dims)):
            raise ValueError(f"fixed members {list(fixed_members)} are not among the members {member_dims}")
        # Members whose features are a distance already (the context member's |z|): centre 0, scale 1.
        self.fixed_members = tuple(int(m) for m in fixed_members)
        self.seed = seed
        self._rng = np.random.default_rng(seed)
        self._samples: list[npt.NDArray[np.float32]] = []
        self.n_images = 0
        self._count = 0  # samples per statistic: images (spatial) or images × positions (global)
        self._mean: npt.NDArray[np.float64] | None = None
        self._m2: npt.NDArray[np.float64] | None = None
        # Per-channel statistics over all positions, also kept in spatial mode (they set the scale floor).
        self._chan_count = 0
        self._chan_mean: npt.NDArray[np.float64] | None = None
        self._chan_m2: npt.NDArray[np.float64] | None = None
        self._shape: tuple[int, int, int] | None = None

    @property
    def feature_shape(self) -> tuple[int, int, int] | None:
        """(h, H', W') of the maps seen so far."""
        return self._shape

    def add(self, features: npt.NDArray[np.floating]) -> None:
        """Fold in a batch of feature maps N×h×H'×W'."""
        f = np.asarray(features)
        if f.ndim != 4:
            raise ValueError(f"feature maps must be N×h×H'×W', got shape {f.shape}")
        shape = (int(f.shape[1]), int(f.shape[2]), int(f.shape[3]))
        if self.member_dims is not None and shape[0] != sum(self.member_dims):
            raise ValueError(f"{shape[0]} feature channels, but the members have {sum(self.member_dims)} "
                             f"({'+'.join(map(str, self.member_dims))})")
        if self._shape is None:
            self._shape = shape
        elif shape != self._shape:
            raise ValueError(f"feature map shape {shape} differs from the earlier {self._shape}")
        f64 = f.astype(np.float64, copy=False)
        n = int(f.shape[0])
        if n == 0:
            return
        self.n_images += n
        # Channel statistics over images × positions.
        flat = f64.transpose(1, 0, 2, 3).reshape(shape[0], -1)
        self._chan_count, self._chan_mean, self._chan_m2 = _merge(
            self._chan_count, self._chan_mean, self._chan_m2,
            flat.shape[1], flat.mean(axis=1), flat.var(axis=1) * flat.shape[1],
        )
        if self.mode == "clusters":
            positions = shape[1] * shape[2]
            for image in f:  # h×H'×W' → SAMPLES_PER_IMAGE random feature vectors of it
                picks = self._rng.choice(positions, size=min(SAMPLES_PER_IMAGE, positions), replace=False)
                self._samples.append(image.reshape(shape[0], positions)[:, picks].T.astype(np.float32))
        if self.mode == "spatial":
            self._count, self._mean, self._m2 = _merge(
                self._count, self._mean, self._m2, n, f64.mean(axis=0), f64.var(axis=0) * n
            )

    @classmethod
    def merged(cls, parts: Sequence[PrototypeAccumulator], seed: int = 0) -> PrototypeAccumulator:
        """One accumulator holding everything ``parts`` saw (as if their images had come in one stream, up to
        which feature vectors were sampled): fold prototypes of a cross-fitted calibration cost no second
        pass over the images."""
        if not parts:
            raise ValueError("nothing to merge")
        first = parts[0]
        out = cls(first.mode, clusters=first.clusters, seed=seed, member_dims=first.member_dims,
                  fixed_members=first.fixed_members)
        for part in parts:
            if (part.mode, part.clusters, part.member_dims, part.fixed_members) != (
                first.mode, first.clusters, first.member_dims, first.fixed_members
            ):
                raise ValueError("accumulators of different prototype modes, cluster or member counts")
            if part.n_images == 0 or part._chan_mean is None or part._chan_m2 is None:
                continue  # saw no images (or only empty batches)
            if out._shape is None:
                out._shape = part._shape
            elif part._shape != out._shape:
                raise ValueError(f"feature map shape {part._shape} differs from the earlier {out._shape}")
            out.n_images += part.n_images
            out._chan_count, out._chan_mean, out._chan_m2 = _merge(
                out._chan_count, out._chan_mean, out._chan_m2,
                part._chan_count, part._chan_mean, part._chan_m2,
            )
            if part._mean is not None and part._m2 is not None:
                out._count, out._mean, out._m2 = _merge(
                    out._count, out._mean, out._m2, part._count, part._mean, part._m2
                )
            out._samples.extend(part._samples)
        return out

    def finish(self, standardise: bool, scale_floor: float = DEFAULT_SCALE_FLOOR) -> Prototype:
        """The prototype tensors; ValueError when the images cannot give the clusters asked for."""
        if self._shape is None or self._chan_mean is None or self._chan_m2 is None or self.n_images == 0:
            raise ValueError("a prototype needs at least one good image")
        if scale_floor < 0:
            raise ValueError(f"scale_floor must be >= 0, got {scale_floor}")
        h, hh, ww = self._shape
        chan_std = np.sqrt(self._chan_m2 / self._chan_count)
        dims = self.member_dims or (h,)
        groups = [slice(start, start + d) for start, d in zip(np.cumsum((0, *dims[:-1])), dims, strict=True)]
        floors = [max(scale_floor * float(np.median(chan_std[g])), _ABSOLUTE_FLOOR) for g in groups]
        floor = np.repeat(floors, dims).reshape(1, h, 1, 1)  # each channel gets its member's floor
        if self.mode == "clusters":
            spread = chan_std.reshape(1, h, 1, 1)
        elif self.mode == "global":
            mean = np.broadcast_to(self._chan_mean.reshape(1, h, 1, 1), (1, h, hh, ww))
            spread = np.broadcast_to(chan_std.reshape(1, h, 1, 1), (1, h, hh, ww))
        else:
            assert self._mean is not None and self._m2 is not None
            mean = self._mean[np.newaxis]
            spread = np.sqrt(self._m2 / self._count)[np.newaxis]
        if standardise:
            scale = np.maximum(spread, floor)
        else:
            scale, floors = np.ones(spread.shape), [0.0] * len(groups)
        if self.fixed_members:
            scale = np.array(scale, dtype=np.float64)  # writable (global mode broadcasts)
            for m in self.fixed_members:
                scale[:, groups[m]] = 1.0
                floors[m] = 0.0
            if self.mode != "clusters":
                mean = np.array(mean, dtype=np.float64)
                for m in self.fixed_members:
                    mean[:, groups[m]] = 0.0
        if self.mode == "clusters":
            samples = np.concatenate(self._samples)
            if len(samples) > MAX_SAMPLES:
                samples = samples[self._rng.choice(len(samples), size=MAX_SAMPLES, replace=False)]
            # Centres in the space the distance is measured in (standardised or not), then stored unscaled;
            # one k-means per member, on that member's channels (a fixed member: its one centre at 0).
            unit = samples / scale.reshape(1, h)
            unit_centres = [
                np.zeros((self.clusters, g.stop - g.start)) if m in self.fixed_members else
                np.resize(kmeans(unit[:, g], member_clusters(self.clusters, dims, m), seed=self.seed + m),
                          (self.clusters, g.stop - g.start))  # repeated centres: the nearest is the same
                for m, g in enumerate(groups)
            ]
            # stored in feature units: the level below changes how a distance counts, not where centres are
            centres = np.concatenate(unit_centres, axis=1) * scale.reshape(1, h)
            mean = centres.reshape(self.clusters, h, 1, 1)
        return Prototype(
            mean=np.ascontiguousarray(mean, dtype=np.float32),
            scale=np.ascontiguousarray(scale, dtype=np.float32),
            mode=self.mode,
            standardised=standardise,
            n_images=self.n_images,
            scale_floors=tuple(float(f) for f in floors),
        )


def member_clusters(clusters: int, member_dims: Sequence[int], member: int) -> int:
    """Centres for one member: ``clusters`` for the widest, proportionally fewer for narrower ones (at least
    one). 256 centres in the line bank's 4 dimensions would also sit on the rare line-like places of good
    parts and hide real lines (KolektorSDD 0.885 → 0.897 with 64, synthetic equal; RESULTS.md §7). The
    prototype still holds ``clusters`` rows for every member (its own centres repeated)."""
    return max(1, round(clusters * member_dims[member] / max(member_dims)))


def _merge(
    n_a: int,
    mean_a: npt.NDArray[np.float64] | None,
    m2_a: npt.NDArray[np.float64] | None,
    n_b: int,
    mean_b: npt.NDArray[np.float64],
    m2_b: npt.NDArray[np.float64],
) -> tuple[int, npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Combine two (count, mean, sum of squared deviations) summaries (Chan, Golub & LeVeque)."""
    if mean_a is None or m2_a is None or n_a == 0:
        return n_b, mean_b.copy(), m2_b.copy()
    n = n_a + n_b
    delta = mean_b - mean_a
    mean = mean_a + delta * (n_b / n)
    m2 = m2_a + m2_b + delta * delta * (n_a * n_b / n)
    return n, mean, m2

"""What the members fitted per product share (the whitened and the extremes member): one channel, or a few
where some of their maps also reject alone (``ScoringSpec.alone_members``).

Each is an ``nn.Module`` whose shape the manifest describes (its spec, a pydantic model that checks it) and
whose fitted numbers are buffers that travel into ``model.onnx``. Its channel is a standardised distance
already, so its prototype is fixed (centre 0, scale 1 before the fit's level), and a bundle is never written
with an unfitted one (``Backbone.unfitted``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from pydantic import BaseModel
from torch import nn

SpecT = TypeVar("SpecT", bound=BaseModel)


class ChannelMember(nn.Module, Generic[SpecT]):
    """Base of a one-channel member fitted per product; ``kind`` names it in a backbone's provenance."""

    kind = ""

    def __init__(self, spec: SpecT) -> None:
        super().__init__()
        self._spec = spec
        self.fitted = False  # its fit sets it; a bundle is never written with an unfitted member

    @property
    def feature_dim(self) -> int:
        """Its channels: one, or more where some of its members reject alone (the spec says)."""
        return int(self._spec.channels)  # type: ignore[attr-defined]

    def spec(self) -> SpecT:
        """The manifest's description of this member's shape (its fitted numbers are in model.onnx)."""
        return self._spec

    def describe(self) -> dict[str, object]:
        """The same as a plain dict, for a backbone's provenance."""
        return {"kind": self.kind, "fitted": self.fitted, **self._spec.model_dump(mode="json")}


MemberT = TypeVar("MemberT", bound=ChannelMember[Any])


@dataclass(frozen=True)
class ChannelFit(Generic[MemberT]):
    """What fitting a member on a product's good images gave: the member fitted on all of them and one per
    fold without the fold's images (None where the member is left out), and the number behind the choice:
    the whitened good images' mean excess kurtosis (trainer.whitened) and the largest the whitened member
    takes."""

    member: MemberT | None
    fold_members: list[MemberT]
    kurtosis: float  # nan where the good images are flat (no texture to whiten)
    max_kurtosis: float

    @property
    def kept(self) -> bool:
        return self.member is not None


def checked_folds(groups: Sequence[int], n_folds: int, what: str) -> int:
    """The number of image groups a member fit makes (``n_folds``; 1 for 0 or 1 folds: no fold members),
    after checking ``groups`` (each image's fold) before any image is read: at least one image, folds in
    range, and with folds, every fold has images and images beside it (its member is fitted on the rest)."""
    n_groups = max(n_folds, 1)
    if not groups:
        raise ValueError(f"{what} needs at least one good image")
    if min(groups) < 0 or max(groups) >= n_groups:
        raise ValueError(f"image folds {min(groups)}..{max(groups)} are not among {n_groups} folds")
    counts = [0] * n_groups
    for g in groups:
        counts[g] += 1
    if n_groups > 1 and (min(counts) == 0 or max(counts) == len(groups)):
        raise ValueError(f"folds of {counts} images: each fold needs images beside it and images "
                         "of its own")
    return n_groups

"""Bundles for backend tests (imported by name: ``conftest`` is ambiguous across test directories).

A freshly initialised FeatureNet is exported through the real trainer code.

Backend behaviour (parity with PyTorch, input validation, prototype swaps) does not depend on trained
weights, so a seeded random backbone keeps these tests to a second or two.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
import torch

from linewatch.bundle.registry import LoadedBundle, load_bundle
from linewatch.errors import BackendUnavailableError
from linewatch.inference.tensorrt import load_runtime
from trainer.fit import prototype_of, write_bundle_from_backbone
from trainer.linebank import LineBank
from trainer.model import Backbone, FeatureNet

SIZE = 64  # input side: heatmap 17×17, fast on a shared 2-core machine


def tensorrt_unavailable_reason(skip_reason: str) -> str:
    """Why TensorRT cannot run here (what ``load_runtime`` says); where it can, the test is skipped with
    ``skip_reason``."""
    try:
        load_runtime()
    except BackendUnavailableError as exc:
        return str(exc)
    pytest.skip(skip_reason)


def sample_images(n: int, size: int = SIZE, seed: int = 0) -> npt.NDArray[np.float32]:
    """N×1×size×size in [-1, 1]: a smooth texture, with a bright square on odd-numbered images."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    out = np.empty((n, 1, size, size), dtype=np.float32)
    for i in range(n):
        base = 0.3 * np.sin(xx / (3.0 + i)) * np.cos(yy / 4.0) + 0.05 * rng.standard_normal((size, size))
        if i % 2 == 1:
            r, c = rng.integers(8, size - 16, size=2)
            base[r : r + 6, c : c + 6] = 0.95
        out[i, 0] = np.clip(base, -1, 1)
    return out


BundleFactory = Callable[..., tuple[LoadedBundle, FeatureNet | Backbone]]


def make_bundle_in(
    root: Path, name: str = "prod-a", h: int = 8, size: int = SIZE, distance: str = "l2", pooling: int = 1,
    seed: int = 1, members: int = 1, lines: bool = False,
) -> tuple[LoadedBundle, FeatureNet | Backbone]:
    torch.manual_seed(seed)
    nets = FeatureNet.stack([FeatureNet(h) for _ in range(members)])
    net = Backbone(nets, LineBank()) if lines else nets
    prototype = prototype_of(net, sample_images(4, size, seed=seed + 100)[::2])
    path = write_bundle_from_backbone(
        root / name, net, prototype, height=size, width=size, threshold=1.0, distance=distance,
        pooling=pooling,
    )
    return load_bundle(path), net

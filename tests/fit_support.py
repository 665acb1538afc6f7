"""Helpers for the trainer's fit/evaluate tests: a feature network trained for a few seconds inside the test
session, and small synthetic products in MVTec-AD layout (``trainer synth``'s own writer).

Importable from any test because tests/conftest.py puts this directory on sys.path (pytest's default
"prepend" import mode).
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch

from linewatch.surfaces import DEFECT_KINDS, inject_defect, render_surface
from trainer.data.synth import SynthProduct, write_product
from trainer.model import Backbone, FeatureNet

TRAIN_FAMILIES = ("stripes", "fractal", "weave", "speckle", "random_phase")


def _patch_triplets(
    rng: np.random.Generator, n: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(a, b, c) 32×32 patches: a and b from two parts of one product at one position, c = b with a
    synthetic local defect (the trainer's idea of a negative)."""
    a, b, c = [], [], []
    for _ in range(n):
        family = TRAIN_FAMILIES[int(rng.integers(len(TRAIN_FAMILIES)))]
        style = int(rng.integers(50))
        part_a = render_surface(family, 48, 48, rng, style_seed=style)
        part_b = render_surface(family, 48, 48, rng, style_seed=style)
        y, x = (int(v) for v in rng.integers(0, 17, 2))
        patch_b = np.ascontiguousarray(part_b[y : y + 32, x : x + 32])
        kind = DEFECT_KINDS[int(rng.integers(len(DEFECT_KINDS)))]
        a.append(part_a[y : y + 32, x : x + 32])
        b.append(patch_b)
        c.append(inject_defect(patch_b, kind, rng)[0])

    def tensor(patches: list[np.ndarray]) -> torch.Tensor:
        return torch.from_numpy(np.stack(patches)[:, None].astype(np.float32) / 127.5 - 1.0)

    return tensor(a), tensor(b), tensor(c)


@functools.lru_cache(maxsize=1)
def tiny_backbone_state() -> dict[str, torch.Tensor]:
    """A FeatureNet(h=8) trained with the paper's triplet loss for a few seconds on one CPU thread; the
    weights are cached for the session (callers get a fresh module from ``tiny_backbone``)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        rng = np.random.default_rng(0)
        net = FeatureNet(8)
        optimiser = torch.optim.Adam(net.parameters(), lr=2e-3)
        bank = [_patch_triplets(rng, 32) for _ in range(8)]
        for step in range(160):
            a, b, c = bank[step % len(bank)]
            fa, fb, fc = (net(v).flatten(1) for v in (a, b, c))
            d_same = (fa - fb).norm(dim=1)
            d_other = (fa - fc).norm(dim=1)
            # softmax([d1, d2]) against [0, 1] with mean absolute error = mean softmax weight of d1
            loss = torch.softmax(torch.stack([d_same, d_other], dim=1), dim=1)[:, 0].mean()
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        return {k: v.detach().clone() for k, v in net.state_dict().items()}
    finally:
        torch.set_num_threads(threads)


def tiny_backbone() -> FeatureNet:
    net = FeatureNet(8)
    net.load_state_dict(tiny_backbone_state())
    return net.eval()


def synthetic_product(
    root: Path,
    family: str = "stripes",
    size: int = 96,
    n_train: int = 30,
    n_test_good: int = 12,
    n_test_defect: int = 4,
    defects: tuple[str, ...] = ("spot", "scratch", "noise_patch"),
    seed: int = 0,
) -> Path:
    """A small product in MVTec-AD layout under ``root`` (train/good, test/good, test/<defect>, masks)."""
    write_product(
        SynthProduct(family=family, style_seed=seed * 1000 + 7, size=size, n_train=n_train,
                     n_test_good=n_test_good, n_test_defect=n_test_defect, defects=defects, seed=seed),
        root,
    )
    return root


def assert_exports_as_two_members(backbone: Backbone, x: np.ndarray) -> None:
    """``backbone`` (a FeatureNet(4) and one one-channel member with a fixed prototype) exported with a
    two-centre head gives what PyTorch gives: the mean of the network's distance to centres at 0 and the
    member's own |value|."""
    from trainer.export import export_onnx
    from trainer.scorer import OnnxruntimeScorer

    assert backbone.member_dims == (4, 1)
    model = export_onnx(backbone, x.shape[2], x.shape[3], "l2", 1, clusters=2)
    mean = np.zeros((2, 5, 1, 1), np.float32)
    scale = np.ones((1, 5, 1, 1), np.float32)
    heatmap, _ = OnnxruntimeScorer(model, mean, scale, threads=1).run(x)
    with torch.no_grad():
        features = backbone.eval()(torch.from_numpy(x)).numpy()
    expected = 0.5 * (np.sqrt((features[:, :4] ** 2).sum(1)) + np.abs(features[:, 4]))
    np.testing.assert_allclose(heatmap, expected, rtol=1e-4, atol=1e-4)

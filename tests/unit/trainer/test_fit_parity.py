"""ONNX Runtime (what the daemon and ``trainer evaluate`` run) against PyTorch (what was trained) on real
KolektorSDD images: the exported graph with the scoring head inside must give the same heatmaps and
scores within 1e-4 (relative where the distances are large)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from fit_support import tiny_backbone

from linewatch.bundle.manifest import InputSpec, Preprocessing
from linewatch.inference.preprocessing import preprocess
from trainer.data.images import list_images, read_image
from trainer.export import export_onnx
from trainer.fit import FitOptions, build_prototype
from trainer.linebank import LineBank
from trainer.model import Backbone, FeatureNet, InspectionModel, ScoringHead
from trainer.scorer import OnnxruntimeScorer

SPEC = InputSpec(height=320, width=128)  # KolektorSDD's 1260×500 parts, downscaled for a quick test
PREP = Preprocessing()


@pytest.fixture(scope="module")
def kolektor_images(shared_data: Path) -> list[Path]:
    root = shared_data / "kolektorsdd"
    return list_images(root / "train" / "good")[:4] + list_images(root / "test" / "crack")[:2]


@pytest.mark.parametrize(
    ("h", "mode", "standardise", "distance", "pooling", "smoothing"),
    [(8, "global", False, "l2", 1, 0.0), (8, "spatial", True, "l1", 3, 1.5),
     (16, "spatial", True, "l2", 5, 0.0), (8, "clusters", True, "l2", 1, 2.0),
     (16, "clusters", False, "l2", 3, 0.0), ("8+8", "clusters", True, "l2", 1, 1.0),
     ("8+8", "global", True, "l1", 1, 0.0), ("8+8+lines", "clusters", True, "l2", 1, 1.0)],
)
def test_onnxruntime_matches_pytorch_on_real_images(
    kolektor_images: list[Path], h: int | str, mode: str, standardise: bool, distance: str, pooling: int,
    smoothing: float,
) -> None:
    torch.set_num_threads(1)
    if h == 8:
        net = tiny_backbone()
    elif h in ("8+8", "8+8+lines"):  # a stacked pair (and the line bank: the default's shape)
        torch.manual_seed(2)
        pair = FeatureNet.stack([tiny_backbone(), FeatureNet(8)])
        net = Backbone(pair, LineBank() if h == "8+8+lines" else None)
    else:
        assert isinstance(h, int)
        torch.manual_seed(1)
        net = FeatureNet(h).eval()
    clusters = 16 if mode == "clusters" else None
    options = FitOptions(prototype=mode, standardise=standardise, threads=1, clusters=clusters or 1)  # type: ignore[arg-type]
    proto = build_prototype(net, kolektor_images[:4], SPEC, PREP, options)
    images = np.stack([preprocess(read_image(p), SPEC, PREP) for p in kolektor_images])
    model = export_onnx(net, SPEC.height, SPEC.width, distance=distance, pooling=pooling, clusters=clusters,
                        smoothing=smoothing)
    heat_ort, score_ort = OnnxruntimeScorer(model, proto.mean, proto.scale, threads=1).run(images)
    with torch.no_grad():
        head = ScoringHead(distance, pooling, clusters is not None, smoothing,
                           member_dims=Backbone.of(net).member_dims)
        heat_pt, score_pt = InspectionModel(net, head).eval()(
            torch.from_numpy(images), torch.from_numpy(proto.mean), torch.from_numpy(proto.scale)
        )
    assert heat_ort.shape == tuple(heat_pt.shape) == (6, 145, 49)
    # 1e-4 absolute, or relative where distances are large (float32 has ~7 significant digits, and an
    # unstandardised distance of ~150 already differs in the 6th between two summation orders)
    np.testing.assert_allclose(heat_ort, heat_pt.numpy(), atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(score_ort, score_pt.numpy(), atol=1e-4, rtol=1e-4)
    assert float(score_ort.std()) > 0  # real, different images: not a degenerate comparison

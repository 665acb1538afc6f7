"""The fp16 (mixed-precision) model that TensorRT builds, run in ONNX Runtime and compared with fp32.

Tolerance: 1e-2 × max(1, largest fp32 score), absolute, on scores and heatmaps — the same one
``trainer build-engine --precision fp16`` applies to the TensorRT plan. (Measured here on CPU: ~1e-3.)
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from harness import relist_hashes
from inference_support import BundleFactory, sample_images
from onnx import TensorProto

from linewatch.bundle.registry import load_bundle
from linewatch.inference.onnxruntime import OnnxruntimeBackend, OnnxruntimeConfig
from trainer.engine import TOLERANCE
from trainer.precision import convert_to_fp16, scoring_head_nodes

CONFIG = OnnxruntimeConfig(intra_op_threads=1)


def fp16_copy(bundle_path: Path, tmp_path: Path) -> Path:
    """The same bundle with its model.onnx replaced by the fp16 conversion (re-hashed)."""
    copy = tmp_path / "fp16" / bundle_path.name
    shutil.copytree(bundle_path, copy)
    (copy / "model.onnx").write_bytes(convert_to_fp16((bundle_path / "model.onnx").read_bytes()))
    relist_hashes(copy)
    return copy


@pytest.mark.parametrize(("h", "distance", "pooling", "members", "lines"),
                         [(16, "l2", 1, 1, False), (32, "l1", 3, 1, False), (16, "l2", 1, 2, False),
                          (16, "l2", 1, 2, True)])
def test_fp16_model_matches_fp32_within_the_stated_tolerance(
    make_bundle: BundleFactory, tmp_path: Path, h: int, distance: str, pooling: int, members: int, lines: bool
) -> None:
    bundle, _ = make_bundle(h=h, distance=distance, pooling=pooling, members=members, lines=lines)
    assert bundle.manifest.scoring.members == members
    assert (bundle.manifest.scoring.line_bank is not None) == lines
    fp32 = OnnxruntimeBackend(bundle, CONFIG)
    fp16 = OnnxruntimeBackend(load_bundle(fp16_copy(bundle.path, tmp_path)), CONFIG)  # validates float32 I/O
    images = sample_images(4)
    ref = fp32.infer(images, want_heatmap=True)
    got = fp16.infer(images, want_heatmap=True)
    tolerance = TOLERANCE["fp16"] * max(1.0, max(abs(o.score) for o in ref))
    for r, g in zip(ref, got, strict=True):
        assert abs(r.score - g.score) <= tolerance
        assert np.max(np.abs(r.heatmap - g.heatmap)) <= tolerance  # type: ignore[operator]
        assert r.heatmap is not None and r.heatmap[g.argmax_rc] >= r.heatmap.max() - tolerance
    # it is really reduced precision: not bit-identical to fp32
    assert any(r.score != g.score for r, g in zip(ref, got, strict=True))


def test_backbone_is_fp16_head_and_io_stay_fp32(make_bundle: BundleFactory) -> None:
    bundle, _ = make_bundle(h=8)
    model = onnx.load_from_string(convert_to_fp16(bundle.model_path.read_bytes()))
    head = set(scoring_head_nodes(model))
    assert head and all(name.startswith("/head/") for name in head)
    weights = {init.name: init.data_type for init in model.graph.initializer}
    conv_weights = [n.input[1] for n in model.graph.node if n.op_type == "Conv"]
    assert len(conv_weights) == 8 and all(weights[w] == TensorProto.FLOAT16 for w in conv_weights)
    types = {vi.name: vi.type.tensor_type.elem_type for vi in model.graph.value_info}
    for node in model.graph.node:
        if node.name in head:
            assert all(types.get(o, TensorProto.FLOAT) == TensorProto.FLOAT for o in node.output), node.name
    for io in [*model.graph.input, *model.graph.output]:
        assert io.type.tensor_type.elem_type == TensorProto.FLOAT, io.name


def test_standardised_distances_that_overflow_fp16_stay_finite(
    make_bundle: BundleFactory, tmp_path: Path
) -> None:
    # A tiny spread makes deviations ~1e3: their squares summed over channels exceed fp16's 65504, which is
    # why the head stays fp32.
    bundle, _ = make_bundle(h=16)
    scale = np.full_like(bundle.prototype_scale, 1e-3)
    fp16 = OnnxruntimeBackend(load_bundle(fp16_copy(bundle.path, tmp_path)), CONFIG)
    fp32 = OnnxruntimeBackend(bundle, CONFIG)
    for backend in (fp16, fp32):
        backend.set_prototype(bundle.prototype_mean, scale)
    images = sample_images(2)
    ref = [o.score for o in fp32.infer(images, want_heatmap=False)]
    got = [o.score for o in fp16.infer(images, want_heatmap=False)]
    assert min(ref) > 300.0 and np.all(np.isfinite(got))
    np.testing.assert_allclose(got, ref, rtol=TOLERANCE["fp16"])


def test_export_cli_writes_the_fp16_model(make_bundle: BundleFactory, tmp_path: Path) -> None:
    bundle, _ = make_bundle(h=8)
    out = tmp_path / "out" / "model.fp16.onnx"
    result = subprocess.run(
        [sys.executable, "-m", "trainer", "export", "--bundle", str(bundle.path), "--precision", "fp16",
         "--out", str(out)], capture_output=True, text=True, timeout=120, check=False,
    )
    assert result.returncode == 0, result.stderr
    assert out.read_bytes() == convert_to_fp16(bundle.model_path.read_bytes())
    refused = subprocess.run(
        [sys.executable, "-m", "trainer", "export", "--bundle", str(bundle.path), "--out",
         str(bundle.path / "x.onnx")], capture_output=True, text=True, timeout=120, check=False,
    )
    assert refused.returncode == 2 and "refusing to write inside the bundle" in refused.stderr

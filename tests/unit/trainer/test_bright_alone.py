"""The extremes member's bright excursions rejecting alone (``ExtremesSpec.bright``, ``trainer fit
--bright-alone``): for defects that catch the light, asked for by the user, never by default."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from test_dark_path import channels, exported_alone_paths_agree, member

from trainer.extremes import ExtremesMember
from trainer.model import Backbone, FeatureNet, feature_map_size


@pytest.mark.parametrize("dark_path", [0, 32])
def test_a_bright_scratch_lights_the_bright_channel_and_a_dark_crack_the_dark_one(dark_path: int) -> None:
    """Channels: |excursion|, darkest, (dark path), brightest — the bright one last, at the scratch's own
    height above the image mean in spreads; a dark crack leaves it at the texture's level."""
    rng = np.random.default_rng(0)
    parts = 0.01 * rng.standard_normal((2, 1, 96, 96)).astype(np.float32)
    parts[0, 0, 40, 20:80] += 0.5  # part 0: a bright scratch; part 1: a dark crack
    parts[1, 0, 20:80, 50] -= 0.5
    out = channels(member(dark_path, bright=True), parts)
    assert out.shape[1] == (4 if dark_path else 3)
    brightest, darkest = out[:, -1].reshape(2, -1).max(1), out[:, 1].reshape(2, -1).max(1)
    expected = 10.0 * (parts[0, 0, 40, 20:80] - parts[0].mean()).max()
    assert brightest[0] == pytest.approx(expected, rel=1e-5)
    assert brightest[1] < 0.1 * brightest[0] and darkest[0] < 0.1 * darkest[1]
    # the lit cells: those whose 4-px footprint (2i + 14 .. 2i + 17) holds row 40
    rows = set(np.nonzero(out[0, -1] > 2.0)[0])
    assert rows == {i for i in range(feature_map_size(96)) if 2 * i + 14 <= 40 <= 2 * i + 17}


def test_the_exported_graph_joins_the_bright_excursions_as_an_alone_path_in_fp32_and_fp16() -> None:
    """ONNX Runtime against PyTorch: the heatmap is the largest of the averaged map and the three alone maps
    (darkest, dark path, brightest); the fp16 graph (as TensorRT builds it) agrees."""
    torch.manual_seed(0)
    backbone = Backbone(FeatureNet(4), extremes=member(24, bright=True))
    assert backbone.member_dims == (4, 1, 1, 1, 1) and backbone.alone_members == (2, 3, 4)
    rng = np.random.default_rng(3)
    x = 0.1 * rng.standard_normal((2, 1, 96, 90)).astype(np.float32)
    x[1, 0, 50, 20:70] += 0.6
    f, score = exported_alone_paths_agree(backbone, x)
    assert score[1] == pytest.approx(f[1, 7].max(), rel=1e-4)  # the scratch decides part 1


def test_the_manifest_holds_the_bright_channel_from_schema_12_only_with_alone_and_bench_counts_it() -> None:
    from daemon_support import make_manifest

    from linewatch.bundle.manifest import BundleManifest, ExtremesSpec
    from linewatch.service.bench import model_gflop
    from trainer.fit import scoring_spec

    manifest = make_manifest(96, 128, h=16)
    assert ExtremesSpec(alone=True, bright=True).alone_members == (1, 2)
    spec = ExtremesSpec(alone=True, dark_path=64, bright=True)
    assert spec.member_dims == (1, 1, 1, 1) and spec.alone_members == (1, 2, 3)
    scoring = scoring_spec(36, 96, 128, members=2, extremes=spec)
    assert scoring.alone_members == (3, 4, 5) and scoring.smoothed_alone_members == ()
    assert scoring.features_label.endswith("a dark path of 64 px rejecting alone and its bright excursions "
                                           "rejecting alone (maps averaged)")
    without = scoring_spec(35, 96, 128, members=2, extremes=ExtremesSpec(alone=True, dark_path=64))
    extra = (model_gflop(manifest.model_copy(update={"scoring": scoring}))
             - model_gflop(manifest.model_copy(update={"scoring": without})))
    cells = feature_map_size(96) * feature_map_size(128)
    assert extra == pytest.approx((16 + 1) * cells / 1e9)  # one more 4×4 max per cell, and its ReLU
    data = json.loads(manifest.model_copy(update={"scoring": scoring}).to_json())
    assert data["scoring"]["extremes"] == {"window": 4, "alone": True, "dark_path": 64, "bright": True}
    data["schema_version"] = 11  # a schema-11 daemon would read four channels as three
    with pytest.raises(ValidationError, match=r"scoring.extremes.bright needs schema_version >= 12"):
        BundleManifest.model_validate(data)
    with pytest.raises(ValidationError, match="bright needs alone"):
        ExtremesSpec(bright=True)


def test_the_fit_adds_the_bright_path_only_when_asked_and_then_catches_a_bright_scratch(tmp_path: Path
                                                                                        ) -> None:
    """Off by default; ``--bright-alone`` gives one more path, calibrated like the others, and every part
    with a bright scratch among the bright strokes is rejected, where without it some pass."""
    from fit_support import tiny_backbone
    from test_extremes import _write_images, blades, cracked

    from linewatch.bundle.registry import load_bundle
    from trainer.fit import FitError, FitOptions, add_arguments, fit_product
    from trainer.scorer import OnnxruntimeScorer

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    common = ["--good", "g", "--product", "p", "--out", "o"]
    assert parser.parse_args(common).bright_alone is False
    assert parser.parse_args([*common, "--bright-alone"]).bright_alone is True
    strokes = _write_images(tmp_path / "strokes", blades(np.random.default_rng(5), 16))
    backbone = Backbone(tiny_backbone(), extremes=ExtremesMember())
    with pytest.raises(FitError, match="--bright-alone needs --alone-members"):
        fit_product(strokes, "bad", tmp_path / "out", backbone,
                    FitOptions(bright_alone=True, alone_members=False))
    opts = FitOptions(clusters=8, folds=4, threads=1, dark_path=0)
    plain = fit_product(strokes, "plain", tmp_path / "out", backbone, opts)
    assert plain.manifest.scoring.extremes is not None and not plain.manifest.scoring.extremes.bright
    bright = fit_product(strokes, "bright", tmp_path / "out", backbone,
                         FitOptions(clusters=8, folds=4, threads=1, dark_path=0, bright_alone=True))
    m = bright.manifest
    assert m.schema_version == 12 and m.scoring.member_dims == (8, 1, 1, 1)
    assert m.scoring.alone_members == (2, 3)
    assert m.provenance.notes["extremes_member"].endswith("its bright excursions also reject alone")
    assert m.provenance.notes["alone_members"].startswith("members 2, 3 reject alone")
    # the calibration joined three paths: the averaged map, the darkest excursion, the brightest
    assert any(k.startswith("path2_") for k in m.calibration.parameters)
    assert not any(k.startswith("path2_") for k in plain.manifest.calibration.parameters)

    parts = blades(np.random.default_rng(6), 6)
    scratched = -cracked(-parts, 0.8)  # a jagged 1-px line 0.8 above the ground, the strokes' 0.4

    def scores(result: object, images: np.ndarray) -> np.ndarray:
        bundle = load_bundle(result.path)  # type: ignore[attr-defined]
        scorer = OnnxruntimeScorer((bundle.path / "model.onnx").read_bytes(), bundle.prototype_mean,
                                   bundle.prototype_scale, threads=1)
        return scorer.run(images)[1] / bundle.manifest.threshold

    assert (scores(bright, scratched) > 1.0).all() and (scores(bright, parts) <= 1.0).all()
    assert (scores(plain, scratched) <= 1.0).any()  # averaged with the network, some hide among the strokes

"""The extremes member's dark path (trainer/extremes.py ``dark_path_map``, ``ExtremesSpec.dark_path``): how
dark the darkest path of a given length stays all along — a long thin crack, not a deep short mark."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from trainer.export import export_onnx
from trainer.extremes import ExtremesMember
from trainer.model import Backbone, FeatureNet, feature_map_size


def member(dark_path: int, spread: float = 0.1, bright: bool = False) -> ExtremesMember:
    out = ExtremesMember(alone=True, dark_path=dark_path, bright=bright)
    out.inverse_spread.fill_(1.0 / spread)
    out.fitted = True
    return out.eval()


def channels(m: ExtremesMember, images: np.ndarray) -> np.ndarray:
    """N×C×rows×cols: |excursion|, the darkest excursion, the dark path (and the brightest excursion)."""
    with torch.no_grad():
        return m(torch.from_numpy(images.astype(np.float32))).numpy()


def test_a_long_faint_crack_outlasts_a_short_deep_mark() -> None:
    """The point of the channel: on a noisy part a faint crack wandering over 110 px and a deep pit of 3×3 px.
    The darkest pixel ranks the pit first; along a path of 48 px only the crack stays dark."""
    rng = np.random.default_rng(0)
    parts = 0.1 * rng.standard_normal((3, 1, 128, 160)).astype(np.float32)
    y = 60.0
    for x in range(25, 135):  # part 0: a crack 0.5 deep (5 spreads) that wanders
        y += rng.choice([-1.0, 0.0, 1.0])
        parts[0, 0, int(y), x] -= 0.5
    parts[1, 0, 60:63, 80:83] -= 1.0  # part 1: a pit 10 spreads deep; part 2: good
    out = channels(member(48), parts)
    darkest, path = out[:, 1].reshape(3, -1).max(1), out[:, 2].reshape(3, -1).max(1)
    assert darkest[1] > darkest[0] > darkest[2]
    assert path[0] > 1.8 * max(path[1], path[2])
    assert path[0] > 4.0  # about the crack's own depth, all along the way


@pytest.mark.parametrize("axis", ["vertical", "horizontal", "diagonal"])
def test_a_path_of_that_length_is_seen_and_a_shorter_one_is_not(axis: str) -> None:
    """dark_path 32 = paths of 2·4 + 1 = 9 blocks of 4 px: a 1-px line over 10 blocks lights the channel, one
    over 7 blocks does not, in each direction a path may go (one block forward and up to one sideways)."""

    def line(blocks: int) -> np.ndarray:
        img = np.zeros((1, 1, 112, 112), np.float32)
        for t in range(4 * blocks):
            r, c = 16 + t, 50
            if axis == "horizontal":
                r, c = 50, 16 + t
            elif axis == "diagonal":
                c = 16 + t
            img[0, 0, r, c] = -1.0
        return img

    m = member(32)
    # the line's darkness: (mean − x) / spread, the mean a little below 0
    assert channels(m, line(10))[0, 2].max() == pytest.approx(10.0 * (1.0 + line(10).mean()), rel=1e-5)
    assert channels(m, line(7))[0, 2].max() == 0.0  # shorter than the path: nothing darker all along
    assert channels(m, line(7))[0, 1].max() > 9.0  # while its darkest pixel is as dark as the long one's


def test_the_dark_path_lights_the_cells_whose_footprint_its_blocks_meet() -> None:
    """A vertical crack at input column 61 (block 15, pixels 60..63) lights cells j whose 4-px footprint
    2j + 14 .. 2j + 17 meets that block, and only rows along the crack."""
    img = np.zeros((1, 1, 128, 128), np.float32)
    img[0, 0, 30:100, 61] = -1.0
    lit = channels(member(32), img)[0, 2] > 0.5
    rows, cols = np.nonzero(lit)
    assert set(cols) == {j for j in range(feature_map_size(128)) if 2 * j + 14 <= 63 and 2 * j + 17 >= 60}
    # the centres of 9-block paths lie 4 blocks inside the crack's blocks 7..24: pixels 44..83
    assert set(rows) == {i for i in range(feature_map_size(128)) if 2 * i + 14 <= 83 and 2 * i + 17 >= 44}


def exported_alone_paths_agree(backbone: Backbone, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ONNX Runtime against PyTorch for a network of 4 features and an extremes member that rejects alone:
    the heatmap is the largest of the averaged map (network and |excursion|) and each alone map, the score
    its largest cell; the fp16 graph (as TensorRT builds it) stays finite and within 2 %. Returns the
    features and the scores."""
    from trainer.precision import convert_to_fp16
    from trainer.scorer import OnnxruntimeScorer

    channels = sum(backbone.member_dims)
    mean = np.zeros((2, channels, 1, 1), np.float32)
    scale = np.ones((1, channels, 1, 1), np.float32)
    graph = export_onnx(backbone, x.shape[2], x.shape[3], "l2", 1, clusters=2)
    heatmap, score = OnnxruntimeScorer(graph, mean, scale, 1).run(x)
    with torch.no_grad():
        f = backbone.eval()(torch.from_numpy(x)).numpy()
    averaged = 0.5 * (np.sqrt((f[:, :4] ** 2).sum(1)) + f[:, 4])
    expected = np.maximum.reduce([averaged, *(f[:, c] for c in range(5, channels))])
    np.testing.assert_allclose(heatmap, expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(score, expected.reshape(len(x), -1).max(1), rtol=1e-4, atol=1e-4)
    half_heat, half_score = OnnxruntimeScorer(convert_to_fp16(graph), mean, scale, 1).run(x)
    assert np.all(np.isfinite(half_heat))
    np.testing.assert_allclose(half_score, score, rtol=2e-2)
    return f, score


def test_the_exported_graph_joins_the_dark_path_as_an_alone_path_in_fp32_and_fp16() -> None:
    """ONNX Runtime against PyTorch: the heatmap is the largest of the averaged map (network and |excursion|)
    and the two alone maps; the fp16 graph (as TensorRT builds it) agrees and stays finite (the outside of the
    image is −1e4, not −inf)."""
    torch.manual_seed(0)
    backbone = Backbone(FeatureNet(4), extremes=member(24))
    assert backbone.member_dims == (4, 1, 1, 1) and backbone.alone_members == (2, 3)
    rng = np.random.default_rng(3)
    x = 0.1 * rng.standard_normal((2, 1, 96, 90)).astype(np.float32)
    x[0, 0, 20:80, 40] -= 0.5
    f, _ = exported_alone_paths_agree(backbone, x)
    assert f[0, 6].max() > 2.0 * f[1, 6].max()  # the crack's path, and the noise's best


def test_the_manifest_holds_a_dark_path_from_schema_11_only_with_alone_and_bench_counts_it() -> None:
    from daemon_support import make_manifest

    from linewatch.bundle.manifest import BundleManifest, ExtremesSpec
    from linewatch.service.bench import model_gflop
    from trainer.fit import scoring_spec

    manifest = make_manifest(96, 128, h=16)
    spec = ExtremesSpec(alone=True, dark_path=64)
    assert spec.member_dims == (1, 1, 1) and spec.alone_members == (1, 2)
    scoring = scoring_spec(35, 96, 128, members=2, extremes=spec)
    assert scoring.member_dims == (16, 16, 1, 1, 1) and scoring.alone_members == (3, 4)
    assert scoring.smoothed_alone_members == ()  # a 1-px crack's path: not smoothed
    assert "rejecting alone) and a dark path of 64 px rejecting alone" in scoring.features_label
    without = scoring_spec(34, 96, 128, members=2, extremes=ExtremesSpec(alone=True))
    extra = (model_gflop(manifest.model_copy(update={"scoring": scoring}))
             - model_gflop(manifest.model_copy(update={"scoring": without})))
    cells, blocks = feature_map_size(96) * feature_map_size(128), 24 * 32
    # the blocks' max per pixel; 2 cones × 2 ways × 8 steps × 3 operations per block, 3 more; the cells'
    # max of 4 blocks (the global prototype's head: a few operations per channel, not counted)
    assert extra == pytest.approx((96 * 128 + (4 * 8 * 3 + 3) * blocks + 4 * cells) / 1e9)
    data = json.loads(manifest.model_copy(update={"scoring": scoring}).to_json())
    assert data["scoring"]["extremes"] == {"window": 4, "alone": True, "dark_path": 64, "bright": False}
    data["schema_version"] = 10  # a schema-10 daemon would read three channels as two
    with pytest.raises(ValidationError, match=r"scoring.extremes.dark_path needs schema_version >= 11"):
        BundleManifest.model_validate(data)
    for wrong, message in (({"alone": False, "dark_path": 64}, "dark_path needs alone"),
                           ({"alone": True, "dark_path": 60}, "multiple of 8"),
                           ({"alone": True, "dark_path": 4096}, "less than or equal to 2048")):
        with pytest.raises(ValidationError, match=message):
            ExtremesSpec(**wrong)


def test_the_fit_chooses_an_eighth_of_the_longer_side_and_takes_a_given_length_or_none(tmp_path: Path
                                                                                         ) -> None:
    from fit_support import tiny_backbone
    from test_extremes import _write_images, blades

    from linewatch.bundle.manifest import InputSpec
    from trainer.fit import FitError, FitOptions, dark_path_length, fit_product

    assert dark_path_length(InputSpec(height=408, width=1024), FitOptions()) == 128  # KolektorSDD
    assert dark_path_length(InputSpec(height=256, width=256), FitOptions()) == 32
    assert dark_path_length(InputSpec(height=100, width=120), FitOptions()) == 8  # never shorter
    assert dark_path_length(InputSpec(height=256, width=256), FitOptions(dark_path=72)) == 72
    strokes = _write_images(tmp_path / "strokes", blades(np.random.default_rng(5), 12))
    backbone = Backbone(tiny_backbone(), extremes=ExtremesMember())
    for wrong, message in ((12, "dark path 12 px: Value error, dark_path must be a multiple of 8"),
                           (-8, "greater than or equal to 0"), (4096, "less than or equal to 2048")):
        with pytest.raises(FitError, match=message):
            fit_product(strokes, "bad", tmp_path / "out", backbone, FitOptions(dark_path=wrong))
    with pytest.raises(FitError, match="--dark-path needs --alone-members"):
        fit_product(strokes, "bad", tmp_path / "out", backbone, FitOptions(dark_path=64, alone_members=False))
    none = fit_product(strokes, "none", tmp_path / "out", backbone,
                       FitOptions(clusters=8, folds=3, threads=1, dark_path=0))
    assert none.manifest.scoring.extremes is not None and none.manifest.scoring.extremes.dark_path == 0
    assert none.manifest.scoring.alone_members == (2,)
    assert "dark path" not in none.manifest.provenance.notes["extremes_member"]

"""The grey-level extremes member (trainer/extremes.py): how far beyond the good parts' grey levels a pixel
lies, fitted per product, kept where the whitened member is left out, exported inside model.onnx."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from pydantic import ValidationError

from trainer.export import export_onnx
from trainer.extremes import MIN_SPREAD, ExtremesFit, ExtremesMember, fit_extremes_members, image_spreads
from trainer.model import Backbone, FeatureNet, feature_map_size
from trainer.whitened import WhitenedMember

SIZE = 96


def blades(rng: np.random.Generator, n: int, size: int = SIZE) -> np.ndarray:
    """N×1×size×size: a grass-like texture of many thin bright and dark strokes (±0.4) on a mid-grey ground
    with fine noise: its grey levels are bounded, and its own thin lines are everywhere."""
    out = []
    for _ in range(n):
        img = np.zeros((size, size), np.float32)
        for _ in range(60):
            y, x = rng.integers(0, size, 2)
            angle = rng.uniform(0, np.pi)
            length = rng.uniform(6, 16)
            end = (int(x + length * np.cos(angle)), int(y + length * np.sin(angle)))
            cv2.line(img, (int(x), int(y)), end, float(rng.choice([-0.4, 0.4])), 1)
        out.append(img + 0.03 * rng.standard_normal((size, size)).astype(np.float32))
    return np.stack(out)[:, None]


def cracked(img: np.ndarray, depth: float = 0.8) -> np.ndarray:
    """A copy with a 1-px dark crack (a jagged diagonal path of 30 px) through the middle, ``depth`` below the
    mean: as thin as the texture's own strokes, darker than any of them."""
    out = img.copy()
    y, x = 33, 33
    for _ in range(30):
        out[..., y, x] = img[..., y, x] - depth
        y, x = y + 1, x + (1 if (y + x) % 3 else 0)
    return out


def run(member: ExtremesMember, images: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return member(torch.from_numpy(images)).numpy()[:, 0]


def fit(images: np.ndarray, kurtosis: float = 1.5, groups: list[int] | None = None,
        n_folds: int = 0) -> ExtremesFit:
    batches = (images[i : i + 4] for i in range(0, len(images), 4))
    return fit_extremes_members(ExtremesMember(), batches, groups or [0] * len(images), n_folds, kurtosis,
                                max_kurtosis=0.5)


@pytest.fixture(scope="module")
def good() -> np.ndarray:
    return blades(np.random.default_rng(0), 12)


@pytest.fixture(scope="module")
def member(good: np.ndarray) -> ExtremesMember:
    fitted = fit(good)
    assert fitted.member is not None, fitted.note()
    return fitted.member


def test_a_thin_crack_darker_than_the_texture_stands_out_at_full_resolution(member: ExtremesMember) -> None:
    """The point of the member: a 1-px crack among 1-px strokes, darker than any of them, scores above every
    good part's maximum, on a cell whose footprint it crosses."""
    parts = blades(np.random.default_rng(1), 8)
    good_max = run(member, parts).reshape(8, -1).max(1)
    defect_maps = run(member, cracked(parts))
    assert defect_maps.reshape(8, -1).max(1).min() > 1.3 * good_max.max()
    for m in defect_maps:
        i, j = np.unravel_index(np.argmax(m), m.shape)
        assert 2 * i + 17 >= 33 and 2 * i + 14 <= 62 and 2 * j + 17 >= 33  # the footprint meets the path


@pytest.mark.parametrize(("height", "width", "window"),
                         [(96, 96, 4), (40, 34, 4), (64, 130, 2), (64, 64, 16)])
def test_the_member_answers_on_the_networks_grid_and_each_cell_sees_its_footprint(
        height: int, width: int, window: int) -> None:
    member = ExtremesMember(window)
    x = torch.zeros(1, 1, height, width)
    out = member(x)
    assert out.shape == (*FeatureNet(4)(x).shape[:1], 1, feature_map_size(height), feature_map_size(width))
    # one bright pixel lights exactly the cells whose window×window footprint (centred on the cell's 2×2
    # pixels 2i + 15, 2i + 16) holds it
    y0, x0 = 2 * (out.shape[2] // 2) + 15, 2 * (out.shape[3] // 2) + 15
    x[0, 0, y0, x0] = 1.0
    lit = member(x)[0, 0].numpy() > 0.5
    rows = [i for i in range(out.shape[2]) if 2 * i + 16 - window // 2 <= y0 < 2 * i + 16 + window // 2]
    cols = [j for j in range(out.shape[3]) if 2 * j + 16 - window // 2 <= x0 < 2 * j + 16 + window // 2]
    assert len(rows) == len(cols) == window // 2
    assert np.array_equal(np.argwhere(lit), np.array([(i, j) for i in rows for j in cols]))


def test_it_is_kept_exactly_where_the_whitened_member_is_left_out(good: np.ndarray) -> None:
    def unread() -> Iterator[np.ndarray]:
        raise AssertionError("a member that is left out reads no image")
        yield good

    gaussian = fit_extremes_members(ExtremesMember(), unread(), [0] * len(good), 0, 0.2, 0.5)
    assert not gaussian.kept and gaussian.fold_members == []
    assert gaussian.note().startswith("left out: the whitened good images' mean excess kurtosis 0.200 < 0.5")
    kept = fit(good, kurtosis=1.5)
    assert kept.kept
    assert kept.note().startswith("kept: the whitened good images' mean excess kurtosis 1.500 >= 0.5")
    # flat parts (the whitened fit has no spectrum: nan): any grey level beyond theirs is a mark
    flat = np.full((4, 1, 40, 40), 0.25, np.float32)
    blank = fit(flat, kurtosis=math.nan)
    assert blank.member is not None and "flat" in blank.note()
    assert float(blank.member.inverse_spread) == pytest.approx(1.0 / MIN_SPREAD)  # no division by zero
    marked = flat.copy()
    marked[:, :, 20, 20] -= 0.1  # 13 grey levels
    assert np.isfinite(run(blank.member, marked)).all() and run(blank.member, marked).max() > 10.0


def test_fold_members_take_the_spread_of_the_other_folds_only(good: np.ndarray) -> None:
    loud = good.copy()
    loud[:3] *= 4.0  # fold 0's images spread 4× as far
    fitted = fit(loud, groups=[0] * 3 + [1] * 3 + [2] * 6, n_folds=3)
    spreads = image_spreads([loud])
    assert fitted.member is not None and len(fitted.fold_members) == 3
    assert 1.0 / float(fitted.member.inverse_spread) == pytest.approx(float(np.median(spreads)), rel=1e-6)
    assert 1.0 / float(fitted.fold_members[0].inverse_spread) == pytest.approx(
        float(np.median(spreads[3:])), rel=1e-6)
    with pytest.raises(ValueError, match="each fold needs images beside it"):
        fit(good, groups=[0] * len(good), n_folds=1 + 1)
    with pytest.raises(ValueError, match="not among 2 folds"):
        fit(good, groups=[2] * len(good), n_folds=2)
    with pytest.raises(ValueError, match="2 images were announced, 12 came"):
        fit_extremes_members(ExtremesMember(), [good], [0, 0], 0, 1.0, 0.5)
    with pytest.raises(ValidationError, match="window must be even"):
        ExtremesMember(3)


def test_an_unfitted_member_is_never_exported_and_a_fitted_one_exports_exactly(member: ExtremesMember
                                                                              ) -> None:
    from fit_support import assert_exports_as_two_members

    torch.manual_seed(0)
    net = FeatureNet(4)
    with pytest.raises(ValueError, match="extremes member is not fitted"):
        export_onnx(Backbone(net, extremes=ExtremesMember()), 96, 96, "l2", 1, clusters=2)
    backbone = Backbone(net, extremes=member)
    assert backbone.fixed_members == (1,) and backbone.unfitted == []
    assert_exports_as_two_members(backbone, cracked(blades(np.random.default_rng(4), 2))[:, :, :, :90])


def _write_images(folder: Path, images: np.ndarray) -> Path:
    folder.mkdir(parents=True)
    for i, img in enumerate(images):
        cv2.imwrite(str(folder / f"{i:03d}.png"), np.clip(127.5 * (img[0] + 1.0), 0, 255).astype(np.uint8))
    return folder


def test_a_fit_keeps_one_of_the_whitened_and_the_extremes_member_and_says_which(tmp_path: Path) -> None:
    """End to end: on strokes (not Gaussian once whitened) the bundle carries the extremes member and not the
    whitened one, the daemon's loader takes it and every cracked part scores above every good one; on Gaussian
    streaks it is the other way round, and the bundle is byte for byte the one fitted without the extremes
    member."""
    from fit_support import tiny_backbone
    from test_whitened import coloured

    from linewatch.bundle.registry import load_bundle
    from trainer.fit import FitOptions, fit_product
    from trainer.scorer import OnnxruntimeScorer

    opts = FitOptions(clusters=8, folds=3, threads=1)
    strokes = _write_images(tmp_path / "strokes", blades(np.random.default_rng(5), 15))
    both = Backbone(tiny_backbone(), whitened=WhitenedMember(), extremes=ExtremesMember())
    result = fit_product(strokes, "strokes", tmp_path / "out", both, opts)
    bundle = load_bundle(result.path)
    scoring, notes = bundle.manifest.scoring, bundle.manifest.provenance.notes
    # |excursion| averaged with the network, its dark excursions and its dark path rejecting alone (the
    # default; the dark path an eighth of the 96-px side, the shortest there is)
    assert scoring.whitened is None and scoring.extremes is not None and scoring.member_dims == (8, 1, 1, 1)
    assert scoring.alone_members == (2, 3)
    assert notes["whitened_member"].startswith("left out: ") and notes["extremes_member"].startswith("kept: ")
    assert "fitted on 15 good images (and one member per fold" in notes["extremes_member"]
    assert notes["extremes_member"].endswith("its dark excursions also reject alone; and how dark a path of "
                                             "8 px stays all along (the darkest pixel of each 4x4 block)")
    assert notes["alone_members"].startswith("members 2, 3 reject alone, weighed ")
    assert json.loads((result.path / "bundle.json").read_text())["scoring"]["extremes"] == {
        "window": 4, "alone": True, "dark_path": 8, "bright": False}
    assert bundle.manifest.schema_version == 12
    parts = blades(np.random.default_rng(6), 6)
    scorer = OnnxruntimeScorer((result.path / "model.onnx").read_bytes(), bundle.prototype_mean,
                               bundle.prototype_scale, threads=1)
    _, good_scores = scorer.run(parts)
    _, crack_scores = scorer.run(cracked(parts))
    assert crack_scores.min() > good_scores.max()  # every cracked part above every good one

    streaks = _write_images(tmp_path / "streaks", 0.25 * coloured(np.random.default_rng(7), 15, 96))
    kept = fit_product(streaks, "streaks", tmp_path / "out", both, opts)
    assert kept.manifest.scoring.extremes is None and kept.manifest.scoring.whitened is not None
    assert kept.manifest.scoring.alone_members == (2,)  # the whitened member's own path
    assert kept.manifest.provenance.notes["extremes_member"].startswith("left out: ")
    whitened_only = Backbone(tiny_backbone(), whitened=WhitenedMember())
    alone = fit_product(streaks, "alone", tmp_path / "out", whitened_only, opts)
    assert (alone.path / "model.onnx").read_bytes() == (kept.path / "model.onnx").read_bytes()
    assert alone.manifest.threshold == kept.manifest.threshold


def test_the_manifest_names_the_member_bench_counts_it_and_older_schemas_cannot_hold_it() -> None:
    from daemon_support import make_manifest

    from linewatch.bundle.manifest import BundleManifest
    from linewatch.service.bench import model_gflop
    from trainer.fit import scoring_spec

    manifest = make_manifest(96, 128, h=16)
    scoring = scoring_spec(33, 96, 128, members=2, extremes=ExtremesMember().spec())
    assert scoring.member_dims == (16, 16, 1)
    label = "33 features, 2 members of 16 and a grey-level extremes member (maps averaged)"
    assert scoring.features_label == label
    plain = model_gflop(manifest.model_copy(update={"scoring": scoring_spec(32, 96, 128, members=2)}))
    counted = model_gflop(manifest.model_copy(update={"scoring": scoring}))
    cells = feature_map_size(96) * feature_map_size(128)
    assert counted - plain == pytest.approx((3.0 * 96 * 128 + 16.0 * cells) / 1e9, rel=1e-9)
    data = json.loads(manifest.model_copy(update={"scoring": scoring}).to_json())
    assert data["scoring"]["extremes"] == {"window": 4, "alone": False, "dark_path": 0, "bright": False}
    data["schema_version"] = 6
    with pytest.raises(ValidationError, match=r"scoring.extremes needs schema_version >= 7"):
        BundleManifest.model_validate(data)
    # A schema-7 bundle (the thirteenth session's) reads as it was written, and writes back without the field
    data["schema_version"] = 7
    del data["scoring"]["extremes"]["alone"]
    older = BundleManifest.model_validate(data)
    assert older.scoring.alone_members == () and json.loads(older.to_json())["scoring"]["extremes"] == {
        "window": 4}


def test_a_dark_member_that_rejects_alone_is_counted_named_and_needs_schema_8() -> None:
    from daemon_support import make_manifest

    from linewatch.bundle.manifest import BundleManifest
    from linewatch.service.bench import model_gflop
    from trainer.fit import scoring_spec

    manifest = make_manifest(96, 128, h=16)
    scoring = scoring_spec(34, 96, 128, members=2, extremes=ExtremesMember(alone=True).spec())
    assert scoring.member_dims == (16, 16, 1, 1) and scoring.alone_members == (3,)
    assert scoring.smoothed_alone_members == ()  # single pixels: not smoothed
    assert "a grey-level extremes member (its dark excursions rejecting alone)" in scoring.features_label
    plain = model_gflop(manifest.model_copy(update={"scoring": scoring_spec(32, 96, 128, members=2)}))
    counted = model_gflop(manifest.model_copy(update={"scoring": scoring}))
    cells = feature_map_size(96) * feature_map_size(128)
    assert counted - plain == pytest.approx((3.0 * 96 * 128 + 33.0 * cells) / 1e9, rel=1e-9)
    data = json.loads(manifest.model_copy(update={"scoring": scoring}).to_json())
    data["schema_version"] = 7
    with pytest.raises(ValidationError, match=r"scoring.extremes.alone needs schema_version >= 8"):
        BundleManifest.model_validate(data)


def test_the_alone_paths_powers_need_schema_10_one_per_alone_member_and_a_sane_size() -> None:
    from daemon_support import make_manifest

    from linewatch.bundle.manifest import BundleManifest, ScoringSpec
    from trainer.fit import scoring_spec

    manifest = make_manifest(96, 128, h=16)
    scoring = scoring_spec(34, 96, 128, members=2, extremes=ExtremesMember(alone=True).spec())
    powered = ScoringSpec.model_validate({**scoring.model_dump(), "alone_exponents": (2.5,)})
    data = json.loads(manifest.model_copy(update={"scoring": powered}).to_json())
    assert data["schema_version"] == 12 and data["scoring"]["alone_exponents"] == [2.5]
    assert BundleManifest.model_validate(data).scoring.alone_exponents == (2.5,)
    data["schema_version"] = 9  # a schema-9 daemon would join the paths without the power
    with pytest.raises(ValidationError, match=r"scoring.alone_exponents needs schema_version >= 10"):
        BundleManifest.model_validate(data)
    for wrong, message in (((2.5, 1.5), "2 entries for 1 alone members"),
                           ((9.0,), "less than or equal to 8"), ((0.1,), "greater than or equal to 0.125"),
                           ((float("nan"),), "finite number")):
        with pytest.raises(ValidationError, match=message):
            ScoringSpec.model_validate({**scoring.model_dump(), "alone_exponents": wrong})
    without = scoring_spec(32, 96, 128, members=2)  # no member rejects alone: no power to give
    with pytest.raises(ValidationError, match="1 entries for 0 alone members"):
        ScoringSpec.model_validate({**without.model_dump(), "alone_exponents": (2.0,)})


def _alone_copy(member: ExtremesMember) -> ExtremesMember:
    """``member``'s fit with the dark channel that rejects alone."""
    alone = ExtremesMember(member.spec().window, alone=True)
    alone.inverse_spread.copy_(member.inverse_spread)
    alone.fitted = True
    return alone.eval()


def test_dark_excursions_are_a_channel_of_their_own_beside_the_averaged_one(member: ExtremesMember) -> None:
    alone = _alone_copy(member)
    parts = cracked(blades(np.random.default_rng(1), 4))
    with torch.no_grad():
        both = alone(torch.from_numpy(parts)).numpy()
    assert both.shape[1] == 2 and alone.feature_dim == 2 and alone.spec().member_dims == (1, 1)
    np.testing.assert_array_equal(both[:, 0], run(member, parts))  # the averaged channel is unchanged
    assert both[:, 1].min() >= 0.0  # a cell with nothing darker than the mean has no dark excursion
    assert (both[:, 1] <= both[:, 0] + 1e-6).all()
    # the crack is dark: the dark channel holds each part's largest excursion
    np.testing.assert_allclose(both[:, 1].reshape(4, -1).max(1), both[:, 0].reshape(4, -1).max(1), rtol=1e-6)
    # a bright pixel is only in the averaged channel
    bright = np.zeros((1, 1, 96, 96), np.float32)
    bright[0, 0, 50, 50] = 1.0
    with torch.no_grad():
        lit = alone(torch.from_numpy(bright)).numpy()[0]
    assert lit[0].max() > 10.0 * lit[1].max()


def test_members_that_reject_alone_join_the_heatmap_by_maximum_in_the_exported_graph(member: ExtremesMember
                                                                                     ) -> None:
    """The bundle's graph, the trainer's path-score graph and PyTorch agree: heatmap = max(mean of the
    averaged members' maps, the dark member's map), score = its max, paths = (averaged, dark)."""
    from trainer.scorer import OnnxruntimeScorer

    torch.manual_seed(0)
    backbone = Backbone(FeatureNet(4), extremes=_alone_copy(member))
    assert backbone.member_dims == (4, 1, 1) and backbone.alone_members == (2,)
    assert backbone.fixed_members == (1, 2)
    x = cracked(blades(np.random.default_rng(4), 2))[:, :, :, :90]
    mean, scale = np.zeros((2, 6, 1, 1), np.float32), np.ones((1, 6, 1, 1), np.float32)
    scale[:, 5:] = 0.5  # the alone members weighed 2×, as a fit folds its weights into their scale
    graph = export_onnx(backbone, 96, 90, "l2", 1, clusters=2)
    heatmap, score = OnnxruntimeScorer(graph, mean, scale, 1).run(x)
    graph = export_onnx(backbone, 96, 90, "l2", 1, clusters=2, path_scores=True)
    paths = OnnxruntimeScorer(graph, mean, scale, 1).path_scores(x)
    with torch.no_grad():
        f = backbone.eval()(torch.from_numpy(x)).numpy()
    averaged = 0.5 * (np.sqrt((f[:, :4] ** 2).sum(1)) + f[:, 4])
    expected = np.maximum(averaged, 2.0 * f[:, 5])
    np.testing.assert_allclose(heatmap, expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(score, expected.reshape(2, -1).max(1), rtol=1e-4, atol=1e-4)
    tops = [m.reshape(2, -1).max(1) for m in (averaged, 2 * f[:, 5])]
    np.testing.assert_allclose(paths, np.stack(tops, axis=1), rtol=1e-4, atol=1e-4)
    assert (paths[:, 1] > paths[:, 0]).all()  # the crack: the dark path decides, the average would hide it


def test_the_head_takes_several_alone_members_each_smoothed_or_not() -> None:
    """Paths in member order: the averaged map's (smoothed), then each alone member's, smoothed only where
    asked (the whitened member's copy), and the heatmap is the largest of them all."""
    from trainer.model import ScoringHead, smooth_heatmap

    torch.manual_seed(1)
    f = torch.rand(2, 5, 9, 11)
    mean, scale = torch.zeros(1, 5, 9, 11), torch.ones(1, 5, 9, 11)
    head = ScoringHead(smoothing=1.0, member_dims=(2, 1, 1, 1), alone=(2, 3), smoothed_alone=(2,))
    heatmap, paths = head.paths(f, mean, scale)
    averaged = smooth_heatmap(0.5 * (torch.sqrt((f[:, :2] ** 2).sum(1)) + f[:, 2]), 1.0)
    smoothed, raw = smooth_heatmap(f[:, 3], 1.0), f[:, 4]
    torch.testing.assert_close(heatmap, torch.maximum(torch.maximum(averaged, smoothed), raw))
    torch.testing.assert_close(paths, torch.stack([m.amax(dim=(1, 2)) for m in (averaged, smoothed, raw)], 1))
    torch.testing.assert_close(head(f, mean, scale)[1], paths.amax(1))
    torch.testing.assert_close(head.member_scores(f, mean, scale)[:, 2:4], paths[:, 1:])
    with pytest.raises(ValueError, match="some, not all"):
        ScoringHead(member_dims=(4, 1), alone=(0, 1))
    with pytest.raises(ValueError, match="are not among"):
        ScoringHead(member_dims=(4, 1, 1), alone=(2,), smoothed_alone=(1,))


def test_an_alone_paths_power_comes_after_its_pooled_maximum_and_stays_in_the_fp32_head(
        member: ExtremesMember) -> None:
    """With ``alone_exponents`` the alone map joins the heatmap as map^a and its path score is (pooled max)^a,
    the power the fit's join computed on the path scores; the fp16 conversion keeps the Pow in the fp32 head;
    exponent 1 exports the graph without the power byte for byte."""
    import onnx

    from trainer.model import ScoringHead
    from trainer.precision import convert_to_fp16, scoring_head_nodes
    from trainer.scorer import OnnxruntimeScorer

    torch.manual_seed(2)
    f = torch.rand(2, 4, 9, 11) * 3.0
    mean, scale = torch.zeros(1, 4, 9, 11), torch.ones(1, 4, 9, 11)
    head = ScoringHead(pooling=3, member_dims=(2, 1, 1), alone=(2,), alone_exponents=(1.7,))
    heatmap, paths = head.paths(f, mean, scale)
    averaged = 0.5 * (torch.sqrt((f[:, :2] ** 2).sum(1)) + f[:, 2])
    torch.testing.assert_close(heatmap, torch.maximum(averaged, f[:, 3] ** 1.7))
    pooled = torch.nn.functional.avg_pool2d(f[:, 3:4], 3, stride=1).amax(dim=(1, 2, 3))
    torch.testing.assert_close(paths[:, 1], pooled ** 1.7)
    torch.testing.assert_close(head(f, mean, scale)[1], paths.amax(1))
    with pytest.raises(ValueError, match="one per alone"):
        ScoringHead(member_dims=(2, 1, 1), alone=(2,), alone_exponents=(1.7, 2.0))

    backbone = Backbone(FeatureNet(4), extremes=_alone_copy(member))
    plain = export_onnx(backbone, 96, 90, "l2", 1, clusters=2)
    assert export_onnx(backbone, 96, 90, "l2", 1, clusters=2, alone_exponents=(1.0,)) == plain
    powered = export_onnx(backbone, 96, 90, "l2", 1, clusters=2, alone_exponents=(2.5,))
    model = onnx.load_from_string(powered)
    pows = [n.name for n in model.graph.node if n.op_type == "Pow"]
    assert pows and set(pows) <= set(scoring_head_nodes(model))
    x = cracked(blades(np.random.default_rng(4), 2))[:, :, :, :90]
    mean_, scale_ = np.zeros((2, 6, 1, 1), np.float32), np.ones((1, 6, 1, 1), np.float32)
    with torch.no_grad():
        f_ = backbone.eval()(torch.from_numpy(x)).numpy()
    averaged_ = 0.5 * (np.sqrt((f_[:, :4] ** 2).sum(1)) + f_[:, 4])
    heat, score = OnnxruntimeScorer(powered, mean_, scale_, 1).run(x)
    np.testing.assert_allclose(heat, np.maximum(averaged_, f_[:, 5] ** 2.5), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(score, heat.reshape(2, -1).max(1), rtol=1e-5)
    half_heat, half_score = OnnxruntimeScorer(convert_to_fp16(powered), mean_, scale_, 1).run(x)
    np.testing.assert_allclose(half_score, score, rtol=1e-2)
    assert np.all(np.isfinite(half_heat))


def test_the_fit_weighs_the_alone_members_into_the_threshold_the_bundle_applies(tmp_path: Path) -> None:
    """The calibration's scores are the joined paths, computed outside the bundle's graph: the graph with the
    weights folded into the prototype and the powers into its head gives the same scores on the same images,
    and the threshold is the join's of the paths before their weights and powers."""
    from fit_support import tiny_backbone

    from linewatch.bundle.registry import load_bundle
    from trainer.fit import FitOptions, fit_product
    from trainer.scorer import OnnxruntimeScorer

    strokes = _write_images(tmp_path / "strokes", blades(np.random.default_rng(5), 16))
    opts = FitOptions(clusters=8, calibration="holdout", calibration_fraction=0.5, threads=1)
    backbone = Backbone(tiny_backbone(), extremes=ExtremesMember())
    result = fit_product(strokes, "strokes", tmp_path / "out", backbone, opts)
    bundle = load_bundle(result.path)
    m = bundle.manifest
    assert m.scoring.alone_members == (2, 3)  # the dark excursions and the dark path
    assert m.calibration.method == "frechet_joined"
    gains = [m.calibration.parameters[f"path{p}_gain"] for p in (1, 2)]
    powers = [m.calibration.parameters[f"path{p}_exponent"] for p in (1, 2)]
    assert m.scoring.alone_exponents == pytest.approx(powers)
    assert all(1 / 8 <= a <= 8 and a != 1.0 for a in powers)
    note = m.provenance.notes["alone_members"]
    assert note.startswith(f"members 2, 3 reject alone, weighed {gains[0]:.4g}, {gains[1]:.4g} and raised to "
                           f"{powers[0]:.4g}, {powers[1]:.4g}")
    from trainer.fit import preprocessed_batches

    scorer = OnnxruntimeScorer((result.path / "model.onnx").read_bytes(), bundle.prototype_mean,
                               bundle.prototype_scale, threads=1)
    spec, prep = m.input, m.preprocessing
    scores = np.concatenate([scorer.run(b)[1] for b in preprocessed_batches(result.calibration_images, spec,
                                                                            prep, 4)])
    np.testing.assert_allclose(scores, result.calibration_scores, rtol=1e-4, atol=1e-5)
    # the bundle's path scores are the averaged map's and each (gain · s)^power; their maximum is the score
    from trainer.calibration import join_paths
    from trainer.export import export_for_scoring

    paths = OnnxruntimeScorer(export_for_scoring(result.backbone, m.scoring, spec.height, spec.width,
                                                 path_scores=True),
                              bundle.prototype_mean, bundle.prototype_scale, threads=1)
    joined = np.concatenate([paths.path_scores(b) for b in preprocessed_batches(result.calibration_images,
                                                                                spec, prep, 4)])
    np.testing.assert_allclose(joined.max(axis=1), result.calibration_scores, rtol=1e-4, atol=1e-5)
    raw = joined.astype(np.float64).copy()
    for p, (gain, power) in enumerate(zip(gains, powers, strict=True), start=1):
        raw[:, p] = raw[:, p] ** (1.0 / power) / gain
    join = join_paths(raw, opts.target_frr)
    assert join.exponents == pytest.approx(powers, rel=1e-3)
    assert join.gains == pytest.approx(gains, rel=1e-3)
    assert m.threshold == pytest.approx(join.calibration.threshold, rel=1e-4)
    # the heatmap is in the averaged map's units: its largest cell is the score (pooling 1)
    heat, score = scorer.run(next(iter(preprocessed_batches(result.calibration_images[:2], spec, prep, 2))))
    np.testing.assert_allclose(heat.reshape(len(heat), -1).max(axis=1), score, rtol=1e-5)
    # without the alone members the same fit is the thirteenth session's: one extremes channel, averaged
    plain = fit_product(strokes, "plain", tmp_path / "out", backbone,
                        FitOptions(clusters=8, calibration="holdout", calibration_fraction=0.5, threads=1,
                                   alone_members=False))
    assert plain.manifest.scoring.member_dims == (8, 1)
    assert "alone_members" not in plain.manifest.provenance.notes

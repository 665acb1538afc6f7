"""The whitened member (trainer/whitened.py): matched filters in the product's own noise spectrum, fitted per
product on good images, kept only where the whitened good images look Gaussian, exported inside model.onnx."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from pydantic import ValidationError

from linewatch.bundle.manifest import WhitenedSpec
from trainer.export import export_onnx
from trainer.metrics import auroc
from trainer.model import Backbone, FeatureNet, feature_map_size
from trainer.whitened import WhitenedFit, WhitenedMember, fit_whitened_members

SIZE = 128


def coloured(rng: np.random.Generator, n: int, size: int = SIZE) -> np.ndarray:
    """N×1×size×size stationary Gaussian noise with a strongly coloured, anisotropic spectrum (blurred 6 px
    along x, 0.7 px along y: brushed streaks): the kind of texture the member is made for."""
    x = rng.standard_normal((n, size, size)).astype(np.float32)
    out = [cv2.GaussianBlur(a, (0, 0), sigmaX=6.0, sigmaY=0.7) for a in x]
    return (0.5 * np.stack(out) / np.std(out))[:, None].astype(np.float32)


def gravel(rng: np.random.Generator, n: int, size: int = SIZE) -> np.ndarray:
    """Sparse bright stones on a flat ground: far from Gaussian once whitened (the member is left out)."""
    stones = (rng.random((n, size, size)) > 0.995).astype(np.float32)
    out = [cv2.GaussianBlur(a, (0, 0), 2.0) for a in stones]
    return (np.stack(out) / np.max(out))[:, None].astype(np.float32)


def spotted(img: np.ndarray, y: int, x: int, amplitude: float, sigma: float = 4.0) -> np.ndarray:
    yy, xx = np.mgrid[: img.shape[-2], : img.shape[-1]]
    out = img.copy()
    out[..., :, :] += amplitude * np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * sigma**2)).astype(np.float32)
    return out


def power_law(rng: np.random.Generator, n: int, size: int = SIZE, beta: float = 3.0) -> np.ndarray:
    """N×1×size×size Gaussian noise whose power falls as f^-β (a fractal surface), plus a little white noise
    (the sensor's): most of its spread is in its slow undulations."""
    fy, fx = np.fft.fftfreq(size)[:, None], np.fft.rfftfreq(size)[None, :]
    amplitude = np.maximum(np.hypot(fy, fx), 1.0 / size) ** (-beta / 2)
    shape = (n, size, size // 2 + 1)
    noise = rng.standard_normal(shape) + 1j * rng.standard_normal(shape)
    x = np.fft.irfft2(amplitude * noise, s=(size, size))
    x = x / x.std(axis=(1, 2), keepdims=True) + 0.05 * rng.standard_normal(x.shape)
    return (0.25 * x)[:, None].astype(np.float32)


def stained(rng: np.random.Generator, images: np.ndarray, radius: float, edge: float, contrast: float
            ) -> np.ndarray:
    """Each image with a soft-edged disc (σ of the rim ``edge`` × radius) ``contrast`` times its own spread
    lighter or darker, somewhere away from the border."""
    out = images.copy()
    yy, xx = np.mgrid[: images.shape[-2], : images.shape[-1]]
    for img in out:
        cy, cx = rng.uniform(32, np.array(img.shape[-2:]) - 32)
        disc = torch.special.ndtr(torch.from_numpy((radius - np.hypot(yy - cy, xx - cx)) / (edge * radius)))
        img[0] += (rng.choice([-1.0, 1.0]) * contrast * img[0].std() * disc.numpy()).astype(np.float32)
    return out


def passes(images: np.ndarray, batch: int = 4) -> Iterator[Iterator[np.ndarray]]:
    for _ in range(2):
        yield (images[i : i + batch] for i in range(0, len(images), batch))


def fit(images: np.ndarray, groups: list[int] | None = None, n_folds: int = 0,
        max_kurtosis: float = 0.5) -> WhitenedFit:
    return fit_whitened_members(WhitenedMember(), passes(images), groups or [0] * len(images), n_folds,
                                max_kurtosis)


def run(member: WhitenedMember, images: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return member(torch.from_numpy(images)).numpy()[:, 0]


@pytest.fixture(scope="module")
def good() -> np.ndarray:
    return coloured(np.random.default_rng(0), 16)


@pytest.fixture(scope="module")
def member(good: np.ndarray) -> WhitenedMember:
    fitted = fit(good)
    assert fitted.member is not None, fitted.note()
    return fitted.member


def test_a_faint_spot_in_coloured_noise_stands_out_where_raw_brightness_does_not(member: WhitenedMember
                                                                                 ) -> None:
    """The point of the member: a soft spot 0.6 of the streaks' own spread is lost among their bright places,
    but not to a filter that knows the texture's spectrum (measured: 2.5× the largest good maximum)."""
    rng = np.random.default_rng(1)
    parts = coloured(rng, 8)
    stained = spotted(parts, 64, 64, amplitude=0.3, sigma=2.0)
    good_max, stained_max = run(member, parts).max(axis=(1, 2)), run(member, stained).max(axis=(1, 2))
    assert stained_max.min() > 2.0 * good_max.max()
    raw = (lambda x: np.abs(x[:, 0]).max(axis=(1, 2)))  # noqa: E731
    assert raw(stained).min() < raw(parts).max()  # raw brightness does not separate them
    # and the map peaks on the spot: cell (i, j) is centred on input pixel 2i + 15.5
    for m in run(member, stained):
        i, j = np.unravel_index(np.argmax(m), m.shape)
        assert np.hypot(2 * i + 15.5 - 64, 2 * j + 15.5 - 64) <= 6.0


def test_a_stain_is_told_from_a_fractal_surface_by_its_rim() -> None:
    """Whitening weighs the frequencies where the texture is weak: on a surface whose power falls with
    frequency those are high, and a stain's rim is what a soft-disc template matches and a Gaussian blob
    lacks. A stain 2.5 times the surface's spread, of a radius and an edge none of the default discs has
    (7 px, σ 0.25 × the radius), against the twelfth session's blobs σ 2, 4, 8 px (measured: image AUROC
    0.996 and 0.855 over 16 good and 16 stained parts)."""
    rng = np.random.default_rng(0)
    good, test = power_law(rng, 24), power_law(rng, 32)
    parts = np.concatenate([test[:16], stained(rng, test[16:], radius=7.0, edge=0.25, contrast=2.5)])
    labels = np.repeat([False, True], 16)
    aurocs = {}
    blobs = WhitenedMember(blobs=(2.0, 4.0, 8.0), discs=())
    for name, shape in (("discs", WhitenedMember()), ("blobs", blobs)):
        member = fit_whitened_members(shape, passes(good), [0] * len(good), 0, float("inf")).member
        assert member is not None
        aurocs[name] = auroc(run(member, parts).max(axis=(1, 2)), labels)
    assert aurocs["discs"] >= 0.97 and aurocs["blobs"] <= 0.9, aurocs


def test_every_filter_has_unit_spread_on_the_good_images() -> None:
    """The spreads come from the good images' spectrum (Parseval), not from a pass of the filters over them:
    within 5 % of the measured spread at 256×256 (the cells near the reflected borders differ a little)."""
    good = coloured(np.random.default_rng(7), 16, 256)
    member = fit(good).member
    assert member is not None
    with torch.no_grad():
        z = member.responses(torch.from_numpy(good)) * member.inverse_scale
    np.testing.assert_allclose(z.std(dim=(0, 2, 3)).numpy(), 1.0, rtol=0.05)
    assert member.kernels.shape == (20, 1, 17, 17) and member.fitted and not WhitenedMember().fitted


@pytest.mark.parametrize(("height", "width"), [(128, 128), (96, 160), (40, 34)])
def test_the_member_answers_on_the_networks_grid_at_any_size(member: WhitenedMember, height: int, width: int
                                                            ) -> None:
    """Inputs smaller than the kernel repeat their edge instead of reflecting, and still give one value per
    FeatureNet cell."""
    out = run(member, np.random.default_rng(2).normal(0, 0.3, (1, 1, height, width)).astype(np.float32))
    assert out.shape == (1, feature_map_size(height), feature_map_size(width))
    assert np.all(np.isfinite(out))


def test_the_member_is_left_out_where_the_whitened_texture_is_not_gaussian(good: np.ndarray) -> None:
    kept = fit(good)
    assert kept.kept and kept.kurtosis < 0.2 and kept.note().startswith("kept: ")
    left = fit(gravel(np.random.default_rng(3), 12))
    assert not left.kept and left.fold_members == [] and left.kurtosis > 2.0
    said = f"left out: the whitened good images' mean excess kurtosis {left.kurtosis:.3f} >= 0.5"
    assert left.note().startswith(said)
    # the threshold is the caller's: inf keeps the member whatever the texture
    assert fit(gravel(np.random.default_rng(3), 12), max_kurtosis=float("inf")).kept
    # blank parts have no texture to whiten: left out, saying so, never a kernel of inf
    flat = fit(np.full((4, 1, 64, 64), 0.2, np.float32), max_kurtosis=float("inf"))
    assert not flat.kept
    said = "left out: the good images are flat (no texture whose spectrum the filters could whiten)"
    assert flat.note() == said


def test_fold_members_never_see_their_folds_images(good: np.ndarray) -> None:
    """Each fold's member is the member fitted on the other folds' images alone: what calibrates the
    threshold has not seen the images it scores."""
    groups = [i % 3 for i in range(len(good))]
    folded = fit(good, groups, n_folds=3)
    assert folded.member is not None and len(folded.fold_members) == 3
    for g, fold_member in enumerate(folded.fold_members):
        others = good[[i for i, k in enumerate(groups) if k != g]]
        alone = fit(others, max_kurtosis=float("inf")).member
        assert alone is not None
        torch.testing.assert_close(fold_member.kernels, alone.kernels, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(fold_member.inverse_scale, alone.inverse_scale, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="each fold needs images"):
        fit(good, [0] * len(good), n_folds=2)
    with pytest.raises(ValueError, match="not among 2 folds"):
        fit(good, [2] * len(good), n_folds=2)


def test_bad_member_shapes_are_refused() -> None:
    with pytest.raises(ValidationError, match="kernel_size must be odd"):
        WhitenedMember(kernel_size=16)
    with pytest.raises(ValidationError, match="at least one blob, disc or line template"):
        WhitenedMember(blobs=(), lines=(), discs=())
    with pytest.raises(ValidationError, match="greater than 0"):
        WhitenedMember(blobs=(0.0,))
    with pytest.raises(ValidationError, match="less than or equal to 1"):
        WhitenedMember(discs=((8.0, 1.5),))  # an edge wider than the disc
    spec = WhitenedSpec(blobs=(2.0,), discs=((4.0, 0.2), (8.0, 0.2)), lines=((1.5, 6.0),), orientations=4,
                        kernel_size=9)
    assert spec.filters == 7


def test_an_unfitted_member_is_never_exported_and_a_fitted_one_exports_exactly(member: WhitenedMember
                                                                              ) -> None:
    torch.manual_seed(0)
    net = FeatureNet(4)
    with pytest.raises(ValueError, match="whitened member is not fitted"):
        export_onnx(Backbone(net, whitened=WhitenedMember()), 96, 96, "l2", 1, clusters=2)
    from fit_support import assert_exports_as_two_members

    backbone = Backbone(net, whitened=member)
    assert backbone.fixed_members == (1,)
    assert_exports_as_two_members(backbone, coloured(np.random.default_rng(4), 2, 128)[:, :, :96])


def _write_images(folder: Path, images: np.ndarray) -> Path:
    folder.mkdir(parents=True)
    for i, img in enumerate(images):
        cv2.imwrite(str(folder / f"{i:03d}.png"), np.clip(127.5 * (img[0] + 1.0), 0, 255).astype(np.uint8))
    return folder


def test_a_fit_keeps_the_member_on_a_gaussian_texture_and_records_why(tmp_path: Path) -> None:
    """End to end: the bundle describes the member, its note gives the kurtosis, the daemon's loader takes
    it, and a spot the member sees scores above every good part's calibration score."""
    from fit_support import tiny_backbone

    from linewatch.bundle.registry import load_bundle
    from trainer.fit import FitOptions, fit_product

    rng = np.random.default_rng(5)
    # at half the fixture's contrast: clipped at 8 bits, ±2σ streaks are no longer Gaussian (kurtosis 5.7)
    good = _write_images(tmp_path / "good", 0.5 * coloured(rng, 20, 96))
    backbone = Backbone(tiny_backbone(), whitened=WhitenedMember())
    opts = FitOptions(clusters=8, folds=4, threads=1)
    result = fit_product(good, "noise", tmp_path / "out", backbone, opts)
    manifest = load_bundle(result.path).manifest
    assert manifest.schema_version == 12 and manifest.scoring.whitened == WhitenedMember(alone=True).spec()
    # averaged with the network, and the same map a second time rejecting alone, smoothed as the average is
    assert manifest.scoring.member_dims == (8, 1, 1)
    assert manifest.scoring.alone_members == manifest.scoring.smoothed_alone_members == (2,)
    note = manifest.provenance.notes["whitened_member"]
    assert note.startswith("kept: the whitened good images' mean excess kurtosis") and "fitted on 20" in note
    assert "discs of radius 4, 5, 6.5, 8, 10, 12.5 px, rim σ 0.15, 0.4 of the radius; 1 line(s)" in note
    assert note.endswith("its map also rejects alone")
    assert json.loads((result.path / "bundle.json").read_text())["scoring"]["whitened"]["kernel_size"] == 17


def test_a_fit_leaves_the_member_out_of_a_grainy_texture_and_the_bundle_is_as_without_it(tmp_path: Path
                                                                                         ) -> None:
    from fit_support import tiny_backbone

    from linewatch.bundle.registry import load_bundle
    from trainer.fit import FitOptions, fit_product

    good = _write_images(tmp_path / "good", 2.0 * gravel(np.random.default_rng(6), 12, 96) - 1.0)
    opts = FitOptions(clusters=8, folds=3, threads=1)
    backbone = Backbone(tiny_backbone(), whitened=WhitenedMember())
    result = fit_product(good, "gravel", tmp_path / "out", backbone, opts)
    manifest = load_bundle(result.path).manifest
    assert manifest.scoring.whitened is None and manifest.scoring.member_dims == (8,)
    assert manifest.provenance.notes["whitened_member"].startswith("left out: ")
    plain = fit_product(good, "plain", tmp_path / "out", Backbone(tiny_backbone()), opts)
    assert (plain.path / "model.onnx").read_bytes() == (result.path / "model.onnx").read_bytes()
    assert plain.manifest.threshold == manifest.threshold


def test_the_manifest_names_the_member_bench_counts_it_and_older_schemas_cannot_hold_it(
        member: WhitenedMember) -> None:
    from daemon_support import make_manifest

    from linewatch.bundle.manifest import BundleManifest
    from linewatch.service.bench import model_gflop
    from trainer.fit import scoring_spec

    manifest = make_manifest(96, 128, h=16)
    scoring = scoring_spec(33, 96, 128, members=2, whitened=member.spec())
    assert scoring.member_dims == (16, 16, 1)
    label = "33 features, 2 members of 16 and a whitened member (20 filters) (maps averaged)"
    assert scoring.features_label == label
    plain = model_gflop(manifest.model_copy(update={"scoring": scoring_spec(32, 96, 128, members=2)}))
    counted = model_gflop(manifest.model_copy(update={"scoring": scoring}))
    # one output per cell of the grid for every kernel
    cells = feature_map_size(96) * feature_map_size(128)
    assert counted - plain == pytest.approx(2.0 * member.kernels.numel() * cells / 1e9, rel=1e-9)
    data = json.loads(manifest.model_copy(update={"scoring": scoring}).to_json())
    whitened = data["scoring"]["whitened"]
    assert whitened["blobs"] == [] and whitened["discs"][:2] == [[4.0, 0.15], [4.0, 0.4]]
    data["schema_version"] = 8  # the discs came with schema 9; a schema-8 daemon must not read them as blobs
    with pytest.raises(ValidationError, match=r"scoring.whitened.discs needs schema_version >= 9"):
        BundleManifest.model_validate(data)
    data["schema_version"] = 5
    with pytest.raises(ValidationError, match=r"scoring.whitened needs schema_version >= 6"):
        BundleManifest.model_validate(data)
    # the twelfth session's blobs, written by a schema-9 trainer, still read where schema 8 did
    blobs = scoring.model_copy(update={"whitened": WhitenedSpec(blobs=(2.0, 4.0, 8.0), lines=((1.5, 6.0),),
                                                                 orientations=8, kernel_size=17)})
    old = json.loads(manifest.model_copy(update={"scoring": blobs, "schema_version": 8}).to_json())
    assert "discs" not in old["scoring"]["whitened"]
    assert BundleManifest.model_validate(old).scoring.whitened == blobs.whitened


def test_its_map_rejecting_alone_is_smoothed_like_the_average_and_needs_schema_8(member: WhitenedMember
                                                                                 ) -> None:
    """With ``alone`` the member's map is also a path of its own: the exported heatmap is the largest of the
    smoothed average and the smoothed alone copy (a blob filter's peak spans cells), its score their max."""
    from daemon_support import make_manifest

    from linewatch.bundle.manifest import BundleManifest
    from trainer.fit import scoring_spec
    from trainer.model import smooth_heatmap
    from trainer.scorer import OnnxruntimeScorer

    alone = WhitenedMember(alone=True)
    alone.load_state_dict(member.state_dict())
    alone.fitted = True
    torch.manual_seed(0)
    backbone = Backbone(FeatureNet(4), whitened=alone.eval())
    assert backbone.member_dims == (4, 1, 1)
    assert backbone.alone_members == backbone.smoothed_alone_members == (2,)
    x = coloured(np.random.default_rng(4), 2, 128)[:, :, :96]
    x[0, 0, 40:46, 40:46] += 1.0  # a spot
    mean, scale = np.zeros((2, 6, 1, 1), np.float32), np.ones((1, 6, 1, 1), np.float32)
    scale[:, 5] = 0.25  # weighed 4×, as a fit folds its weight into the scale
    graph = export_onnx(backbone, 96, 128, "l2", 1, clusters=2, smoothing=1.0)
    heatmap, score = OnnxruntimeScorer(graph, mean, scale, threads=1).run(x)
    with torch.no_grad():
        f = backbone.eval()(torch.from_numpy(x))
        averaged = smooth_heatmap(0.5 * (torch.sqrt((f[:, :4] ** 2).sum(1)) + f[:, 4]), 1.0)
        expected = torch.maximum(averaged, smooth_heatmap(4.0 * f[:, 5], 1.0)).numpy()
    np.testing.assert_allclose(heatmap, expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(score, expected.reshape(2, -1).max(1), rtol=1e-4, atol=1e-4)

    manifest = make_manifest(96, 128, h=16)
    scoring = scoring_spec(34, 96, 128, members=2, whitened=alone.spec())
    assert scoring.member_dims == (16, 16, 1, 1) and scoring.alone_members == (3,)
    data = json.loads(manifest.model_copy(update={"scoring": scoring}).to_json())
    assert data["scoring"]["whitened"]["alone"] is True
    data["schema_version"] = 7
    with pytest.raises(ValidationError, match=r"scoring.whitened.alone needs schema_version >= 8"):
        BundleManifest.model_validate(data)

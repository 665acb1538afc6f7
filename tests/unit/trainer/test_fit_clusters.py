"""The ``clusters`` prototype: k-means centres of good features, distance to the nearest one, end to end
from ``trainer fit`` to the daemon's ONNX Runtime backend."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from fit_support import synthetic_product, tiny_backbone
from harness import relist_hashes
from pydantic import ValidationError

from linewatch.bundle.manifest import PROTOTYPE_NAME, ScoringSpec
from linewatch.bundle.registry import load_bundle
from linewatch.errors import BundleInputMismatchError
from linewatch.inference.onnxruntime import OnnxruntimeBackend, OnnxruntimeConfig
from linewatch.inference.preprocessing import preprocess
from trainer.clustering import kmeans
from trainer.data.images import list_images, read_image
from trainer.fit import FitError, FitOptions, fit_product, format_summary, write_prototype_npz
from trainer.model import ScoringHead, nearest_centre_distance, smooth_heatmap
from trainer.prototype import Prototype, PrototypeAccumulator


def test_kmeans_finds_well_separated_clusters_and_is_deterministic() -> None:
    rng = np.random.default_rng(0)
    truth = rng.normal(0.0, 10.0, size=(6, 5))
    samples = np.concatenate([t + rng.normal(0.0, 0.3, size=(400, 5)) for t in truth])
    centres = kmeans(samples, 6, seed=3)
    nearest = np.sqrt(((centres[:, None] - truth[None]) ** 2).sum(-1))
    assert np.sort(nearest.argmin(1)).tolist() == list(range(6))  # one centre per true cluster
    assert nearest.min(1).max() < 0.1
    np.testing.assert_array_equal(centres, kmeans(samples, 6, seed=3))
    # far from the origin (a feature offset 1000× the spread): the same clusters, shifted
    far = kmeans(samples + 5000.0, 6, seed=3)
    np.testing.assert_allclose(far - 5000.0, centres, atol=1e-3)


def test_kmeans_refuses_more_centres_than_distinct_features() -> None:
    with pytest.raises(ValueError, match="8 centres need at least 8 distinct"):
        kmeans(np.ones((20, 4)), 8)
    # many copies of a few vectors (constant good images) are few distinct vectors, however many rows
    few = np.repeat(np.eye(4), 5000, axis=0)
    with pytest.raises(ValueError, match="8 distinct feature vectors, the good images gave 4"):
        kmeans(few, 8)


def test_nearest_centre_head_equals_brute_force() -> None:
    torch.manual_seed(0)
    features = torch.randn(3, 6, 7, 9) * 4 + 50  # far from zero: the head must not lose precision
    centres = torch.randn(5, 6, 1, 1) * 4 + 50
    scale = torch.rand(1, 6, 1, 1) + 0.5
    brute = (((features[:, None] - centres[None]) / scale[None]) ** 2).sum(2).sqrt().amin(1)
    np.testing.assert_allclose(nearest_centre_distance(features, centres, scale), brute, atol=2e-4)


def test_a_texture_with_two_good_appearances_is_not_far_from_its_prototype() -> None:
    """Good positions are either of two feature vectors: one mean sits between them (every position
    'far'), two centres sit on them (every good position at ~0, a new vector clearly far)."""
    rng = np.random.default_rng(1)
    a, b = np.full(4, -3.0), np.full(4, 3.0)
    pick = rng.random((10, 1, 8, 8)) < 0.5
    good = np.where(pick, a[None, :, None, None], b[None, :, None, None]) + rng.normal(0, 0.05, (10, 4, 8, 8))
    defect = good[:1].copy()
    defect[0, :, 4, 4] = (0.0, 3.0, -3.0, 0.0)
    results = {}
    for mode, k in (("global", 1), ("clusters", 2)):
        acc = PrototypeAccumulator(mode, clusters=k)  # type: ignore[arg-type]
        acc.add(good.astype(np.float32))
        proto = acc.finish(standardise=False)
        if mode == "clusters":
            assert proto.mean.shape == (2, 4, 1, 1) and proto.scale.shape == (1, 4, 1, 1)
            hm = nearest_centre_distance(*(torch.from_numpy(x) for x in (defect.astype(np.float32),
                                                                         proto.mean, proto.scale)))
        else:
            hm = torch.from_numpy(np.sqrt(((defect - proto.mean) ** 2).sum(1)))
        hm = hm.numpy()[0]
        good_part = np.delete(hm.ravel(), 4 * 8 + 4)
        results[mode] = (float(good_part.max()), float(hm[4, 4]))
    assert results["global"][0] > 5.0  # the single mean is ~6 away from every good position
    assert results["clusters"][0] < 0.5 < 4.0 < results["clusters"][1]


@pytest.fixture(scope="module")
def product(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthetic_product(tmp_path_factory.mktemp("synth") / "stripes", family="stripes")


def test_fit_with_clusters_gives_a_bundle_the_daemon_scores_identically(
    product: Path, tmp_path: Path
) -> None:
    options = FitOptions(prototype="clusters", clusters=12, standardise=True, smoothing=0.0, threads=1,
                         context_steps=30)
    result = fit_product(product / "train" / "good", "clustered", tmp_path, "default", options)
    assert "clusters (K=12)" in format_summary(result)
    bundle = load_bundle(tmp_path / "clustered")
    s = bundle.manifest.scoring
    assert (s.prototype_mode, s.clusters, s.distance, s.standardised) == ("clusters", 12, "l2", True)
    assert bundle.prototype_mean.shape == (12, s.feature_dim, 1, 1)
    assert bundle.prototype_scale.shape == (1, s.feature_dim, 1, 1)
    backend = OnnxruntimeBackend(bundle, OnnxruntimeConfig(intra_op_threads=1))
    try:
        paths = list_images(product / "test" / "good")[:2] + list_images(product / "test" / "noise_patch")[:2]
        images = np.stack([preprocess(read_image(p), bundle.manifest.input, bundle.manifest.preprocessing)
                           for p in paths])
        outputs = backend.infer(images, want_heatmap=True)
    finally:
        backend.close()
    # The daemon's heatmap is the mean over the default's members (the trained and the untrained network, the
    # line bank, the whitened and the context member, run here one by one) of each member's nearest-centre
    # distance to its own centres, each in units of its own good-part level (folded into its scale), or where
    # the whitened member's own copy (rejecting alone, weighed and raised to a power by the fit: its tail put
    # on the averaged map's) is larger, that. The whitened and the context member's "centres" are all 0: their
    # |z| is a distance already.
    net = result.backbone
    notes = bundle.manifest.provenance.notes
    assert net is not None and net.context is not None and net.context.fitted
    # stripes with fine noise are Gaussian once whitened: the whitened member is kept
    assert net.whitened is not None and net.whitened.fitted and notes["whitened_member"].startswith("kept: ")
    # ... and so the grey-level extremes member, its complement, is left out (the bundle as without it)
    assert net.extremes is None and s.extremes is None and notes["extremes_member"].startswith("left out: ")
    assert s.members == net.members == 2 and s.feature_dim == 2 * net.h + 4 + 2 + 1
    assert s.line_bank is not None
    assert s.member_dims == net.member_dims == (16, 16, 4, 1, 1, 1) and s.context == net.context_spec
    assert s.whitened == net.whitened_spec and s.alone_members == s.smoothed_alone_members == (4,)
    assert all(w in s.features_label for w in ("line-filter", "whitened member", "context member"))
    assert np.all(bundle.prototype_mean[:, 36:] == 0.0)
    levels = [float(v) for v in notes["member_levels"].split(" (")[0].split(", ")]
    assert bundle.manifest.calibration.method == "frechet_joined"
    gain = bundle.manifest.calibration.parameters["path1_gain"]
    (power,) = s.alone_exponents
    assert power == pytest.approx(bundle.manifest.calibration.parameters["path1_exponent"])
    np.testing.assert_allclose(bundle.prototype_scale[0, 36:, 0, 0],
                               [levels[3], levels[4] / gain, levels[5]], rtol=1e-3)  # the note: 4 digits
    assert all("one member per fold" in notes[m] for m in ("context_member", "whitened_member"))
    maps, start = [], 0
    with torch.no_grad():
        features = [member(torch.from_numpy(images)) for member in
                    [*net.nets.split(), net.lines, net.whitened, net.context]]
        features_all = torch.cat(features, dim=1)
        for width in net.member_dims:
            own = slice(start, start + width)
            start += width
            maps.append(nearest_centre_distance(features_all[:, own],
                                                torch.from_numpy(bundle.prototype_mean[:, own]),
                                                torch.from_numpy(bundle.prototype_scale[:, own])).numpy())
    expected = np.maximum(np.mean([m for i, m in enumerate(maps) if i != 4], axis=0), maps[4] ** power)
    for out, exp in zip(outputs, expected, strict=True):
        assert out.heatmap is not None
        np.testing.assert_allclose(out.heatmap, exp, atol=1e-4, rtol=1e-4)
        assert out.score == pytest.approx(float(exp.max()), abs=1e-4)
    assert len({round(o.score, 4) for o in outputs}) == 4  # four different images, four different scores


def test_clusters_options_are_checked_before_any_work(product: Path, tmp_path: Path) -> None:
    good = product / "train" / "good"
    with pytest.raises(FitError, match="distance 'l1' is not supported"):
        fit_product(good, "p", tmp_path, tiny_backbone(), FitOptions(prototype="clusters", distance="l1"))
    with pytest.raises(FitError, match=r"clusters must lie in 1\.\.4096"):
        fit_product(good, "p", tmp_path, tiny_backbone(), FitOptions(prototype="clusters", clusters=0))
    # more centres than the good images have distinct features: named, as a FitError
    one = sorted(good.iterdir())[:1]
    with pytest.raises(FitError, match=r"clusters prototype from 1 good images: 4096 centres need"):
        fit_product(one * 2, "p", tmp_path, tiny_backbone(),
                    FitOptions(prototype="clusters", clusters=4096, calibration="holdout",
                               calibration_fraction=0.5, threads=1))
    assert not (tmp_path / "p").exists()


def test_manifest_and_loader_refuse_inconsistent_clusters(product: Path, tmp_path: Path) -> None:
    base = {"feature_dim": 8, "heatmap_height": 5, "heatmap_width": 5, "standardised": False}
    with pytest.raises(ValidationError, match="needs distance 'l2'"):
        ScoringSpec(prototype_mode="clusters", clusters=4, distance="l1", **base)
    with pytest.raises(ValidationError, match="clusters=4 needs prototype_mode 'clusters'"):
        ScoringSpec(prototype_mode="global", clusters=4, distance="l2", **base)
    result = fit_product(product / "train" / "good", "k", tmp_path, tiny_backbone(),
                         FitOptions(prototype="clusters", clusters=4, threads=1))
    bundle = load_bundle(result.path)
    # a prototype.npz whose centres disagree with the manifest's K is refused, naming the tensor
    wrong = Prototype(mean=np.zeros((5, 8, 1, 1), np.float32), scale=bundle.prototype_scale,
                      mode="clusters", standardised=False, n_images=1, scale_floors=(0.0,))
    write_prototype_npz(result.path / PROTOTYPE_NAME, wrong)
    relist_hashes(result.path)  # the shape check, not the hash check, is what must refuse it
    with pytest.raises(BundleInputMismatchError, match=r"mean has shape \(5, 8, 1, 1\), the manifest says "
                                                       r"\(4, 8, 1, 1\)"):
        load_bundle(result.path)


def test_smoothing_keeps_levels_and_spreads_a_spike_as_a_gaussian() -> None:
    flat = torch.full((2, 9, 13), 3.5)
    np.testing.assert_allclose(smooth_heatmap(flat, 2.0), flat, rtol=1e-6)  # borders too: renormalised
    spike = torch.zeros(1, 41, 41)
    spike[0, 20, 20] = 1.0
    out = smooth_heatmap(spike, 2.0)[0]
    assert int(out.argmax()) == 20 * 41 + 20 and float(out.sum()) == pytest.approx(1.0, abs=1e-5)
    # separable Gaussian: one cell off centre keeps exp(-1/(2σ²)) of the peak
    assert float(out[20, 21] / out[20, 20]) == pytest.approx(np.exp(-1 / 8), rel=1e-4)
    with pytest.raises(ValueError, match="smoothing must be >= 0"):
        ScoringHead(smoothing=-1.0)


def test_fit_records_smoothing_and_the_daemon_applies_it(product: Path, tmp_path: Path) -> None:
    good = product / "train" / "good"
    sharp = fit_product(good, "sharp", tmp_path, tiny_backbone(),
                        FitOptions(threads=1, prototype="global", smoothing=0.0))
    soft = fit_product(good, "soft", tmp_path, tiny_backbone(),
                       FitOptions(threads=1, prototype="global", smoothing=2.0))
    assert (sharp.manifest.scoring.smoothing, soft.manifest.scoring.smoothing) == (0.0, 2.0)
    image = preprocess(read_image(list_images(product / "test" / "noise_patch")[0]),
                       soft.manifest.input, soft.manifest.preprocessing)[np.newaxis]
    maps = {}
    for fitted in (sharp, soft):
        backend = OnnxruntimeBackend(load_bundle(fitted.path), OnnxruntimeConfig(intra_op_threads=1))
        try:
            (out,) = backend.infer(image, want_heatmap=True)
        finally:
            backend.close()
        assert out.heatmap is not None
        maps[fitted.path.name] = out.heatmap
    expected = smooth_heatmap(torch.from_numpy(maps["sharp"])[None], 2.0)[0].numpy()
    np.testing.assert_allclose(maps["soft"], expected, atol=1e-4, rtol=1e-4)
    with pytest.raises(FitError, match=r"smoothing must lie in 0\.\.16"):
        fit_product(good, "bad", tmp_path, tiny_backbone(), FitOptions(smoothing=20.0))


def test_fp16_plan_model_of_a_default_fit_keeps_the_clusters_head_exact_enough(
    product: Path, tmp_path: Path
) -> None:
    """The mixed-precision model TensorRT builds for --precision fp16 (fp16 backbone, fp32 head): the
    nearest-centre head and the smoothing stay fp32 and agree with fp32 within build-engine's tolerance."""
    import shutil

    from trainer.engine import TOLERANCE
    from trainer.precision import convert_to_fp16

    fitted = fit_product(product / "train" / "good", "mixed", tmp_path / "fp32", tiny_backbone(),
                         FitOptions(threads=1))
    assert fitted.manifest.scoring.prototype_mode == "clusters" and fitted.manifest.scoring.smoothing > 0
    copy = tmp_path / "fp16" / "mixed"
    shutil.copytree(fitted.path, copy)
    (copy / "model.onnx").write_bytes(convert_to_fp16((fitted.path / "model.onnx").read_bytes()))
    relist_hashes(copy)
    paths = list_images(product / "test" / "good")[:2] + list_images(product / "test" / "spot")[:2]
    spec, prep = fitted.manifest.input, fitted.manifest.preprocessing
    images = np.stack([preprocess(read_image(p), spec, prep) for p in paths])
    outputs = []
    for path in (fitted.path, copy):
        backend = OnnxruntimeBackend(load_bundle(path), OnnxruntimeConfig(intra_op_threads=1))
        try:
            outputs.append(backend.infer(images, want_heatmap=True))
        finally:
            backend.close()
    ref, got = outputs
    tolerance = TOLERANCE["fp16"] * max(1.0, max(abs(o.score) for o in ref))
    for r, g in zip(ref, got, strict=True):
        assert abs(r.score - g.score) <= tolerance
        assert np.max(np.abs(r.heatmap - g.heatmap)) <= tolerance  # type: ignore[operator]

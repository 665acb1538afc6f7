"""trainer fit end to end: a synthetic product, a backbone trained for a few seconds in this session, the
bundle checked by the daemon's own loader, scores re-computed through ONNX Runtime."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from fit_support import synthetic_product, tiny_backbone

from linewatch.bundle.manifest import MODEL_NAME, PROTOTYPE_NAME
from linewatch.bundle.registry import list_products, load_bundle, sha256_file, write_manifest
from linewatch.errors import BundleIntegrityError, BundleNotFoundError, BundleSchemaError
from linewatch.inference.preprocessing import exposure_of, preprocess, scale_image
from trainer.cli import main as trainer_main
from trainer.data.images import list_images, read_image
from trainer.fit import (
    FitError,
    FitOptions,
    FitResult,
    build_prototype,
    choose_input_size,
    fit_product,
    split_folds,
)
from trainer.model import feature_map_size
from trainer.scorer import OnnxruntimeScorer
from trainer.train import save_checkpoint

ONE_THREAD = FitOptions(threads=1)


@pytest.fixture(scope="module")
def product(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthetic_product(tmp_path_factory.mktemp("synth") / "fractal", family="fractal")


@pytest.fixture(scope="module")
def fitted(product: Path, tmp_path_factory: pytest.TempPathFactory) -> FitResult:
    return fit_product(product / "train" / "good", "part-7", tmp_path_factory.mktemp("products"),
                       tiny_backbone(), ONE_THREAD)


def test_fit_writes_a_bundle_the_daemon_loads(fitted: FitResult) -> None:
    bundle = load_bundle(fitted.path)
    m = bundle.manifest
    assert m.product_id == "part-7" and fitted.path.name == "part-7"
    assert (m.input.height, m.input.width) == (96, 96)
    hh = feature_map_size(96)
    assert (m.scoring.feature_dim, m.scoring.heatmap_height, m.scoring.heatmap_width) == (8, hh, hh)
    # the defaults chosen by measured AUROC: nearest of 256 standardised centres, map smoothed σ = 1 cell
    s = m.scoring
    assert (s.prototype_mode, s.clusters, s.distance, s.standardised, s.smoothing, s.pooling) == (
        "clusters", 256, "l2", True, 1.0, 1)
    assert m.preprocessing.normalise == "image_mean"  # each image's own mean removed: lighting is no defect
    # ... so the bundle carries the good parts' brightness and contrast, which every frame is checked against
    stats = [exposure_of(scale_image(read_image(p), m.input, m.preprocessing))
             for p in fitted.prototype_images]
    e = m.exposure
    assert e is not None and e.n_images == 30
    assert (e.level_min, e.level_max) == (min(s[0] for s in stats), max(s[0] for s in stats))
    assert (e.contrast_min, e.contrast_max) == (min(s[1] for s in stats), max(s[1] for s in stats))
    assert all(e.problem(*s) is None for s in stats)
    assert e.problem(-1.0, 0.0) is not None and e.problem(1.0, 0.0) is not None  # black, saturated
    assert bundle.prototype_mean.shape == (256, 8, 1, 1) and bundle.prototype_scale.shape == (1, 8, 1, 1)
    assert len(np.unique(bundle.prototype_mean.reshape(256, 8), axis=0)) == 256  # 256 distinct centres
    assert np.all(bundle.prototype_scale > 0) and not np.all(bundle.prototype_scale == 1.0)
    model = (fitted.path / MODEL_NAME).read_bytes()
    proto = (fitted.path / PROTOTYPE_NAME).read_bytes()
    assert m.backbone_id == hashlib.sha256(model).hexdigest() == m.files[MODEL_NAME]
    assert m.bundle_id == f"part-7@{hashlib.sha256(model + proto).hexdigest()[:12]}"
    assert set(m.files) == {MODEL_NAME, PROTOTYPE_NAME}
    assert m.threshold == m.calibration.threshold > 0
    # cross-fitted calibration (default): every image builds the prototype and is scored out of fold
    assert m.calibration.n_images == 30 and m.provenance.n_prototype_images == 30
    assert m.calibration.parameters["cross_fit_folds"] == 5
    assert "cross-fitted: 5 folds" in m.provenance.notes["split"]
    assert m.provenance.good_images.endswith("train/good")
    assert "median 96x96 of 30 images" in m.provenance.notes["input_size"]


def test_cross_fitted_scores_come_from_prototypes_without_the_scored_image(
    product: Path, tmp_path: Path
) -> None:
    good = product / "train" / "good"
    options = FitOptions(threads=1, prototype="global", standardise=False, smoothing=0.0, seed=3)
    result = fit_product(good, "p", tmp_path, tiny_backbone(), options)
    bundle = load_bundle(result.path)
    m = bundle.manifest
    folds = split_folds(list_images(good), 5, seed=3)
    assert sorted(result.calibration_images) == sorted(result.prototype_images) == list_images(good)
    assert result.calibration_images == [p for fold in folds for p in fold]
    scorer = OnnxruntimeScorer(bundle.model_path, bundle.prototype_mean, bundle.prototype_scale, threads=1)
    start = 0
    for i, fold in enumerate(folds):
        others = [p for j, f in enumerate(folds) if j != i for p in f]
        proto = build_prototype(tiny_backbone(), others, m.input, m.preprocessing, options)
        scorer.use_prototype(proto.mean, proto.scale)
        batch = np.stack([preprocess(read_image(p), m.input, m.preprocessing) for p in fold])
        np.testing.assert_allclose(scorer.run(batch)[1], result.calibration_scores[start : start + len(fold)],
                                   rtol=1e-4)
        start += len(fold)
    # out of fold, the good images score higher than against the bundle's prototype that contains them
    scorer.use_prototype(bundle.prototype_mean, bundle.prototype_scale)
    batch = np.stack([preprocess(read_image(p), m.input, m.preprocessing) for p in result.calibration_images])
    assert float(np.mean(result.calibration_scores)) > float(np.mean(scorer.run(batch)[1]))
    assert m.threshold == m.calibration.threshold >= float(np.median(result.calibration_scores))


def test_holdout_threshold_comes_from_held_out_images_scored_by_the_bundle_model(
    product: Path, tmp_path: Path
) -> None:
    fitted = fit_product(product / "train" / "good", "p", tmp_path, tiny_backbone(),
                         FitOptions(threads=1, calibration="holdout"))
    assert not set(fitted.prototype_images) & set(fitted.calibration_images)
    assert len(fitted.prototype_images) + len(fitted.calibration_images) == 30
    bundle = load_bundle(fitted.path)
    m = bundle.manifest
    scorer = OnnxruntimeScorer(bundle.model_path, bundle.prototype_mean, bundle.prototype_scale, threads=1)
    batch = np.stack([preprocess(read_image(p), m.input, m.preprocessing) for p in fitted.calibration_images])
    _, scores = scorer.run(batch)
    np.testing.assert_allclose(scores, fitted.calibration_scores, rtol=1e-6)
    assert m.calibration.good_scores["max"] == pytest.approx(float(scores.max()), rel=1e-6)
    # 6 calibration images are too few for an extreme-value fit: the threshold is their maximum
    assert m.calibration.method == "quantile"
    assert m.threshold == pytest.approx(float(scores.max()), rel=1e-6)


def test_refit_replaces_the_bundle_and_leaves_no_staging_behind(product: Path, tmp_path: Path) -> None:
    first = fit_product(product / "train" / "good", "p", tmp_path, tiny_backbone(), ONE_THREAD)
    options = FitOptions(threads=1, prototype="spatial", standardise=True, distance="l1", pooling=3,
                         calibration="holdout", calibration_fraction=0.3, seed=5)
    second = fit_product(product / "train" / "good", "p", tmp_path, tiny_backbone(), options)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p"] and list_products(tmp_path) == ["p"]
    m = load_bundle(second.path).manifest
    assert m.bundle_id != first.manifest.bundle_id
    assert (m.scoring.prototype_mode, m.scoring.distance, m.scoring.standardised, m.scoring.pooling) == (
        "spatial", "l1", True, 3)
    assert m.calibration.n_images == 9 and m.provenance.seed == 5
    proto = load_bundle(second.path)
    assert not np.all(proto.prototype_mean == proto.prototype_mean[:, :, :1, :1])  # per position
    assert np.all(proto.prototype_scale > 0) and not np.all(proto.prototype_scale == 1.0)


def test_same_images_and_seed_give_the_same_bundle_id(product: Path, tmp_path: Path) -> None:
    a = fit_product(product / "train" / "good", "a", tmp_path, tiny_backbone(), ONE_THREAD)
    b = fit_product(product / "train" / "good", "a", tmp_path, tiny_backbone(), ONE_THREAD)
    assert a.manifest.bundle_id == b.manifest.bundle_id


def test_failed_fit_leaves_the_existing_bundle_untouched(product: Path, tmp_path: Path) -> None:
    good = fit_product(product / "train" / "good", "p", tmp_path / "products", tiny_backbone(), ONE_THREAD)
    before = {f.name: sha256_file(f) for f in good.path.iterdir()}
    lonely = tmp_path / "one-image"
    lonely.mkdir()
    shutil.copy(product / "train" / "good" / "000.png", lonely / "000.png")
    (lonely / "broken.png").write_bytes(b"not a png")
    with pytest.raises(FitError, match="at least 2"):
        fit_product(lonely, "p", tmp_path / "products", tiny_backbone(), ONE_THREAD)
    with pytest.raises(FitError, match="pooling 40 exceeds"):
        fit_product(product / "train" / "good", "p", tmp_path / "products", tiny_backbone(),
                    FitOptions(threads=1, pooling=40))
    assert {f.name: sha256_file(f) for f in good.path.iterdir()} == before
    assert sorted(p.name for p in (tmp_path / "products").iterdir()) == ["p"]
    load_bundle(good.path)


def test_products_show_names_the_exposure_range(
    fitted: FitResult, capsys: pytest.CaptureFixture[str]
) -> None:
    from linewatch.service.cli import main as linewatch_main

    assert linewatch_main(["products", "show", "part-7", "--dir", str(fitted.path.parent)]) == 0
    out = capsys.readouterr().out
    e = fitted.manifest.exposure
    assert e is not None and f"frames with a mean in {e.level_min - e.level_margin:.3f}.." in out
    assert "(30 good images)" in out and "normalise image_mean" in out


def test_a_version_1_bundle_still_loads_as_before(fitted: FitResult, tmp_path: Path) -> None:
    """Bundles written before schema 2 (no normalise, no exposure range), 3 (one member), 4 (no line bank),
    5 (no context member), 6 (no whitened member), 7 (no extremes member), 8 (no alone members), 9 (no
    disc templates), 10 (no powers on the alone paths) and 11 (no dark path) keep working, as they were
    fitted; a bundle from a newer trainer is refused by its version."""
    copy = tmp_path / fitted.path.name
    shutil.copytree(fitted.path, copy)
    raw = json.loads((copy / "bundle.json").read_text())
    assert raw["schema_version"] == 12
    raw["schema_version"] = 1
    del raw["exposure"], raw["preprocessing"]["normalise"], raw["scoring"]["members"]
    raw["scoring"].pop("line_bank", None)
    raw["scoring"].pop("context", None)
    raw["scoring"].pop("whitened", None)
    raw["scoring"].pop("extremes", None)
    raw["scoring"].pop("alone_exponents")
    (copy / "bundle.json").write_text(json.dumps(raw))
    old = load_bundle(copy).manifest
    assert old.schema_version == 1 and old.exposure is None and old.preprocessing.normalise == "none"
    assert old.scoring.members == 1 and old.scoring.line_bank is None and old.scoring.context is None
    # rewritten (as an engine build does), it keeps the fields of its version only: a daemon that reads just
    # schema 1 forbids unknown fields
    write_manifest(copy, old)
    rewritten = json.loads((copy / "bundle.json").read_text())
    assert not {"members", "line_bank", "context", "whitened", "extremes", "alone_exponents"} & set(
        rewritten["scoring"])
    assert "exposure" not in rewritten and "normalise" not in rewritten["preprocessing"]
    with pytest.raises(ValueError, match=r"scoring\.members needs schema_version >= 3"):
        old.model_validate({**old.model_dump(), "scoring": {**old.scoring.model_dump(), "members": 2,
                                                            "feature_dim": 16}})
    raw["schema_version"] = 13
    (copy / "bundle.json").write_text(json.dumps(raw))
    with pytest.raises(BundleSchemaError,
                       match=r"schema_version 13 is not supported \(.* reads 1, 2, 3, .*, 11, 12\)"):
        load_bundle(copy)


def test_tampered_bundle_is_refused(fitted: FitResult, tmp_path: Path) -> None:
    copy = tmp_path / fitted.path.name
    shutil.copytree(fitted.path, copy)
    load_bundle(copy)
    with np.load(copy / PROTOTYPE_NAME) as data:
        mean, scale = data["mean"].copy(), data["scale"]
    mean[0, 0, 0, 0] += 1.0
    np.savez(copy / PROTOTYPE_NAME, mean=mean, scale=scale)
    with pytest.raises(BundleIntegrityError, match=r"prototype\.npz"):
        load_bundle(copy)


def test_unreadable_images_are_skipped_by_name_and_recorded(product: Path, tmp_path: Path) -> None:
    good = tmp_path / "good"
    shutil.copytree(product / "train" / "good", good)
    (good / "truncated.png").write_bytes((good / "000.png").read_bytes()[:40])
    result = fit_product(good, "p", tmp_path / "products", tiny_backbone(), ONE_THREAD)
    assert len(set(result.prototype_images) | set(result.calibration_images)) == 30
    assert "truncated.png" in result.manifest.provenance.notes["skipped_images"]


def _random_images(folder: Path, sizes: list[tuple[int, int]]) -> Path:
    rng = np.random.default_rng(0)
    folder.mkdir()
    for i, (h, w) in enumerate(sizes):
        image = (rng.random((h, w, 3)) * 255).astype(np.uint8)  # colour: made gray by preprocessing
        assert cv2.imwrite(str(folder / f"{i}.png"), image)
    return folder


def test_input_size_follows_the_images_aspect_ratio(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    good = _random_images(tmp_path / "good", [(300, 120), (310, 118), (290, 125), (305, 121)])
    with caplog.at_level(logging.WARNING, logger="trainer.fit"):
        result = fit_product(good, "tall", tmp_path / "products", tiny_backbone(),
                             FitOptions(threads=1, max_side=200))
    m = result.manifest
    # median 302.5x120.5, long side capped at 200 -> 200x79.7 -> even sides
    assert (m.input.height, m.input.width) == (200, 78)
    assert m.scoring.heatmap_width == feature_map_size(78)
    assert not [r for r in caplog.records if "differ in shape" in r.getMessage()]  # one framing, sizes vary


def test_differently_framed_or_tiny_images_are_named_in_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    good = _random_images(tmp_path / "good", [(128, 128), (120, 40), (40, 120), (128, 120), (24, 24)])
    with caplog.at_level(logging.WARNING, logger="trainer.fit"):
        fit_product(good, "mixed", tmp_path / "products", tiny_backbone(),
                    FitOptions(threads=1, clusters=4, folds=2))
    warnings = " | ".join(r.getMessage() for r in caplog.records)
    assert "differ in shape (width/height 0.33..3.00): each is stretched to 120x120" in warnings
    assert "good images as small as 24 px are enlarged to 120x120" in warnings


def test_folds_partition_the_images_reproducibly() -> None:
    paths = [Path(f"{i:03d}.png") for i in range(23)]
    folds = split_folds(paths, 5, seed=1)
    assert sorted(p for f in folds for p in f) == paths and [len(f) for f in folds] == [5, 5, 5, 4, 4]
    assert all(f == sorted(f) for f in folds) and split_folds(paths, 5, seed=1) == folds
    assert split_folds(paths, 5, seed=2) != folds
    assert len(split_folds(paths[:3], 5, seed=0)) == 3  # fewer images than folds: one image per fold
    with pytest.raises(FitError, match="at least 2 folds"):
        split_folds(paths, 1, seed=0)
    with pytest.raises(FitError, match="at least 2"):
        split_folds(paths[:1], 5, seed=0)


def test_choose_input_size() -> None:
    assert choose_input_size([(1260, 500), (1250, 500), (1270, 500)], 1024) == (1024, 406)
    assert choose_input_size([(512, 512)], 1024) == (512, 512)
    assert choose_input_size([(20, 15)], 1024) == (32, 32)
    assert choose_input_size([(101, 77)], 1024) == (100, 76)
    with pytest.raises(FitError):
        choose_input_size([], 1024)


def test_bad_product_id_is_refused_before_any_work(product: Path, tmp_path: Path) -> None:
    with pytest.raises(BundleNotFoundError, match="invalid product id"):
        fit_product(product / "train" / "good", "../escape", tmp_path, tiny_backbone(), ONE_THREAD)
    assert list(tmp_path.iterdir()) == []


def test_an_output_that_is_a_file_is_refused_before_any_work(product: Path, tmp_path: Path) -> None:
    good = product / "train" / "good"
    a_file = tmp_path / "products.txt"
    a_file.write_text("not a directory")
    with pytest.raises(FitError, match=r"products.txt is a file, not a directory of product bundles"):
        fit_product(good, "p", a_file, tiny_backbone(), ONE_THREAD)
    with pytest.raises(FitError, match=r"products.txt is a file, not a directory of product bundles"):
        fit_product(good, "p", a_file / "deeper", tiny_backbone(), ONE_THREAD)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "p").write_text("a file where the bundle goes")
    with pytest.raises(FitError, match=r"p is a file: the bundle is a directory"):
        fit_product(good, "p", tmp_path / "out", tiny_backbone(), ONE_THREAD)
    assert a_file.read_text() == "not a directory"


@pytest.mark.parametrize(("flag", "value", "message"), [
    ("--threads", "0", "threads must lie in 1.."),
    ("--threads", "100000", "threads must lie in 1.."),
    ("--threads", "two", "expected a whole number of threads"),
    ("--input-size", "20000x20000", "sides up to 8192 px"),
])
def test_fit_cli_refuses_numbers_no_machine_can_use(
    product: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], flag: str, value: str, message: str
) -> None:
    with pytest.raises(SystemExit) as exited:
        trainer_main(["fit", "--good", str(product / "train" / "good"), "--product", "p", "--out",
                      str(tmp_path), f"{flag}={value}"])
    assert exited.value.code == 2
    assert message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_fit_cli_with_a_checkpoint(product: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    net = tiny_backbone()
    checkpoint = tmp_path / "backbone.pt"
    save_checkpoint(checkpoint, {"state_dict": net.state_dict(), "h": net.h, "provenance": {}})
    rc = trainer_main([
        "fit", "--good", str(product / "train" / "good"), "--product", "cli", "--out", str(tmp_path / "p"),
        "--backbone", str(checkpoint), "--prototype", "spatial", "--standardise", "--pooling", "3",
        "--target-frr", "0.01", "--calibration", "holdout",
        "--calibration-fraction", "0.3", "--input-size", "64x80", "--threads", "1", "--no-exposure-check",
        "--normalise", "none",
    ])
    out = capsys.readouterr().out
    assert rc == 0
    m = load_bundle(tmp_path / "p" / "cli").manifest
    assert (m.input.height, m.input.width) == (64, 80)
    assert (m.scoring.prototype_mode, m.scoring.standardised, m.scoring.pooling) == ("spatial", True, 3)
    assert m.exposure is None and m.preprocessing.normalise == "none"
    assert m.calibration.target_frr == 0.01 and m.calibration.n_images == 9
    assert m.provenance.backbone == str(checkpoint)
    assert f"threshold  {m.threshold:.6g}" in out and m.bundle_id in out
    rc = trainer_main(["fit", "--good", str(product / "train" / "good"), "--product", "cli", "--out",
                       str(tmp_path / "p"), "--backbone", str(tmp_path / "missing.pt")])
    assert rc == 2 and "missing.pt: backbone checkpoint not found" in capsys.readouterr().err
    assert load_bundle(tmp_path / "p" / "cli").manifest.bundle_id == m.bundle_id


def test_a_bundle_from_a_given_backbone_and_prototype(tmp_path: Path) -> None:
    """No fit: the prototype is the mean torch feature of the given images; written through the same
    atomic, deterministic write_bundle as a fit, so the daemon loads it and equal inputs give equal ids."""
    import torch

    from linewatch.bundle.manifest import Calibration
    from trainer.fit import prototype_of, write_bundle_from_backbone

    net = tiny_backbone()
    images = np.random.default_rng(0).uniform(-1, 1, (3, 1, 64, 64)).astype(np.float32)
    prototype = prototype_of(net, images)
    with torch.no_grad():
        features = net(torch.from_numpy(images)).numpy().astype(np.float64)
    np.testing.assert_allclose(prototype.mean[0, :, 0, 0], features.mean(axis=(0, 2, 3)), rtol=1e-5)
    assert prototype.mean.shape == (1, net.h, feature_map_size(64), feature_map_size(64))

    first = load_bundle(write_bundle_from_backbone(tmp_path / "a" / "part", net, prototype, height=64,
                                                   width=64, threshold=0.5))
    again = load_bundle(write_bundle_from_backbone(tmp_path / "b" / "part", net, prototype, height=64,
                                                   width=64, threshold=0.5))
    assert first.bundle_id == again.bundle_id and first.manifest.threshold == 0.5
    assert first.manifest.calibration.method == "fixed" and first.manifest.provenance.n_prototype_images == 3
    np.testing.assert_array_equal(first.prototype_mean, prototype.mean)
    other = Calibration(method="quantile", target_frr=0.01, n_images=5, threshold=0.7)
    with pytest.raises(FitError, match="differs"):
        write_bundle_from_backbone(tmp_path / "c" / "part", net, prototype, height=64, width=64,
                                   threshold=0.5, calibration=other)
    assert not (tmp_path / "c").exists() or not list((tmp_path / "c").iterdir())

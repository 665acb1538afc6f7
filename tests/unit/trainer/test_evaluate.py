"""trainer evaluate end to end: fit a synthetic product with a backbone trained in this session, evaluate
the bundle's model.onnx on its test set, check the report against independent re-computation."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from fit_support import synthetic_product, tiny_backbone

import trainer.evaluate as evaluate_module
from linewatch.bundle.registry import load_bundle
from linewatch.inference.preprocessing import preprocess
from linewatch.surfaces import inject_defect, render_surface
from trainer.baseline import RawPixelBaseline
from trainer.cli import main as trainer_main
from trainer.context import ContextMember
from trainer.data.images import read_image
from trainer.evaluate import evaluate_bundle, evaluate_dagm, format_dagm_table
from trainer.fit import PAPER_OPTIONS, FitOptions, FitResult, fit_product
from trainer.metrics import auroc
from trainer.model import Backbone
from trainer.scorer import OnnxruntimeScorer

DEFECTS = ("spot", "scratch", "noise_patch")


@pytest.fixture(scope="module")
def product(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthetic_product(tmp_path_factory.mktemp("synth") / "fractal", family="fractal", defects=DEFECTS)


@pytest.fixture(scope="module")
def fitted(product: Path, tmp_path_factory: pytest.TempPathFactory) -> FitResult:
    return fit_product(product / "train" / "good", "fractal", tmp_path_factory.mktemp("products"),
                       tiny_backbone(), FitOptions(threads=1))


@pytest.fixture(scope="module")
def report(fitted: FitResult, product: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("report")
    evaluate_bundle(fitted.path, product, out, threads=1)
    return out


def test_metrics_json_has_the_promised_numbers(report: Path, fitted: FitResult) -> None:
    metrics = json.loads((report / "metrics.json").read_text())
    assert metrics["n_good"] == 12 and metrics["n_defect"] == 12
    assert set(metrics["per_defect"]) == set(DEFECTS)
    assert metrics["bundle"]["bundle_id"] == fitted.manifest.bundle_id
    # a backbone trained for three seconds already separates these defects well, far above the raw pixels
    assert metrics["image_auroc"] >= 0.8
    assert metrics["baseline"]["image_auroc"] < metrics["image_auroc"]
    assert 0.5 < metrics["pixel_auroc"] <= 1.0
    assert all(0.0 <= v <= 1.0 for v in metrics["per_defect"].values())
    assert metrics["n_defect_with_mask"] == 12
    lo, hi = metrics["image_auroc_ci95"]
    assert lo <= metrics["image_auroc"] <= hi
    t = metrics["at_threshold"]
    # 12 good parts cannot show a false-reject rate below 22 % at 95 % confidence, whatever the count
    assert t["false_reject_rate_upper95"] >= 0.22 and t["false_reject_rate_upper95"] > t["false_reject_rate"]
    assert t["miss_rate_upper95"] > t["miss_rate"]


def test_scores_are_the_onnx_model_scores_and_rates_follow_the_threshold(report: Path, product: Path,
                                                                          fitted: FitResult) -> None:
    metrics = json.loads((report / "metrics.json").read_text())
    bundle = load_bundle(fitted.path)
    m = bundle.manifest
    scorer = OnnxruntimeScorer(bundle.model_path, bundle.prototype_mean, bundle.prototype_scale, threads=1)
    files = [product / row["file"] for row in metrics["images"]]
    _, scores = scorer.run(np.stack([preprocess(read_image(f), m.input, m.preprocessing) for f in files]))
    reported = np.array([row["score"] for row in metrics["images"]])
    np.testing.assert_allclose(reported, scores, rtol=1e-6)
    labels = np.array([row["defect"] is not None for row in metrics["images"]])
    assert metrics["image_auroc"] == pytest.approx(auroc(scores, labels))
    good, bad = scores[~labels], scores[labels]
    assert metrics["false_reject_rate"] == pytest.approx(np.mean(good > m.threshold))
    assert metrics["miss_rate"] == pytest.approx(np.mean(bad <= m.threshold))
    assert metrics["at_threshold"]["threshold"] == m.threshold


def test_report_files_are_written(report: Path) -> None:
    roc = cv2.imread(str(report / "roc.png"))
    sheet = cv2.imread(str(report / "heatmaps.png"))
    assert roc is not None and roc.shape == (640, 640, 3)
    assert sheet is not None and sheet.shape[0] > 2 * 300  # two sections of overlays
    summary = (report / "summary.md").read_text()
    metrics = json.loads((report / "metrics.json").read_text())
    network, baseline = metrics["image_auroc"], metrics["baseline"]["image_auroc"]
    lo, hi = metrics["image_auroc_ci95"]
    interval = f"(95 % bootstrap interval {lo:.3f}–{hi:.3f})"
    assert f"| image AUROC | {network:.3f} {interval} | {baseline:.3f} |" in summary
    assert "the true rate may be up to" in summary
    assert "false-reject rate" in summary and "miss rate" in summary


def test_pixel_auroc_is_null_without_masks(product: Path, fitted: FitResult, tmp_path: Path) -> None:
    data = tmp_path / "no-masks"
    shutil.copytree(product, data, ignore=shutil.ignore_patterns("ground_truth"))
    metrics = evaluate_bundle(fitted.path, data, tmp_path / "report", threads=1)
    assert metrics["pixel_auroc"] is None and metrics["n_defect_with_mask"] == 0
    assert metrics["image_auroc"] is not None


def test_masks_at_another_resolution_count_and_masks_of_another_image_are_refused(
    product: Path, fitted: FitResult, report: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    half = tmp_path / "half-masks"
    shutil.copytree(product, half)
    for mask in (half / "ground_truth").rglob("*.png"):  # the same masks at half resolution
        m = cv2.imread(str(mask), cv2.IMREAD_GRAYSCALE)
        small = cv2.resize(m, (m.shape[1] // 2, m.shape[0] // 2), interpolation=cv2.INTER_AREA)
        cv2.imwrite(str(mask), small)
    metrics = evaluate_bundle(fitted.path, half, tmp_path / "half-report", threads=1)
    full = json.loads((report / "metrics.json").read_text())
    assert metrics["pixel_auroc"] == pytest.approx(full["pixel_auroc"], abs=0.02)

    wrong = tmp_path / "wrong-masks"
    shutil.copytree(product, wrong)
    stretched = sorted((wrong / "ground_truth").rglob("*.png"))[0]
    m = cv2.imread(str(stretched), cv2.IMREAD_GRAYSCALE)
    cv2.imwrite(str(stretched), cv2.resize(m, (m.shape[1], m.shape[0] // 3)))
    rc = trainer_main(["evaluate", "--bundle", str(fitted.path), "--data", str(wrong), "--out",
                       str(tmp_path / "wrong-report"), "--threads", "1"])
    err = capsys.readouterr().err
    assert rc == 2 and f"{stretched.name}: mask is " in err and "not the same image" in err


def test_evaluate_cli_writes_the_report(product: Path, fitted: FitResult, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli-report"
    rc = trainer_main(["evaluate", "--bundle", str(fitted.path), "--data", str(product), "--out", str(out),
                       "--threads", "1"])
    assert rc == 0
    assert (out / "metrics.json").is_file() and (out / "roc.png").is_file()
    assert "image AUROC" in capsys.readouterr().out
    assert trainer_main(["evaluate", "--bundle", str(tmp_path / "missing"), "--data", str(product),
                         "--out", str(out)]) == 2
    assert "no such bundle directory" in capsys.readouterr().err
    assert trainer_main(["evaluate", "--bundle", str(fitted.path), "--data", str(tmp_path / "typo"),
                         "--out", str(out)]) == 2
    assert "typo: no such data directory" in capsys.readouterr().err


def test_raw_pixel_baseline_finds_a_bright_square_where_it_is() -> None:
    good = np.zeros((3, 1, 64, 80), np.float32)
    good[1] += 0.2
    good[2] -= 0.2
    baseline = RawPixelBaseline(neighbourhood=32)
    baseline.add(good[:2])
    baseline.add(good[2:])
    assert np.allclose(baseline.finish(), 0.0)
    test = np.zeros((1, 1, 64, 80), np.float32)
    test[0, 0, 10:42, 30:62] = 1.0  # one full 32×32 window
    heat = baseline.heatmaps(test)
    assert heat.shape == (1, 33, 49)
    assert np.unravel_index(np.argmax(heat[0]), heat[0].shape) == (10, 30)
    assert baseline.scores(test)[0] == pytest.approx(1.0)


def _write_dagm_class(root: Path, name: str, family: str, rng: np.random.Generator) -> None:
    """A DAGM 2007 (Kaggle) class folder: Train (good + one defective), Test (good + defective)."""
    for split, n_good, n_bad in (("Train", 8, 1), ("Test", 6, 6)):
        folder = root / name / split
        (folder / "Label").mkdir(parents=True)
        rows = ["1"]
        for i in range(n_good + n_bad):
            image = render_surface(family, 96, 96, rng, style_seed=3)
            image_name = f"{i:04d}.PNG"
            label = "0"
            if i >= n_good:
                image, mask = inject_defect(image, "spot", rng)
                label = f"{i:04d}_label.PNG"
                cv2.imwrite(str(folder / "Label" / label), mask)
            cv2.imwrite(str(folder / image_name), image)
            rows.append(f"{i:04d}\t{int(i >= n_good)}\t{image_name}\t0\t{label}\t")
        (folder / "Label" / "Labels.txt").write_text("\n".join(rows) + "\n")


def test_dagm_protocol_table(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    _write_dagm_class(tmp_path, "Class1", "fractal", rng)
    _write_dagm_class(tmp_path, "Class2", "weave", rng)
    options = replace(PAPER_OPTIONS, input_size=(96, 96), threads=1)  # the paper's scoring, small images
    rows = evaluate_dagm(tmp_path, tiny_backbone(), None, options)
    assert [r.name for r in rows] == ["Class1", "Class2"]
    for row in rows:
        assert (row.n_train_good, row.n_test_good, row.n_test_defect) == (8, 6, 6)
        assert row.auroc_network is not None and row.auroc_baseline is not None
    # the paper's protocol, recomputed independently in PyTorch for Class1: global mean feature of the good
    # Train images only, score = maximum L2 distance, AUROC over Test
    net = tiny_backbone()
    train = sorted((tmp_path / "Class1" / "Train").glob("*.PNG"))[:8]
    test = sorted((tmp_path / "Class1" / "Test").glob("*.PNG"))

    def features(paths: list[Path]) -> torch.Tensor:
        x = np.stack([read_image(p)[None].astype(np.float32) / 127.5 - 1.0 for p in paths])
        with torch.no_grad():
            return net(torch.from_numpy(x))

    mean = features(train).mean(dim=(0, 2, 3), keepdim=True)
    scores = (features(test) - mean).norm(dim=1).amax(dim=(1, 2)).numpy()
    assert rows[0].auroc_network == pytest.approx(auroc(scores, [0] * 6 + [1] * 6))
    table = format_dagm_table(rows)
    assert table.splitlines()[0].split()[:2] == ["class", "train"]
    assert "Class1" in table and "mean" in table.splitlines()[-1]
    only_two = evaluate_dagm(tmp_path, tiny_backbone(), [2], options)
    assert [r.name for r in only_two] == ["Class2"]


def test_dagm_cli_runs_the_papers_fit_whatever_fit_defaults_to(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _write_dagm_class(tmp_path, "Class1", "fractal", np.random.default_rng(0))
    seen: list[FitOptions] = []
    real = evaluate_module.evaluate_dagm

    def recording(root: Path, backbone: object, classes: object, options: FitOptions) -> object:
        seen.append(options)
        return real(root, tiny_backbone(), classes, options)

    monkeypatch.setattr(evaluate_module, "evaluate_dagm", recording)
    assert trainer_main(["evaluate", "--dagm", str(tmp_path), "--input-size", "96x96", "--threads", "1"]) == 0
    (options,) = seen
    assert (options.prototype, options.distance, options.standardise, options.smoothing, options.pooling,
            options.normalise) == ("global", "l2", False, 0.0, 1, "none")
    assert "Class1" in capsys.readouterr().out


def test_dagm_protocol_on_the_shared_samples(shared_data: Path) -> None:
    """The real Kaggle layout (header line, trailing tabs, defects without label files) reads; classes
    without good Train or Test images say so instead of inventing an AUROC."""
    rows = evaluate_dagm(shared_data / "dagm2007-samples", tiny_backbone(), None,
                         FitOptions(input_size=(128, 128), threads=1))
    assert [r.name for r in rows] == [f"Class{i}" for i in range(1, 7)]
    for row in rows:
        if row.n_test_good == 0 or row.n_test_defect == 0 or row.n_train_good == 0:
            assert row.auroc_network is None and row.note
    assert any(r.n_train_good > 0 for r in rows)


def test_dagm_protocol_fits_a_context_member_per_class(tmp_path: Path) -> None:
    """A backbone with a context member (the default's fourth) gets one fitted on each class's good Train
    images, as a product would; the caller's member is left unfitted."""
    rng = np.random.default_rng(0)
    _write_dagm_class(tmp_path, "Class1", "fractal", rng)
    _write_dagm_class(tmp_path, "Class2", "weave", rng)
    member = ContextMember()
    options = replace(PAPER_OPTIONS, input_size=(96, 96), threads=1, context_steps=20)
    rows = evaluate_dagm(tmp_path, Backbone(tiny_backbone(), None, member), None, options)
    assert [r.name for r in rows] == ["Class1", "Class2"]
    assert all(r.auroc_network is not None for r in rows)
    assert not member.fitted

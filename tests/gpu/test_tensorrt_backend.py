"""TensorRT on a real GPU: engine builds (fp32/fp16), parity with ONNX Runtime, prototypes on the device,
plan caching and refusal of plans from another GPU/TensorRT. Skips cleanly where TensorRT, pycuda or a GPU
is missing (CI has none); ``scripts/gpu-check`` runs these on a GPU machine and sets
LINEWATCH_REQUIRE_GPU=1 there, which turns that skip into a failure."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from linewatch.bundle.manifest import EnginePlan
from linewatch.bundle.registry import LoadedBundle, load_bundle, read_manifest, sha256_file, write_manifest
from linewatch.errors import BackendUnavailableError, EngineIncompatibleError
from linewatch.inference.onnxruntime import OnnxruntimeBackend
from linewatch.inference.preprocessing import preprocess
from linewatch.inference.selection import InferenceConfig, create_backend
from linewatch.inference.tensorrt import TensorrtBackend, TensorrtConfig, device_key, load_runtime
from trainer.engine import TOLERANCE, build_engine
from trainer.extremes import ExtremesMember, fit_extremes_members
from trainer.fit import prototype_of, write_bundle_from_backbone
from trainer.linebank import LineBank
from trainer.model import Backbone, FeatureNet
from trainer.whitened import WhitenedMember, fit_whitened_members

pytestmark = pytest.mark.gpu

SIZE = 128  # heatmap 49×49: small enough to build engines in seconds


@pytest.fixture(scope="module")
def gpu() -> None:
    try:
        load_runtime()
    except BackendUnavailableError as exc:
        if os.environ.get("LINEWATCH_REQUIRE_GPU") == "1":
            pytest.fail(f"LINEWATCH_REQUIRE_GPU=1 but TensorRT cannot run: {exc}", pytrace=False)
        pytest.skip(f"no TensorRT GPU here: {exc}")


def images(n: int, seed: int = 0) -> np.ndarray:
    """uint8 N×SIZE×SIZE textures; odd ones carry a dark blob."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    out = np.empty((n, SIZE, SIZE), np.uint8)
    for i in range(n):
        base = 128 + 40 * np.sin(xx / (4.0 + i)) * np.cos(yy / 5.0) + rng.normal(0, 6, (SIZE, SIZE))
        if i % 2:
            r, c = rng.integers(16, SIZE - 32, 2)
            base[r : r + 10, c : c + 10] = 10
        out[i] = np.clip(base, 0, 255)
    return out


def preprocessed(raw: np.ndarray) -> np.ndarray:
    return (raw.astype(np.float32)[:, None] / 255.0 * 2.0 - 1.0).astype(np.float32)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory, gpu: None) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("gpu")
    good = root / "good"
    good.mkdir()
    for i, img in enumerate(images(8)):
        cv2.imwrite(str(good / f"{i:03d}.png"), img)
    yield root


def fresh_bundle(root: Path, name: str, h: int = 16) -> LoadedBundle:
    torch.manual_seed(3)
    net = FeatureNet(h).eval()
    prototype = prototype_of(net, preprocessed(images(8)[::2]))
    return load_bundle(write_bundle_from_backbone(root / "products" / name, net, prototype, height=SIZE,
                                                  width=SIZE, threshold=1.0))


@pytest.fixture(scope="module")
def built(workdir: Path) -> LoadedBundle:
    """One bundle with an fp32 and an fp16 plan built by the real ``trainer build-engine`` code."""
    bundle = fresh_bundle(workdir, "built")
    for precision in ("fp32", "fp16"):
        entry, parity = build_engine(bundle.path, precision, max_batch=4,
                                     timing_cache=workdir / "timing.cache", images_dir=workdir / "good",
                                     n_images=8)
        assert parity.passed and entry.parity["passed"] == 1.0
    return load_bundle(bundle.path)  # verifies the plans' hashes


def test_build_engine_stores_both_plans_with_hashes_and_parity(built: LoadedBundle, workdir: Path) -> None:
    manifest = built.manifest
    assert sorted(e.precision for e in manifest.engines) == ["fp16", "fp32"]
    runtime = load_runtime()
    key = device_key(runtime, 0)
    for entry in manifest.engines:
        assert entry.file.startswith("engines/") and entry.file in manifest.files
        assert (entry.gpu_name, entry.compute_capability, entry.tensorrt_version) == (
            key.gpu_name, key.compute_capability, key.tensorrt_version)
        assert entry.max_batch == 4 and entry.parity["n_images"] == 8.0
        assert entry.parity["score_max_abs"] <= entry.parity["tolerance"]
        assert entry.parity["heatmap_max_abs"] <= entry.parity["tolerance"]
    assert (workdir / "timing.cache").stat().st_size > 0


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize("per_product", ["whitened", "extremes", "extremes-alone", "extremes-dark-path",
                                         "extremes-bright"])
def test_the_default_shape_a_stacked_pair_with_clusters_builds_within_tolerance(workdir: Path, precision: str,
                                                                                 per_product: str) -> None:
    """The shape of what `trainer fit` ships by default: two stacked networks (grouped convolutions), the
    line bank (reflect Pad, long constant Convs, ReduceMax/ReduceMin) and the whitened member (a per-product
    17×17 Conv bank, Abs, ReduceMax) or, where that is left out, the extremes member (ReduceMean, Abs,
    MaxPool; with the dark member that rejects alone, Neg, Relu and the head's Max of maps and of path
    scores; with the dark path, padded 4×4 MaxPools, 1×3 MaxPools, Pad/Slice shifts and Min/Max of maps
    around −1e4 outside the image; with the bright excursions one more MaxPool and Relu), the feature
    channels split per member in the head, nearest-of-K centres (the bank's repeated; unstandardised and
    unlevelled here, which changes only the prototype's values); the plan must match ONNX Runtime like any
    other."""
    torch.manual_seed(4)
    good = preprocessed(images(8)[::2])
    stack = FeatureNet.stack([FeatureNet(16), FeatureNet(16)])
    if per_product == "whitened":
        whitened = fit_whitened_members(WhitenedMember(), [[good], [good]], [0] * len(good),
                                        max_kurtosis=float("inf")).member
        net = Backbone(stack, LineBank(), whitened=whitened)
    else:
        template = ExtremesMember(alone=per_product != "extremes",
                                  dark_path=0 if per_product in ("extremes", "extremes-alone") else 32,
                                  bright=per_product == "extremes-bright")
        grey = fit_extremes_members(template, [good], [0] * len(good), 0, float("inf"), 0.5).member
        net = Backbone(stack, LineBank(), extremes=grey)
    prototype = prototype_of(net, good, mode="clusters", clusters=8)
    target = workdir / "products" / f"pair-{per_product}-{precision}"
    path = write_bundle_from_backbone(target, net, prototype, height=SIZE, width=SIZE, threshold=1.0)
    scoring = load_bundle(path).manifest.scoring
    alone = {"extremes-alone": (4,), "extremes-dark-path": (4, 5),
             "extremes-bright": (4, 5, 6)}.get(per_product, ())
    assert scoring.members == 2 and scoring.member_dims == (16, 16, 4, 1) + (1,) * len(alone)
    assert getattr(scoring, per_product.split("-")[0]) is not None
    assert scoring.alone_members == alone
    entry, parity = build_engine(path, precision, max_batch=4, timing_cache=workdir / "timing.cache",
                                 images_dir=workdir / "good", n_images=8)
    assert parity.passed and entry.parity["score_max_abs"] <= entry.parity["tolerance"]


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize("cuda_graph", [False, True])
def test_bundled_plan_matches_onnxruntime(built: LoadedBundle, tmp_path: Path, precision: str,
                                          cuda_graph: bool) -> None:
    cfg = TensorrtConfig(precision=precision, cuda_graph=cuda_graph, cache_dir=tmp_path,  # type: ignore[arg-type]
                         build_if_missing=False)
    trt_backend = TensorrtBackend(built, cfg)
    assert trt_backend.plan_source == "bundle" and precision in trt_backend.plan_note
    ort_backend = OnnxruntimeBackend(built)
    batch = preprocessed(images(6, seed=5))  # 6 > max batch 4: split into 4 + 2
    ref = ort_backend.infer(batch, want_heatmap=True)
    for _ in range(3):  # plain enqueue, then graph capture, then graph replay
        got = trt_backend.infer(batch, want_heatmap=True)
        tol = TOLERANCE[precision] * max(1.0, max(abs(o.score) for o in ref))
        for r, g in zip(ref, got, strict=True):
            assert abs(r.score - g.score) <= tol
            assert g.heatmap is not None and np.max(np.abs(r.heatmap - g.heatmap)) <= tol  # type: ignore[operator]
            assert r.heatmap[g.argmax_rc] >= r.heatmap.max() - tol  # type: ignore[index]
    without = trt_backend.infer(batch[:1], want_heatmap=False)[0]
    assert without.heatmap is None and abs(without.score - ref[0].score) <= tol
    trt_backend.close()


def test_set_prototype_is_a_device_copy_without_reload(built: LoadedBundle, tmp_path: Path) -> None:
    backend = TensorrtBackend(built, TensorrtConfig(precision="fp32", cache_dir=tmp_path))
    ort_backend = OnnxruntimeBackend(built)
    batch = preprocessed(images(2, seed=9))
    mean2 = built.prototype_mean + np.float32(0.25)
    scale2 = np.full_like(built.prototype_scale, 1.5)
    before = [o.score for o in backend.infer(batch, want_heatmap=False)]
    backend.set_prototype(mean2, scale2)
    ort_backend.set_prototype(mean2, scale2)
    after = [o.score for o in backend.infer(batch, want_heatmap=False)]
    ref = [o.score for o in ort_backend.infer(batch, want_heatmap=False)]
    np.testing.assert_allclose(after, ref, atol=TOLERANCE["fp32"] * max(1.0, max(ref)))
    assert not np.allclose(before, after, atol=1e-3)
    backend.close()


def test_plan_built_at_start_is_cached_and_reused(workdir: Path, tmp_path: Path) -> None:
    bundle = fresh_bundle(workdir, "cached")
    cfg = TensorrtConfig(precision="fp32", cache_dir=tmp_path / "cache", max_batch=2)
    first = TensorrtBackend(bundle, cfg)
    assert first.plan_source == "built" and "the bundle has no TensorRT plans" in first.plan_note
    assert first.plan_path.parent == tmp_path / "cache" and not (bundle.path / "engines").exists()
    sidecar = json.loads(first.plan_path.with_suffix(".json").read_text())
    assert sidecar["sha256"] == sha256_file(first.plan_path)
    first.close()
    second = TensorrtBackend(bundle, cfg)
    assert second.plan_source == "cache"
    second.close()
    # a damaged cached plan fails its hash check and is rebuilt
    data = bytearray(first.plan_path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    first.plan_path.write_bytes(bytes(data))
    third = TensorrtBackend(bundle, cfg)
    assert third.plan_source == "built" and "fails its hash check" in third.plan_note
    third.close()


def test_plan_for_another_gpu_or_tensorrt_is_not_loaded(
    built: LoadedBundle, workdir: Path, tmp_path: Path
) -> None:
    bundle = fresh_bundle(workdir, "foreign")
    fp32 = next(e for e in built.manifest.engines if e.precision == "fp32")
    (bundle.path / "engines").mkdir()
    (bundle.path / "engines" / "other.plan").write_bytes((built.path / fp32.file).read_bytes())
    manifest = read_manifest(bundle.path)
    foreign = EnginePlan(file="engines/other.plan", gpu_name=fp32.gpu_name, compute_capability="1.0",
                         tensorrt_version="0.0.1", precision="fp32", max_batch=4)
    files = {**manifest.files, "engines/other.plan": sha256_file(bundle.path / "engines" / "other.plan")}
    write_manifest(bundle.path, manifest.model_copy(update={"engines": [foreign], "files": files}))
    reloaded = load_bundle(bundle.path)
    with pytest.raises(EngineIncompatibleError) as err:
        TensorrtBackend(reloaded, TensorrtConfig(precision="fp32", cache_dir=tmp_path,
                                                 build_if_missing=False))
    assert "engines/other.plan was built for TensorRT 0.0.1" in str(err.value)
    assert "compute capability 1.0" in str(err.value)


def test_undeserialisable_plan_is_reported_with_tensorrt_log(built: LoadedBundle, workdir: Path,
                                                             tmp_path: Path) -> None:
    bundle = fresh_bundle(workdir, "garbage")
    fp32 = next(e for e in built.manifest.engines if e.precision == "fp32")
    (bundle.path / "engines").mkdir()
    (bundle.path / fp32.file).write_bytes(b"\x00" * 4096)
    manifest = read_manifest(bundle.path)
    files = {**manifest.files, fp32.file: sha256_file(bundle.path / fp32.file)}
    entry = fp32.model_copy(update={"parity": {}})
    write_manifest(bundle.path, manifest.model_copy(update={"engines": [entry], "files": files}))
    reloaded = load_bundle(bundle.path)
    with pytest.raises(EngineIncompatibleError) as err:
        TensorrtBackend(reloaded, TensorrtConfig(precision="fp32", cache_dir=tmp_path,
                                                 build_if_missing=False))
    message = str(err.value)
    assert "TensorRT cannot deserialise the plan" in message and "(TensorRT logged nothing)" not in message
    assert "[" in message  # TensorRT's own lines, with their severity
    # allowed to build: the refused plan is replaced by a fresh one, and the note says why
    rebuilt = TensorrtBackend(reloaded, TensorrtConfig(precision="fp32", cache_dir=tmp_path))
    assert rebuilt.plan_source == "built" and "cannot deserialise" in rebuilt.plan_note
    rebuilt.close()


def test_auto_selects_tensorrt_on_a_gpu(built: LoadedBundle, tmp_path: Path) -> None:
    config = InferenceConfig.model_validate({"tensorrt": {"precision": "fp16", "cache_dir": str(tmp_path)}})
    backend, report = create_backend(config, built)
    assert isinstance(backend, TensorrtBackend)
    assert report.startswith("inference backend tensorrt (fp16") and "(auto)" in report
    backend.close()


def test_default_fit_clusters_head_compiles_and_matches_onnxruntime(workdir: Path, tmp_path: Path) -> None:
    """`trainer fit`'s default head (nearest of 256 centres: Concat/MatMul/ReduceMin, and a Gaussian-smoothed
    map: two constant Convs and a Div) builds into a plan and scores like ONNX Runtime."""
    from trainer.fit import FitOptions, fit_product

    torch.manual_seed(3)
    result = fit_product(workdir / "good", "clustered", workdir / "products", FeatureNet(16).eval(),
                         FitOptions(threads=1, calibration="holdout", calibration_fraction=0.25))
    scoring = result.manifest.scoring
    assert (scoring.prototype_mode, scoring.clusters, scoring.smoothing) == ("clusters", 256, 1.0)
    _, parity = build_engine(result.path, "fp32", max_batch=2, timing_cache=workdir / "timing.cache",
                             images_dir=workdir / "good", n_images=8)
    assert parity.passed
    bundle = load_bundle(result.path)
    trt_backend = TensorrtBackend(bundle, TensorrtConfig(precision="fp32", cache_dir=tmp_path,
                                                         build_if_missing=False))
    ort_backend = OnnxruntimeBackend(bundle)
    m = bundle.manifest  # the default fit removes each image's mean: feed what the daemon would
    batch = np.stack([preprocess(im, m.input, m.preprocessing) for im in images(4, seed=9)])
    ref = ort_backend.infer(batch, want_heatmap=True)
    got = trt_backend.infer(batch, want_heatmap=True)
    tol = TOLERANCE["fp32"] * max(1.0, max(abs(o.score) for o in ref))
    for r, g in zip(ref, got, strict=True):
        assert abs(r.score - g.score) <= tol
        assert g.heatmap is not None and np.max(np.abs(r.heatmap - g.heatmap)) <= tol  # type: ignore[operator]
    trt_backend.close()

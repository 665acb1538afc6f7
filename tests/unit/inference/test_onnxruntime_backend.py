"""OnnxruntimeBackend against the PyTorch model it was exported from, and against bad bundles."""

from __future__ import annotations

import logging

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from harness import relist_hashes
from inference_support import BundleFactory, sample_images

from linewatch.bundle.manifest import MODEL_NAME
from linewatch.bundle.registry import load_bundle
from linewatch.errors import BundleInputMismatchError, InferenceError
from linewatch.inference.backend import InferenceBackend
from linewatch.inference.onnxruntime import OnnxruntimeBackend, OnnxruntimeConfig
from trainer.export import export_onnx
from trainer.model import FeatureNet, InspectionModel, ScoringHead

CONFIG = OnnxruntimeConfig(intra_op_threads=1)
TOL = 1e-4


def torch_reference(net: FeatureNet, images: np.ndarray, mean: np.ndarray, scale: np.ndarray,
                    distance: str = "l2", pooling: int = 1) -> tuple[np.ndarray, np.ndarray]:
    model = InspectionModel(net, ScoringHead(distance, pooling)).eval()
    with torch.no_grad():
        heatmap, score = model(torch.from_numpy(images), torch.from_numpy(mean), torch.from_numpy(scale))
    return heatmap.numpy(), score.numpy()


@pytest.mark.parametrize(("distance", "pooling"), [("l2", 1), ("l1", 3)])
def test_scores_heatmaps_and_argmax_match_pytorch(
    make_bundle: BundleFactory, distance: str, pooling: int
) -> None:
    bundle, net = make_bundle(distance=distance, pooling=pooling)
    backend = OnnxruntimeBackend(bundle, CONFIG)
    assert isinstance(backend, InferenceBackend)
    images = sample_images(4)
    ref_heatmap, ref_score = torch_reference(net, images, bundle.prototype_mean, bundle.prototype_scale,
                                             distance, pooling)
    outputs = backend.infer(images, want_heatmap=True)
    assert len(outputs) == 4
    for i, out in enumerate(outputs):
        assert out.heatmap is not None
        np.testing.assert_allclose(out.heatmap, ref_heatmap[i], atol=TOL, rtol=TOL)
        assert out.score == pytest.approx(float(ref_score[i]), abs=TOL, rel=TOL)
        # argmax is the heatmap maximum (ties within the tolerance are equally right)
        assert ref_heatmap[i][out.argmax_rc] >= ref_heatmap[i].max() - TOL
    # the defect images (odd) score higher than the clean ones they were not fitted on
    assert outputs[1].score > outputs[0].score and outputs[3].score > outputs[2].score
    # single frames give the same answers as the batch; no heatmap unless asked
    single = backend.infer(images[1:2], want_heatmap=False)[0]
    assert single.heatmap is None
    assert single.score == pytest.approx(outputs[1].score, abs=TOL)
    assert single.argmax_rc == outputs[1].argmax_rc
    backend.close()


def test_set_prototype_switches_product_without_reloading_the_model(make_bundle: BundleFactory) -> None:
    bundle, net = make_bundle()
    backend = OnnxruntimeBackend(bundle, CONFIG)
    images = sample_images(2)
    before = [o.score for o in backend.infer(images, want_heatmap=False)]
    # The model file disappears: a backend that reloaded on a product switch would fail now.
    bundle.model_path.unlink()
    mean2 = bundle.prototype_mean + np.float32(0.5)
    scale2 = np.full_like(bundle.prototype_scale, 2.0)
    backend.set_prototype(mean2, scale2)
    after = backend.infer(images, want_heatmap=True)
    _, ref_score = torch_reference(net, images, mean2, scale2)
    for out, ref, old in zip(after, ref_score, before, strict=True):
        assert out.score == pytest.approx(float(ref), abs=TOL, rel=TOL)
        assert out.score != pytest.approx(old, abs=1e-3)
    with pytest.raises(BundleInputMismatchError, match=r"prototype mean has shape \(1, 4, 17, 17\)"):
        backend.set_prototype(mean2[:, :4], scale2)
    # a refused prototype leaves the previous one in place
    assert backend.infer(images, want_heatmap=False)[0].score == pytest.approx(after[0].score, abs=TOL)


def test_warmup_runs_on_load_and_leaves_no_state_behind(make_bundle: BundleFactory) -> None:
    bundle, net = make_bundle()
    backend = OnnxruntimeBackend(bundle, OnnxruntimeConfig(intra_op_threads=1, warmup_runs=3))
    report = backend.warmup_report
    assert report.runs == 3 and report.first_ms > 0 and report.steady_ms > 0
    backend.warmup()
    images = sample_images(2)
    _, ref_score = torch_reference(net, images, bundle.prototype_mean, bundle.prototype_scale)
    got = [o.score for o in backend.infer(images, want_heatmap=False)]
    np.testing.assert_allclose(got, ref_score, atol=TOL, rtol=TOL)


def test_wrong_image_shape_at_infer_is_an_inference_error(make_bundle: BundleFactory) -> None:
    bundle, _ = make_bundle()
    backend = OnnxruntimeBackend(bundle, CONFIG)
    expected = r"images have shape \(1, 1, 32, 32\), the model takes N×1×64×64"
    with pytest.raises(InferenceError, match=expected):
        backend.infer(np.zeros((1, 1, 32, 32), np.float32), want_heatmap=False)


def test_model_for_another_image_size_is_refused_naming_the_input(make_bundle: BundleFactory) -> None:
    bundle, net = make_bundle()
    export_onnx(net, 80, 80, distance="l2", pooling=1, out=bundle.path / MODEL_NAME)
    relist_hashes(bundle.path)
    with pytest.raises(BundleInputMismatchError) as err:
        OnnxruntimeBackend(load_bundle(bundle.path), CONFIG)
    message = str(err.value)
    assert "input 'image' has shape ['batch', 1, 80, 80], the manifest says [N, 1, 64, 64]" in message
    assert "output 'heatmap'" in message and "model.onnx" in message


def test_model_with_other_feature_dim_is_refused_naming_the_prototype(make_bundle: BundleFactory) -> None:
    bundle, _ = make_bundle(h=8)
    export_onnx(FeatureNet(4), 64, 64, distance="l2", pooling=1, out=bundle.path / MODEL_NAME)
    relist_hashes(bundle.path)
    expected = r"input 'prototype_mean' has shape \[1, 4, 17, 17\], the manifest says \[1, 8, 17, 17\]"
    with pytest.raises(BundleInputMismatchError, match=expected):
        OnnxruntimeBackend(load_bundle(bundle.path), CONFIG)


def test_renamed_output_is_refused(make_bundle: BundleFactory) -> None:
    bundle, _ = make_bundle()
    model = onnx.load(str(bundle.model_path))
    for node in model.graph.node:
        node.output[:] = ["distance" if o == "heatmap" else o for o in node.output]
        node.input[:] = ["distance" if i == "heatmap" else i for i in node.input]
    for out in model.graph.output:
        if out.name == "heatmap":
            out.name = "distance"
    onnx.save(model, str(bundle.model_path))
    relist_hashes(bundle.path)
    with pytest.raises(BundleInputMismatchError, match=r"no output named 'heatmap'.*outputs: distance"):
        OnnxruntimeBackend(load_bundle(bundle.path), CONFIG)


def test_unloadable_model_is_an_inference_error(make_bundle: BundleFactory) -> None:
    bundle, _ = make_bundle()
    bundle.model_path.write_bytes(b"not an onnx model")
    relist_hashes(bundle.path)
    with pytest.raises(InferenceError, match="ONNX Runtime cannot load the model"):
        OnnxruntimeBackend(load_bundle(bundle.path), CONFIG)


def test_execution_providers_are_known_names_and_an_unavailable_one_is_logged(
    make_bundle: BundleFactory, caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(ValueError, match=r"unknown execution provider.*FooProvider; ONNX Runtime knows"):
        OnnxruntimeConfig(execution_providers=["FooProvider", "CPUExecutionProvider"])
    bundle, _ = make_bundle()
    # A GPU provider ONNX Runtime knows but this CPU build does not have (the test machines have no GPU).
    missing = next(p for p in ("CUDAExecutionProvider", "TensorrtExecutionProvider", "ROCMExecutionProvider")
                   if p not in ort.get_available_providers())
    with caplog.at_level(logging.WARNING, logger="linewatch.inference.onnxruntime"):
        backend = OnnxruntimeBackend(bundle, OnnxruntimeConfig(execution_providers=[missing,
                                                                                    "CPUExecutionProvider"]))
    assert backend.name == "onnxruntime (CPUExecutionProvider)"
    backend.close()
    logged = [r.getMessage() for r in caplog.records]
    assert f"execution provider(s) {missing} not available on this machine: running on CPUExecutionProvider" \
        in logged
    with pytest.raises(InferenceError, match=f"none of the configured execution providers \\({missing}\\)"):
        OnnxruntimeBackend(bundle, OnnxruntimeConfig(execution_providers=[missing]))


def test_thread_count_and_spinning_are_explicit_and_logged(
    make_bundle: BundleFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """Defaults for a 2-core line PC: an explicit thread count (0 would let ONNX Runtime pin threads to cores,
    which the systemd unit refuses) and no spinning (measured faster with `linewatch bench`)."""
    defaults = OnnxruntimeConfig()
    assert (defaults.intra_op_threads, defaults.allow_spinning) == (2, False)
    bundle, _ = make_bundle()
    with caplog.at_level(logging.INFO, logger="linewatch.inference.onnxruntime"):
        OnnxruntimeBackend(bundle, OnnxruntimeConfig(intra_op_threads=1, allow_spinning=True)).close()
        OnnxruntimeBackend(bundle, defaults).close()
    loaded = [r.getMessage() for r in caplog.records if "backend loaded" in r.getMessage()]
    assert "1 intra-op thread(s), spinning on" in loaded[0]
    assert "2 intra-op thread(s), spinning off" in loaded[1]

"""Backend selection with the real code paths of this machine (no TensorRT here, or no GPU)."""

from __future__ import annotations

import importlib.util

import pytest
from inference_support import BundleFactory, sample_images, tensorrt_unavailable_reason
from pydantic import ValidationError

from linewatch.errors import BackendUnavailableError
from linewatch.inference.onnxruntime import OnnxruntimeBackend, OnnxruntimeConfig
from linewatch.inference.selection import InferenceConfig, create_backend
from linewatch.inference.tensorrt import TensorrtConfig, load_runtime

HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None


def _tensorrt_unavailable_reason() -> str:
    with pytest.raises(BackendUnavailableError) as err:
        load_runtime()
    return str(err.value)


@pytest.mark.skipif(HAS_TENSORRT, reason="this machine has tensorrt installed")
def test_load_runtime_names_the_missing_package() -> None:
    expected = "tensorrt not installed (install the GPU extra: pip install 'linewatch[gpu]')"
    assert _tensorrt_unavailable_reason() == expected


def test_auto_falls_back_to_onnxruntime_and_says_why(make_bundle: BundleFactory) -> None:
    reason = tensorrt_unavailable_reason(
        "TensorRT and a GPU are usable here; auto picks TensorRT (tests/gpu covers it)"
    )
    bundle, _ = make_bundle()
    config = InferenceConfig(onnxruntime=OnnxruntimeConfig(intra_op_threads=1))
    backend, report = create_backend(config, bundle)
    assert isinstance(backend, OnnxruntimeBackend)
    prefix = "inference backend onnxruntime (CPUExecutionProvider) (auto; TensorRT not used: "
    assert report.startswith(prefix)
    assert reason in report
    if not HAS_TENSORRT:
        assert "tensorrt not installed" in report
    # the fallback backend really runs the bundle
    assert len(backend.infer(sample_images(1), want_heatmap=False)) == 1


def test_explicit_tensorrt_fails_clearly_without_fallback(make_bundle: BundleFactory) -> None:
    reason = tensorrt_unavailable_reason("TensorRT and a GPU are usable here")
    bundle, _ = make_bundle()
    with pytest.raises(BackendUnavailableError) as err:
        create_backend(InferenceConfig(backend="tensorrt"), bundle)
    assert str(err.value) == reason


def test_explicit_onnxruntime_is_used_as_configured(make_bundle: BundleFactory) -> None:
    bundle, _ = make_bundle()
    backend, report = create_backend(
        InferenceConfig(backend="onnxruntime", onnxruntime=OnnxruntimeConfig(intra_op_threads=1)), bundle
    )
    assert isinstance(backend, OnnxruntimeBackend)
    assert report == "inference backend onnxruntime (CPUExecutionProvider) (configured)"


def test_config_rejects_unknown_keys_and_backends_and_documents_every_field() -> None:
    with pytest.raises(ValidationError, match="backend"):
        InferenceConfig.model_validate({"backend": "cuda"})
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        InferenceConfig.model_validate({"tensorrt": {"precison": "fp16"}})
    with pytest.raises(ValidationError):
        InferenceConfig.model_validate({"onnxruntime": {"kind": "tensorrt"}})
    parsed = InferenceConfig.model_validate(
        {"backend": "tensorrt", "tensorrt": {"precision": "fp32", "cuda_graph": False, "max_batch": 4}}
    )
    assert parsed.tensorrt.precision == "fp32" and parsed.tensorrt.max_batch == 4
    for model in (InferenceConfig, OnnxruntimeConfig, TensorrtConfig):
        undocumented = [name for name, field in model.model_fields.items() if not field.description]
        assert undocumented == [], f"{model.__name__}: {undocumented}"

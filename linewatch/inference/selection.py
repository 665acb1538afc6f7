"""Which inference backend runs a bundle: the ``[inference]`` config section and ``create_backend``.

``backend = "auto"`` tries TensorRT (GPU) and falls back to ONNX Runtime, and the report says why (it goes to
the ``status`` topic and the log). An explicitly requested backend that cannot run is an error: no fallback,
so a GPU line that lost its GPU does not quietly run at CPU speed.
"""

from __future__ import annotations

import logging
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from linewatch.bundle.registry import LoadedBundle
from linewatch.errors import InferenceError
from linewatch.inference.backend import InferenceBackend
from linewatch.inference.onnxruntime import OnnxruntimeBackend, OnnxruntimeConfig
from linewatch.inference.tensorrt import TensorrtBackend, TensorrtConfig

log = logging.getLogger(__name__)

BackendChoice = Literal["auto", "onnxruntime", "tensorrt"]


class InferenceConfig(BaseModel):
    """``[inference]``: the backend choice plus each backend's own settings."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    backend: BackendChoice = Field(
        default="auto",
        description="auto: TensorRT when tensorrt, pycuda and a GPU are usable, else ONNX Runtime (the "
        "reason is reported); onnxruntime or tensorrt: only that one, failing clearly when it cannot run",
    )
    onnxruntime: OnnxruntimeConfig = Field(
        default_factory=OnnxruntimeConfig, description="ONNX Runtime settings (threads, providers)"
    )
    tensorrt: TensorrtConfig = Field(
        default_factory=TensorrtConfig, description="TensorRT settings (precision, CUDA graph, plan cache)"
    )


def create_backend(config: InferenceConfig, bundle: LoadedBundle) -> tuple[InferenceBackend, str]:
    """Load ``bundle`` on the configured backend; returns it with a one-line report of what was chosen and
    why. Call on the thread that will run inference (the TensorRT backend binds its CUDA context there).

    Raises BackendUnavailableError/InferenceError when an explicitly requested backend cannot run, and
    BundleError when the bundle itself is unusable (no backend could run it).
    """
    backend: InferenceBackend
    if config.backend == "onnxruntime":
        backend = OnnxruntimeBackend(bundle, config.onnxruntime)
        return backend, f"inference backend {backend.name} (configured)"
    if config.backend == "tensorrt":
        backend = TensorrtBackend(bundle, config.tensorrt)
        return backend, f"inference backend {backend.name} (configured): {backend.plan_note}"
    try:
        backend = TensorrtBackend(bundle, config.tensorrt)
    except InferenceError as exc:  # BackendUnavailableError, EngineIncompatibleError, build failures
        reason = str(exc)
        log.warning("backend auto: TensorRT not used (%s); falling back to ONNX Runtime", reason)
        backend = OnnxruntimeBackend(bundle, config.onnxruntime)
        return backend, f"inference backend {backend.name} (auto; TensorRT not used: {reason})"
    return backend, f"inference backend {backend.name} (auto): {backend.plan_note}"

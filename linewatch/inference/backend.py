"""The InferenceBackend protocol: a compiled model.onnx that turns preprocessed images into scores."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from linewatch.frames import InferenceOutput


@runtime_checkable
class InferenceBackend(Protocol):
    """Owns one compiled model (one ``backbone_id``) and the prototype tensors currently fed to it.

    Created, used and closed on one thread (the inference stage; on a GPU it owns the CUDA context).
    """

    @property
    def name(self) -> str:
        """``onnxruntime`` or ``tensorrt`` (plus detail such as the execution provider or precision)."""
        ...

    @property
    def backbone_id(self) -> str:
        """sha256 of the model.onnx it runs; products with the same id can share this backend."""
        ...

    def set_prototype(self, mean: npt.NDArray[np.float32], scale: npt.NDArray[np.float32]) -> None:
        """Replace the prototype tensors (1×h×H'×W'); takes effect from the next ``infer`` call."""
        ...

    def warmup(self) -> None:
        """Run the model until its first-call costs (allocation, kernel selection) are paid."""
        ...

    def infer(self, images: npt.NDArray[np.float32], want_heatmap: bool) -> list[InferenceOutput]:
        """N×1×H×W preprocessed images → one InferenceOutput each (heatmap only when asked)."""
        ...

    def close(self) -> None: ...

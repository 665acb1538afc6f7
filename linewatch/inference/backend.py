"""The InferenceBackend protocol: a compiled model.onnx that turns preprocessed images into scores.

Also what every backend checks against the bundle's manifest: the names of model.onnx's tensors (the
trainer's export writes them) and ``ModelShapes``, the shapes the manifest promises for them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from linewatch.bundle.manifest import BundleManifest, prototype_shapes
from linewatch.errors import BundleInputMismatchError, InferenceError
from linewatch.frames import InferenceOutput

# The tensors of a bundle's model.onnx.
IMAGE_INPUT = "image"
MEAN_INPUT = "prototype_mean"
SCALE_INPUT = "prototype_scale"
HEATMAP_OUTPUT = "heatmap"
SCORE_OUTPUT = "score"


@dataclass(frozen=True, slots=True)
class ModelShapes:
    """The tensor shapes a bundle's manifest promises (without the batch axis N of images and outputs)."""

    image: tuple[int, int, int]  # 1×H×W: one preprocessed grayscale image
    heatmap: tuple[int, int]  # H'×W': the distance map of one image
    # Prototype tensors: 1×h×H'×W' each (global, spatial); K×h×1×1 centres and a 1×h×1×1 scale (clusters).
    prototype_mean: tuple[int, int, int, int]
    prototype_scale: tuple[int, int, int, int]

    @classmethod
    def of(cls, manifest: BundleManifest) -> ModelShapes:
        scoring = manifest.scoring
        mean, scale = prototype_shapes(scoring)
        return cls(
            image=(1, manifest.input.height, manifest.input.width),
            heatmap=(scoring.heatmap_height, scoring.heatmap_width),
            prototype_mean=mean,
            prototype_scale=scale,
        )

    def check_prototype(self, mean: npt.NDArray[np.float32], scale: npt.NDArray[np.float32]) -> None:
        """BundleInputMismatchError unless both tensors have the model's prototype shapes."""
        for label, arr, shape in (("prototype mean", mean, self.prototype_mean),
                                  ("prototype scale", scale, self.prototype_scale)):
            if arr.shape != shape:
                raise BundleInputMismatchError(f"{label} has shape {arr.shape}, the model takes {shape}")

    def check_images(self, images: npt.NDArray[np.float32]) -> None:
        """InferenceError unless ``images`` is a batch of one or more N×1×H×W images."""
        if images.ndim != 4 or images.shape[1:] != self.image or images.shape[0] < 1:
            raise InferenceError(
                f"images have shape {images.shape}, the model takes N×{'×'.join(map(str, self.image))}"
            )


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
        """Replace the prototype tensors (``ModelShapes``); takes effect from the next ``infer`` call."""
        ...

    def warmup(self) -> None:
        """Run the model until its first-call costs (allocation, kernel selection) are paid."""
        ...

    def infer(self, images: npt.NDArray[np.float32], want_heatmap: bool) -> list[InferenceOutput]:
        """N×1×H×W preprocessed images → one InferenceOutput each (heatmap only when asked)."""
        ...

    def close(self) -> None: ...

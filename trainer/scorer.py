"""ONNX Runtime in the trainer: the bundle's model.onnx scores images exactly as the daemon's CPU backend
will, and a backbone-only graph extracts the feature maps a prototype is built from (ONNX Runtime is
2-3× faster than PyTorch on the CPU for this network).

The only trainer module that imports ``onnxruntime``; its exceptions become ``InferenceError`` here.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
import torch

from linewatch.errors import InferenceError
from linewatch.inference.backend import HEATMAP_OUTPUT, IMAGE_INPUT, MEAN_INPUT, SCALE_INPUT, SCORE_OUTPUT
from trainer.export import MEMBER_SCORES_OUTPUT, OPSET, PATH_SCORES_OUTPUT
from trainer.model import Backbone, FeatureNet


def make_session(model: bytes | Path, threads: int | None = None) -> ort.InferenceSession:
    """A CPU session; ``threads`` = intra-op threads (None: ONNX Runtime's default, one per core)."""
    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1  # the graph is a chain
    options.log_severity_level = 3
    # No CPU memory arena: a fit builds one session per calibration fold when the backbone has a context
    # member, and each arena's memory stayed with the process after its session was gone (KolektorSDD fit:
    # 2.15 GB peak with it, 1.15 GB without, equally fast: 161-165 s against 163 s).
    options.enable_cpu_mem_arena = False
    source = str(model) if isinstance(model, Path) else model
    try:
        return ort.InferenceSession(source, sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT's pybind11 classes (Fail, InvalidGraph, NoSuchFile, ...)
        where = model if isinstance(model, Path) else "model"
        raise InferenceError(f"{where}: ONNX Runtime cannot load it: {exc}") from exc


class OnnxruntimeScorer:
    """model.onnx + prototype tensors → (heatmaps N×H'×W', scores N) for preprocessed N×1×H×W batches."""

    def __init__(
        self,
        model: bytes | Path,
        prototype_mean: npt.NDArray[np.float32],
        prototype_scale: npt.NDArray[np.float32],
        threads: int | None = None,
    ) -> None:
        self._session = make_session(model, threads)
        self.use_prototype(prototype_mean, prototype_scale)

    def use_prototype(self, mean: npt.NDArray[np.float32], scale: npt.NDArray[np.float32]) -> None:
        """Score against other prototype tensors from now on (same shapes; they are graph inputs)."""
        self._mean = np.ascontiguousarray(mean, dtype=np.float32)
        self._scale = np.ascontiguousarray(scale, dtype=np.float32)

    def _feeds(self, images: npt.NDArray[np.float32]) -> dict[str, npt.NDArray[np.float32]]:
        return {
            IMAGE_INPUT: np.ascontiguousarray(images, dtype=np.float32),
            MEAN_INPUT: self._mean,
            SCALE_INPUT: self._scale,
        }

    def member_scores(self, images: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """N×M member scores, for a model exported with ``member_scores=True``."""
        return self._scores(MEMBER_SCORES_OUTPUT, images)

    def path_scores(self, images: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """N×P path scores, for a model exported with ``path_scores=True``."""
        return self._scores(PATH_SCORES_OUTPUT, images)

    def _scores(self, output: str, images: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        try:
            (scores,) = self._session.run([output], self._feeds(images))
        except Exception as exc:
            raise InferenceError(f"ONNX Runtime failed on a batch of shape {images.shape}: {exc}") from exc
        return np.asarray(scores, dtype=np.float32)

    def run(self, images: npt.NDArray[np.float32]) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        feeds = self._feeds(images)
        try:
            heatmap, score = self._session.run([HEATMAP_OUTPUT, SCORE_OUTPUT], feeds)
        except Exception as exc:
            raise InferenceError(f"ONNX Runtime failed on a batch of shape {images.shape}: {exc}") from exc
        return np.asarray(heatmap, dtype=np.float32), np.asarray(score, dtype=np.float32)


def export_features_onnx(backbone: FeatureNet | Backbone, height: int, width: int) -> bytes:
    """The backbone alone (input ``image``, output ``features`` N×h×H'×W'), same exporter settings as
    ``trainer.export.export_onnx``."""
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice
        torch.onnx.export(
            backbone.eval(),
            (torch.zeros(1, 1, height, width),),
            buffer,
            input_names=[IMAGE_INPUT],
            output_names=["features"],
            dynamic_axes={"image": {0: "batch"}, "features": {0: "batch"}},
            opset_version=OPSET,
            dynamo=False,
            do_constant_folding=True,
        )
    return buffer.getvalue()


class OnnxruntimeFeatures:
    """Feature maps of preprocessed batches through ONNX Runtime."""

    def __init__(
        self, backbone: FeatureNet | Backbone, height: int, width: int, threads: int | None = None
    ) -> None:
        self._session = make_session(export_features_onnx(backbone, height, width), threads)

    def run(self, images: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        try:
            (features,) = self._session.run(["features"], {"image": np.ascontiguousarray(images, np.float32)})
        except Exception as exc:
            raise InferenceError(f"ONNX Runtime failed on a batch of shape {images.shape}: {exc}") from exc
        return np.asarray(features, dtype=np.float32)

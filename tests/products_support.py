"""Helpers for the product-switching tests and benchmarks: small real bundles (an ONNX export of a seeded
FeatureNet written by the trainer's ``write_bundle_from_backbone``) whose products differ in prototype or in
backbone, the frames they inspect, and what ONNX Runtime scores those frames with for each bundle.

Importable from any test (tests/ is on sys.path) and from benchmarks (which put tests/ on it).
"""

from __future__ import annotations

import shutil
import threading
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch

from linewatch.bundle.manifest import MODEL_NAME, Calibration
from linewatch.bundle.registry import LoadedBundle, load_bundle
from linewatch.inference.backend import InferenceBackend
from linewatch.inference.onnxruntime import OnnxruntimeBackend, OnnxruntimeConfig
from linewatch.inference.preprocessing import preprocess
from trainer.fit import prototype_of, write_bundle_from_backbone
from trainer.model import FeatureNet

SIZE = 64


def frame_image(size: int = SIZE, seed: int = 0) -> npt.NDArray[np.uint8]:
    """A smooth gray texture (uint8), the same for a given seed."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    base = 128 + 50 * np.sin(xx / 5.0) * np.cos(yy / 7.0) + 6 * rng.standard_normal((size, size))
    return np.clip(base, 0, 255).astype(np.uint8)


def backbone(seed: int, h: int = 4) -> FeatureNet:
    torch.manual_seed(seed)
    return FeatureNet(h).eval()


def write_product(
    products_dir: Path,
    product_id: str,
    net: FeatureNet,
    *,
    offset: float = 0.0,
    size: int = SIZE,
    threshold: float | None = None,
    calibration: Calibration | None = None,
) -> LoadedBundle:
    """A bundle whose global prototype is the mean feature of ``frame_image`` plus ``offset`` (a larger offset
    gives every frame a larger score). The threshold defaults to halfway between the two products' scores in
    the tests (they only need to differ)."""
    torch.set_num_threads(1)
    image = frame_image(size)
    batch = (image.astype(np.float32) / 127.5 - 1.0)[None, None]
    prototype = prototype_of(net, batch)
    prototype = replace(prototype, mean=prototype.mean + np.float32(offset))
    path = write_bundle_from_backbone(
        products_dir / product_id, net, prototype, height=size, width=size,
        threshold=1.0 if threshold is None else threshold, calibration=calibration,
    )
    return load_bundle(path)


def expected_score(bundle: LoadedBundle, image: npt.NDArray[np.uint8]) -> float:
    """What ONNX Runtime scores ``image`` with for ``bundle`` (its own session, one thread)."""
    backend = OnnxruntimeBackend(bundle, OnnxruntimeConfig(intra_op_threads=1, warmup_runs=1))
    try:
        batch = preprocess(image, bundle.manifest.input, bundle.manifest.preprocessing)[np.newaxis]
        return backend.infer(batch, want_heatmap=False)[0].score
    finally:
        backend.close()


def corrupt_copy(products_dir: Path, source_id: str, product_id: str) -> Path:
    """A copy of a bundle under another id whose model.onnx has one byte flipped (hash mismatch)."""
    target = products_dir / product_id
    shutil.copytree(products_dir / source_id, target)
    manifest = (target / "bundle.json").read_text().replace(f'"{source_id}"', f'"{product_id}"')
    manifest = manifest.replace(f'"{source_id}@', f'"{product_id}@')
    (target / "bundle.json").write_text(manifest)
    data = bytearray((target / MODEL_NAME).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (target / MODEL_NAME).write_bytes(bytes(data))
    return target


class TrackedBackend(OnnxruntimeBackend):
    """The real ONNX Runtime backend, remembering whether it was closed and on which thread."""

    closed_on: str | None = None

    def close(self) -> None:
        self.closed_on = threading.current_thread().name
        super().close()


@dataclass
class RecordingFactory:
    """The daemon's backend factory (ONNX Runtime, one intra-op thread) that records which thread made each
    backend, so tests can prove preparation never ran on the inference thread."""

    threads: list[str]
    made: list[TrackedBackend]
    intra_op_threads: int = 1

    @classmethod
    def new(cls, intra_op_threads: int = 1) -> RecordingFactory:
        return cls(threads=[], made=[], intra_op_threads=intra_op_threads)

    def __call__(self, bundle: LoadedBundle) -> InferenceBackend:
        self.threads.append(threading.current_thread().name)
        config = OnnxruntimeConfig(intra_op_threads=self.intra_op_threads, warmup_runs=1)
        backend = TrackedBackend(bundle, config)
        self.made.append(backend)
        return backend

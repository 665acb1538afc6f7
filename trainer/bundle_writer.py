"""Write a product bundle directory from a backbone and prototype tensors (model.onnx, prototype.npz,
bundle.json with every file's sha256).

``trainer fit`` is the normal way to make a bundle; this is the layer underneath it that only serialises,
used where the prototype comes from elsewhere (backend tests and benchmarks with a freshly initialised
backbone, where throughput and parity do not depend on the weights).
"""

from __future__ import annotations

import datetime as dt
import hashlib
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch

from linewatch.bundle.manifest import (
    MODEL_NAME,
    PROTOTYPE_NAME,
    SCHEMA_VERSION,
    BundleManifest,
    Calibration,
    InputSpec,
    Preprocessing,
    Provenance,
    ScoringSpec,
)
from linewatch.bundle.registry import hash_files, validate_product_id, write_manifest
from trainer.export import export_onnx
from trainer.model import RECEPTIVE_FIELD, STRIDE, FeatureNet, feature_map_size


def backbone_sha256(backbone: FeatureNet) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(backbone.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def global_prototype(
    backbone: FeatureNet, images: npt.NDArray[np.float32]
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """Mean feature vector over ``images`` (N×1×H×W, preprocessed), broadcast to 1×h×H'×W'; scale ones."""
    with torch.no_grad():
        feats = backbone.eval()(torch.from_numpy(images)).numpy()
    mean = feats.mean(axis=(0, 2, 3), keepdims=True)
    shape = (1, feats.shape[1], feats.shape[2], feats.shape[3])
    return (
        np.ascontiguousarray(np.broadcast_to(mean, shape), dtype=np.float32),
        np.ones(shape, dtype=np.float32),
    )


def write_bundle(
    out_dir: Path,
    backbone: FeatureNet,
    *,
    height: int,
    width: int,
    prototype_mean: npt.NDArray[np.float32],
    prototype_scale: npt.NDArray[np.float32],
    threshold: float,
    distance: str = "l2",
    pooling: int = 1,
    prototype_mode: str = "global",
    calibration: Calibration | None = None,
    provenance: Provenance | None = None,
) -> Path:
    """Create ``out_dir`` (its name is the product id) holding a complete, hash-listed bundle."""
    product_id = validate_product_id(out_dir.name)
    out_dir.mkdir(parents=True, exist_ok=True)
    export_onnx(backbone, height, width, distance=distance, pooling=pooling, out=out_dir / MODEL_NAME)
    np.savez(out_dir / PROTOTYPE_NAME, mean=prototype_mean.astype(np.float32),
             scale=prototype_scale.astype(np.float32))
    files = hash_files(out_dir)
    model_sha = files[MODEL_NAME]
    ident = hashlib.sha256((model_sha + files[PROTOTYPE_NAME]).encode()).hexdigest()[:12]
    manifest = BundleManifest(
        schema_version=SCHEMA_VERSION,
        product_id=product_id,
        bundle_id=f"{product_id}@{ident}",
        input=InputSpec(height=height, width=width),
        preprocessing=Preprocessing(),
        scoring=ScoringSpec(
            feature_dim=backbone.h,
            heatmap_height=feature_map_size(height),
            heatmap_width=feature_map_size(width),
            stride=STRIDE,
            receptive_field=RECEPTIVE_FIELD,
            prototype_mode=prototype_mode,  # type: ignore[arg-type]
            distance=distance,  # type: ignore[arg-type]
            standardised=bool(np.any(prototype_scale != 1.0)),
            pooling=pooling,
        ),
        threshold=threshold,
        calibration=calibration
        or Calibration(method="fixed", target_frr=0.0, n_images=0, threshold=threshold),
        provenance=provenance
        or Provenance(
            backbone="in-memory FeatureNet",
            backbone_sha256=backbone_sha256(backbone),
            trainer_version="0.1.0",
            good_images="",
            n_prototype_images=0,
            seed=0,
            created_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        ),
        backbone_id=model_sha,
        files=files,
    )
    write_manifest(out_dir, manifest)
    return out_dir

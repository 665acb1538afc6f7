"""``trainer build-engine``: compile a bundle's model.onnx to a TensorRT plan stored in the bundle.

    trainer build-engine --bundle DIR [--precision fp32|fp16] [--max-batch N] [--timing-cache PATH]
                         [--images DIR] [--parity-images N]

1. Verify the bundle with the daemon's loader.
2. fp16: convert model.onnx to mixed precision (``trainer.precision``: fp16 backbone, fp32 head and I/O) and
   build it strongly typed; this works on TensorRT 10 and 11 (11 has no FP16 builder flag).
3. Build with an optimisation profile for batch 1..max-batch and a persisted timing cache, plus an on-device
   ``argmax`` output (``linewatch.inference.tensorrt.build_plan``).
4. Parity: ONNX Runtime (fp32 model.onnx) against the new plan on real images (the bundle's good images
   unless --images), scores and heatmaps. Tolerances (absolute, scaled by max(1, largest ONNX score)):
   fp32 1e-3, fp16 1e-2 (fp16 keeps ~3 significant digits; the fp32 head keeps distances from overflowing).
   A plan outside the tolerance is not stored.
5. Store ``engines/<gpu>_sm<cc>_trt<version>_<precision>_b<max>.plan``, its sha256 in ``files`` and an
   ``engines`` entry with the parity numbers in bundle.json.

The plan runs only on this GPU model with this TensorRT version; the daemon picks it by that key.
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

from linewatch.bundle.manifest import EnginePlan
from linewatch.bundle.registry import LoadedBundle, load_bundle, sha256_file, write_manifest
from linewatch.errors import InferenceError, LinewatchError
from linewatch.inference.engine_keys import Precision, plan_file
from linewatch.inference.onnxruntime import OnnxruntimeBackend, OnnxruntimeConfig
from linewatch.inference.preprocessing import preprocess
from linewatch.inference.tensorrt import (
    TensorrtBackend,
    TensorrtConfig,
    build_plan,
    default_cache_dir,
    load_runtime,
)
from trainer.precision import convert_to_fp16

log = logging.getLogger(__name__)

TOLERANCE: dict[str, float] = {"fp32": 1e-3, "fp16": 1e-2}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".pgm"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bundle", type=Path, required=True, help="bundle directory (contains bundle.json)")
    parser.add_argument("--precision", choices=["fp32", "fp16"], default="fp16",
                        help="fp16: mixed precision (fp16 backbone, fp32 distances); default fp16")
    parser.add_argument("--max-batch", type=int, default=8, help="largest batch of the optimisation profile")
    parser.add_argument("--opt-batch", type=int, default=1,
                        help="batch size TensorRT tunes kernels for (the daemon infers one frame at a time)")
    parser.add_argument("--timing-cache", type=Path, default=None,
                        help="TensorRT timing cache file, read and updated (default: the engine cache dir)")
    parser.add_argument("--images", type=Path, default=None,
                        help="images for the ONNX-vs-TensorRT parity check (default: bundle's good images)")
    parser.add_argument("--parity-images", type=int, default=16, help="how many images the parity check uses")
    parser.add_argument("--workspace-mib", type=int, default=1024, help="builder workspace limit in MiB")
    parser.add_argument("--device", type=int, default=0, help="CUDA device ordinal")


@dataclass(frozen=True, slots=True)
class Parity:
    score_max_abs: float
    heatmap_max_abs: float
    argmax_agree: float
    tolerance: float
    n_images: int

    @property
    def passed(self) -> bool:
        return self.score_max_abs <= self.tolerance and self.heatmap_max_abs <= self.tolerance

    def as_dict(self) -> dict[str, float]:
        return {
            "score_max_abs": self.score_max_abs, "heatmap_max_abs": self.heatmap_max_abs,
            "argmax_agree": self.argmax_agree, "tolerance": self.tolerance, "n_images": float(self.n_images),
            "passed": 1.0 if self.passed else 0.0,
        }


def parity_images(bundle: LoadedBundle, directory: Path | None, limit: int) -> npt.NDArray[np.float32]:
    """Up to ``limit`` real images, preprocessed exactly as the daemon does."""
    source = directory or Path(bundle.manifest.provenance.good_images)
    if not str(source) or not source.is_dir():
        raise InferenceError(
            f"parity check needs real images: {str(source) or '(none recorded)'} is not a directory; "
            "pass --images DIR"
        )
    files = sorted(p for p in source.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)[:limit]
    images = []
    for file in files:
        image = cv2.imread(str(file), cv2.IMREAD_UNCHANGED)
        if image is None:
            raise InferenceError(f"{file}: unreadable image")
        images.append(preprocess(image, bundle.manifest.input, bundle.manifest.preprocessing))
    if not images:
        kinds = ", ".join(sorted(IMAGE_SUFFIXES))
        raise InferenceError(f"no images ({kinds}) under {source}; pass --images DIR")
    return np.stack(images).astype(np.float32)


def compare(reference: OnnxruntimeBackend, candidate: TensorrtBackend, images: npt.NDArray[np.float32],
            precision: Precision) -> Parity:
    ref = reference.infer(images, want_heatmap=True)
    got = candidate.infer(images, want_heatmap=True)
    ref_scores = np.array([o.score for o in ref])
    score_diff = float(np.max(np.abs(ref_scores - np.array([o.score for o in got]))))
    heat_diff = max(float(np.max(np.abs(r.heatmap - g.heatmap)))  # type: ignore[operator]
                    for r, g in zip(ref, got, strict=True))
    agree = float(np.mean([r.argmax_rc == g.argmax_rc for r, g in zip(ref, got, strict=True)]))
    tolerance = TOLERANCE[precision] * max(1.0, float(np.max(np.abs(ref_scores))))
    return Parity(score_diff, heat_diff, agree, tolerance, len(images))


def build_engine(
    bundle_dir: Path, precision: Precision, max_batch: int, timing_cache: Path | None,
    images_dir: Path | None = None, n_images: int = 16, workspace_mib: int = 1024, device_index: int = 0,
    opt_batch: int = 1,
) -> tuple[EnginePlan, Parity]:
    """Build, check and store a plan; returns its manifest entry and the parity result."""
    bundle = load_bundle(bundle_dir)
    load_runtime()  # fail early and plainly on a machine without TensorRT / GPU
    images = parity_images(bundle, images_dir, n_images)
    onnx_bytes = bundle.model_path.read_bytes()
    fp16_mode = "none"
    if precision == "fp16":
        onnx_bytes, fp16_mode = convert_to_fp16(onnx_bytes), "strongly_typed"
    cache = timing_cache or default_cache_dir() / "timing.cache"
    built = build_plan(
        onnx_bytes, height=bundle.manifest.input.height, width=bundle.manifest.input.width,
        max_batch=max_batch, fp16_mode=fp16_mode, timing_cache=cache, workspace_mib=workspace_mib,
        device_index=device_index, opt_batch=opt_batch,
    )
    rel = plan_file(built.device, precision, max_batch)
    staged = bundle.path / (rel + ".new")
    staged.parent.mkdir(parents=True, exist_ok=True)
    staged.write_bytes(built.plan)
    try:
        reference = OnnxruntimeBackend(bundle, OnnxruntimeConfig())
        candidate = TensorrtBackend(
            bundle, TensorrtConfig(precision=precision, device_index=device_index, cuda_graph=False),
            plan_file=staged,
        )
        try:
            parity = compare(reference, candidate, images, precision)
        finally:
            candidate.close()
            reference.close()
        if not parity.passed:
            raise InferenceError(
                f"parity check failed on {parity.n_images} images: score max abs diff "
                f"{parity.score_max_abs:.3g}, heatmap {parity.heatmap_max_abs:.3g}, tolerance "
                f"{parity.tolerance:.3g} ({precision}); the plan was not stored"
            )
        staged.replace(bundle.path / rel)
    finally:
        staged.unlink(missing_ok=True)
    entry = EnginePlan(
        file=rel, gpu_name=built.device.gpu_name, compute_capability=built.device.compute_capability,
        tensorrt_version=built.device.tensorrt_version, precision=precision, max_batch=max_batch,
        parity=parity.as_dict(),
    )
    manifest = bundle.manifest
    files = dict(manifest.files)
    files[rel] = sha256_file(bundle.path / rel)
    engines = [e for e in manifest.engines if e.file != rel] + [entry]
    write_manifest(bundle.path, manifest.model_copy(update={"files": files, "engines": engines}))
    log.info("stored %s (built in %.1f s)", rel, built.build_s)
    return entry, parity


def run(args: argparse.Namespace) -> int:
    if args.max_batch < 1 or args.parity_images < 1:
        print("trainer build-engine: --max-batch and --parity-images must be at least 1", file=sys.stderr)
        return 2
    try:
        entry, parity = build_engine(
            args.bundle, args.precision, args.max_batch, args.timing_cache, args.images, args.parity_images,
            args.workspace_mib, args.device, args.opt_batch,
        )
    except LinewatchError as exc:  # BackendUnavailableError on a CPU machine, bundle and build errors
        print(f"trainer build-engine: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    print(f"{entry.file}: {entry.gpu_name} sm{entry.compute_capability} TensorRT {entry.tensorrt_version} "
          f"{entry.precision} batch 1..{entry.max_batch}")
    print(f"parity vs ONNX Runtime on {parity.n_images} images: "
          f"score max abs diff {parity.score_max_abs:.2e}, heatmap {parity.heatmap_max_abs:.2e} "
          f"(tolerance {parity.tolerance:.1e}), "
          f"argmax agreement {parity.argmax_agree:.0%}")
    return 0

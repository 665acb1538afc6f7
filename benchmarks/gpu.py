"""GPU benchmark: TensorRT fp32/fp16 engines at 512×512 for h = 16/32 — build, parity against ONNX Runtime,
backend throughput and latency (p50/p99) at batch 1/8, the share of a frame spent outside the engine, and
whole-pipeline throughput with the synthetic camera.

    .venv/bin/python benchmarks/gpu.py [--seconds S] [--pipeline-seconds S] [--out DIR]

Run by ``scripts/gpu-check`` on a machine with an NVIDIA GPU, TensorRT and pycuda; on other machines it
prints why it cannot run and exits 2. Weights are freshly initialised (speed does not depend on them); the
parity check uses KolektorSDD good images when ``../shared/data`` is present, else synthetic-camera frames.

Targets (issue 7, data-centre GPU): ≥ 1000 frames/s at 512×512 fp16 h=32 batch 1, p99 < 2 ms; the whole
pipeline limited by the camera, not by linewatch.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from backend import SIZE, make_bundle  # noqa: E402  (benchmarks/backend.py: same random 512×512 bundles)

from linewatch.bundle.registry import LoadedBundle, load_bundle  # noqa: E402
from linewatch.errors import BackendUnavailableError  # noqa: E402
from linewatch.inference.tensorrt import TensorrtBackend, TensorrtConfig, load_runtime  # noqa: E402
from trainer.engine import build_engine  # noqa: E402

KOLEKTOR_GOOD = REPO.parent / "shared" / "data" / "kolektorsdd" / "train" / "good"


def parity_image_dir(root: Path) -> tuple[Path, str]:
    if KOLEKTOR_GOOD.is_dir() and any(KOLEKTOR_GOOD.iterdir()):
        return KOLEKTOR_GOOD, "KolektorSDD train/good"
    from linewatch.acquisition.synthetic import SyntheticCameraConfig, SyntheticSource

    out = root / "parity-images"
    out.mkdir()
    source = SyntheticSource(SyntheticCameraConfig(width=SIZE, height=SIZE, rate_hz=None, defect_rate=0.5))
    for i in range(16):
        image, _ = source.render(i)
        cv2.imwrite(str(out / f"{i:03d}.png"), image)
    return out, "synthetic camera frames"


def time_backend(backend: TensorrtBackend, batch: int, seconds: float) -> dict[str, float]:
    rng = np.random.default_rng(batch)
    images = rng.uniform(-1, 1, (batch, 1, SIZE, SIZE)).astype(np.float32)
    for _ in range(5):  # plain enqueue, CUDA graph capture, replays
        backend.infer(images, want_heatmap=False)
    latencies = []
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        t0 = time.perf_counter()
        backend.infer(images, want_heatmap=False)
        latencies.append(time.perf_counter() - t0)
    total = time.perf_counter() - start
    lat_ms = np.array(latencies) * 1e3
    engine_ms = np.array(backend.measure_engine_ms(batch, 200))
    p50 = float(np.percentile(lat_ms, 50))
    return {
        "fps": batch * len(latencies) / total,
        "p50": p50,
        "p99": float(np.percentile(lat_ms, 99)),
        "engine_p50": float(np.percentile(engine_ms, 50)),
        "outside": max(0.0, 1.0 - float(np.percentile(engine_ms, 50)) / p50),
    }


# ----------------------------------------------------------------------------------------------------
# Whole pipeline (kept apart: it uses the pipeline engineer's public API, linewatch.pipeline.Pipeline with
# the synthetic camera; `linewatch bench` will report the same once it exists).


class _CountingSink:
    """ResultSink that only counts (no broker: this measures linewatch, not MQTT)."""

    def __init__(self) -> None:
        self.results = 0
        self.lock = threading.Lock()

    def heatmap_wanted(self, verdict: object) -> bool:
        return False

    def publish_result(self, verdict: object) -> None:
        with self.lock:
            self.results += 1

    def publish_heatmap(self, seq: int, png: bytes) -> None:
        pass


def camera_rate(seconds: float) -> float:
    """Frames/s the synthetic camera renders on its own (the upper bound of the pipeline here)."""
    from linewatch.acquisition.synthetic import SyntheticCameraConfig, SyntheticSource

    source = SyntheticSource(SyntheticCameraConfig(width=SIZE, height=SIZE, rate_hz=None))
    source.open()
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        source.read(1.0)
        n += 1
    source.close()
    return n / (time.perf_counter() - start)


def whole_pipeline(bundle: LoadedBundle, config: TensorrtConfig, seconds: float) -> dict[str, float]:
    from linewatch.acquisition.synthetic import SyntheticCameraConfig, SyntheticSource
    from linewatch.pipeline.pipeline import Pipeline

    engine_ms: list[float] = []

    def factory(b: LoadedBundle) -> TensorrtBackend:
        backend = TensorrtBackend(b, config)
        engine_ms.extend(backend.measure_engine_ms(1, 100))
        return backend

    source = SyntheticSource(SyntheticCameraConfig(width=SIZE, height=SIZE, rate_hz=None))
    pipeline = Pipeline(source, factory, _CountingSink(), bundle=bundle, heatmaps=False)
    pipeline.start()
    time.sleep(1.0)  # past start-up
    first = pipeline.snapshot()
    time.sleep(seconds)
    last = pipeline.snapshot()
    pipeline.stop()
    elapsed = (last.taken_ns - first.taken_ns) / 1e9
    fps = (last.frames_out - first.frames_out) / elapsed
    total = last.latency["total"]
    return {
        "fps": fps,
        "p50": total.p50_ms or float("nan"),
        "p99": total.p99_ms or float("nan"),
        "outside": 1.0 - float(np.median(engine_ms)) * fps / 1e3,
        "dropped": float(last.dropped),
    }


# ----------------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="measuring time per backend configuration")
    parser.add_argument("--pipeline-seconds", type=float, default=8.0, help="measuring time of the pipeline")
    parser.add_argument("--out", type=Path, default=None, help="keep bundles, plans and caches here")
    args = parser.parse_args()
    try:
        runtime = load_runtime()
    except BackendUnavailableError as exc:
        print(f"benchmarks/gpu.py: cannot run here: {exc}", file=sys.stderr)
        return 2
    import torch

    torch.set_num_threads(1)
    from linewatch.inference.tensorrt import device_key

    device = device_key(runtime, 0)
    print(f"GPU {device.gpu_name} (sm {device.compute_capability}), TensorRT {device.tensorrt_version}, "
          f"{SIZE}×{SIZE}")
    with tempfile.TemporaryDirectory() as tmp:
        root = args.out or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        images_dir, images_what = parity_image_dir(root)
        bundles: dict[int, LoadedBundle] = {}
        print(f"\nEngine builds (max batch 8, timing cache) and parity vs ONNX Runtime on 16 {images_what}")
        header = ("h", "prec", "build s", "score Δ", "heatmap Δ", "tol", "argmax=")
        print("{:>3} {:>5} {:>8} {:>9} {:>10} {:>8} {:>8}".format(*header))
        for h in (16, 32):
            path = make_bundle(root, str(h), h)
            for precision in ("fp32", "fp16"):
                start = time.perf_counter()
                _, parity = build_engine(path, precision, max_batch=8, timing_cache=root / "timing.cache",
                                         images_dir=images_dir, n_images=16)
                build_s = time.perf_counter() - start
                print(f"{h:>3} {precision:>5} {build_s:>8.1f} {parity.score_max_abs:>9.2e} "
                      f"{parity.heatmap_max_abs:>10.2e} {parity.tolerance:>8.1e} {parity.argmax_agree:>8.0%}")
            bundles[h] = load_bundle(path)

        print("\nBackend (TensorRT, CUDA graph on; latency = infer() wall time incl. copies; outside = share "
              "of it not spent in the engine)")
        header = ("h", "prec", "batch", "frames/s", "p50 ms", "p99 ms", "engine ms", "outside")
        print("{:>3} {:>5} {:>5} {:>9} {:>8} {:>8} {:>9} {:>8}".format(*header))
        for h in (16, 32):
            for precision in ("fp32", "fp16"):
                config = TensorrtConfig(
                    precision=precision, cache_dir=root / "cache", build_if_missing=False  # type: ignore[arg-type]
                )
                backend = TensorrtBackend(bundles[h], config)
                for batch in (1, 8):
                    r = time_backend(backend, batch, args.seconds)
                    print(f"{h:>3} {precision:>5} {batch:>5} {r['fps']:>9.0f} {r['p50']:>8.3f} "
                          f"{r['p99']:>8.3f} {r['engine_p50']:>9.3f} {r['outside']:>8.0%}")
                backend.close()

        print("\nWhole pipeline (synthetic camera 512×512 unpaced → TensorRT fp16 h=32 → scoring → counting "
              "sink, no broker)")
        try:
            cam = camera_rate(2.0)
            r = whole_pipeline(
                bundles[32],
                TensorrtConfig(precision="fp16", cache_dir=root / "cache", build_if_missing=False),
                args.pipeline_seconds,
            )
        except Exception as exc:  # the pipeline API is another engineer's; report rather than hide the tables
            print(f"pipeline run failed: {type(exc).__name__}: {exc}")
            return 1
        print(f"{'camera fps':>11} {'pipeline fps':>13} {'ratio':>6} {'p50 ms':>8} {'p99 ms':>8} "
              f"{'outside engine':>15} {'dropped':>8}")
        print(f"{cam:>11.0f} {r['fps']:>13.0f} {r['fps'] / cam:>6.2f} {r['p50']:>8.2f} {r['p99']:>8.2f} "
              f"{r['outside']:>15.0%} {r['dropped']:>8.0f}")
        print("(ratio ≈ 1: the pipeline keeps up with the camera; outside engine = share of wall time per "
              "frame the GPU engine is not running)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

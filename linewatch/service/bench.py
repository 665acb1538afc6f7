"""``linewatch bench``: what the inference backend can do alone, what the whole pipeline makes of it.

Measured in one run, on this machine, and printed as one table:

1. a float32 matrix-multiply roofline (numpy/BLAS on every core): the GFLOP/s this CPU reaches on the
   friendliest possible kernel;
2. the bare backend: batch-1 ``infer`` on preprocessed frames, frames/s and latency percentiles, and the
   GFLOP/s that means for the bundle's network (counted from its architecture, DESIGN 2.2);
3. the whole pipeline — memory camera → queue → preprocess + inference → scoring (heatmaps for fails) →
   journal + MQTT (QoS 1) to a private mosquitto — saturated (the camera as fast as the pipeline takes
   frames): throughput, and its ratio to the bare backend;
4. the same pipeline paced at 70 % of the backend's rate, as a line runs (headroom, as a line is sized):
   acquire→publish latency p50/p99.

Without ``--bundle`` it builds the demo product at 512×512 with the shipped trained network alone (h=16, the
model the targets are stated for; ``trainer fit`` in this process, the pipeline itself never imports torch).
The default fit's stacked pair costs twice the network (benchmarks/backend.py); ``--bundle`` measures it.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from linewatch.acquisition import SyntheticCameraConfig, SyntheticSource
from linewatch.acquisition.pacing import RatePacer
from linewatch.bundle.manifest import DARK_PATH_BLOCK, BundleManifest
from linewatch.bundle.registry import LoadedBundle, load_bundle
from linewatch.errors import LinewatchError, SourceExhaustedError
from linewatch.frames import Capture
from linewatch.inference.backend import InferenceBackend
from linewatch.inference.preprocessing import preprocess
from linewatch.inference.selection import InferenceConfig, create_backend
from linewatch.pipeline.pipeline import Pipeline
from linewatch.publish.journal import Journal, JournalConfig
from linewatch.publish.mqtt import MqttConfig, MqttPublisher
from linewatch.service.logging_setup import setup_logging
from linewatch.service.mosquitto import PrivateMosquitto

TARGET_BACKEND_FPS = 25.0
TARGET_RATIO = 0.95
TARGET_P99_OVER_P50 = 2.0
WARMUP_FRAMES = 20
PACED_FRACTION = 0.7


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bundle", type=Path, help="bundle directory (default: build the demo bundle)")
    parser.add_argument("--backend", choices=("auto", "onnxruntime", "tensorrt"), default="auto",
                        help="inference backend (default auto)")
    parser.add_argument("--threads", type=int, default=None,
                        help="ONNX Runtime intra-op threads (default: the config's default, "
                        "[inference.onnxruntime] intra_op_threads)")
    parser.add_argument("--spinning", choices=("on", "off"), default=None,
                        help="ONNX Runtime intra-op spinning (default: the config's default, "
                        "[inference.onnxruntime] allow_spinning)")
    parser.add_argument("--frames", type=int, default=100,
                        help="frames per bare-backend run (default 100; it runs rounds + 1 times)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="saturated pipeline runs, each between two bare-backend runs (default 3)")
    parser.add_argument("--seconds", type=float, default=15.0,
                        help="seconds of saturated pipeline (split over the rounds) and of the paced run "
                        "(default 15)")
    parser.add_argument("--json", type=Path, help="also write the numbers to this JSON file")


# ---------------------------------------------------------------------------------------------- sources


class MemorySource:
    """A FrameSource replaying images held in memory, optionally paced: the camera costs nothing, so the
    benchmark measures the pipeline, not image decoding."""

    def __init__(self, images: list[npt.NDArray[np.uint8]], rate_hz: float | None = None,
                 frame_count: int | None = None) -> None:
        self.images = images
        self.frame_count = frame_count
        self._pacer = RatePacer(rate_hz)
        self._next = 0
        self._open = False

    @property
    def name(self) -> str:
        return f"memory:{len(self.images)} images"

    def open(self) -> None:
        self._open = True
        self._pacer.restart()

    def read(self, timeout_s: float) -> Capture:
        if self.frame_count is not None and self._next >= self.frame_count:
            raise SourceExhaustedError(f"{self.name}: {self.frame_count} frames delivered")
        self._pacer.wait(timeout_s)
        frame_id = self._next
        self._next += 1
        now = time.monotonic_ns()
        image = self.images[frame_id % len(self.images)]
        return Capture(image=image.copy(), frame_id=frame_id, timestamp_ns=now, acquired_ns=now)

    def close(self) -> None:
        self._open = False


# ---------------------------------------------------------------------------------------------- numbers


def matmul_roofline_gflops(n: int = 1024, repeats: int = 5) -> float:
    """Best float32 GEMM rate numpy's BLAS reaches here (2·n³ flops per product)."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    a @ b  # warm-up: thread pool, page faults
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2.0 * n**3 / best / 1e9


def model_gflop(manifest: BundleManifest) -> float:
    """Multiply-adds ×2 of the network of DESIGN 2.2 on one input, and of the nearest-centre search of a
    clusters head (K × (channels + 1) per member and cell: a quarter of one h=16 network at K=256; the other
    heads are a few operations per channel and cell).

    Conv 7×7 (1→h) → pool 2×2 → 3 × [Conv 5×5 (h→h) + Conv 1×1 (h→h)] (each block crops 2 px per side)
    → Conv 1×1 (h→h); no padding anywhere. A stack of M members is M such networks of width h/M side by
    side (grouped convolutions): the h×h layers cost M·(h/M)² = h²/M. A line bank (trainer/linebank.py)
    adds, per scale, one k×k convolution per orientation for every cell of the map, a whitened member
    (trainer/whitened.py) one k×k convolution per filter for every cell, an extremes member
    (trainer/extremes.py) three operations per input pixel and a max over each cell's footprint (its dark
    path: per 4×4 block of pixels and step of the path, a 3-block max and a min per cone and direction); a
    context member (trainer/context.py) a small network per radius and cell.
    """
    scoring = manifest.scoring
    h, height, width = scoring.network_dim, manifest.input.height, manifest.input.width
    square = h * h / scoring.members  # weights per position of an h→h layer, all members together
    flops = 2.0 * 49 * h * (height - 6) * (width - 6)
    rows, cols = (height - 6) // 2, (width - 6) // 2
    for _ in range(3):
        rows, cols = rows - 4, cols - 4
        flops += 2.0 * (25 * square + square) * rows * cols
    flops += 2.0 * square * rows * cols
    cells = scoring.heatmap_height * scoring.heatmap_width
    if scoring.line_bank is not None:
        for across, elongation in scoring.line_bank.scales:
            # the kernel radius trainer/linebank.py gives the half-resolution filters (3 σ along the line)
            side = 2 * max(1, math.ceil(3.0 * max(across, across * elongation) / 2)) + 1
            flops += 2.0 * scoring.line_bank.orientations * side * side * cells
    if scoring.whitened is not None:
        # each filter is one k×k convolution of the 2×2-pooled image, evaluated at every cell
        side = scoring.whitened.kernel_size
        flops += 2.0 * scoring.whitened.filters * side * side * cells
    if scoring.extremes is not None:
        # |x − mean| × 1/spread per pixel, then the window² comparisons of each cell's max (alone: the dark
        # excursions' max too, and its ReLU; bright: the bright excursions' too)
        pools = 1 + int(scoring.extremes.alone) + int(scoring.extremes.bright)
        flops += 3.0 * height * width + (pools * float(scoring.extremes.window) ** 2 + pools - 1) * cells
        if scoring.extremes.dark_path:
            # each pixel into its block's max; then 2 cones × 2 directions × h steps of a 3-block max (2
            # comparisons) and a min per block; the directions' min, the cones' max, the cells'
            blocks = math.ceil(height / DARK_PATH_BLOCK) * math.ceil(width / DARK_PATH_BLOCK)
            flops += height * width + (4 * scoring.extremes.dark_path_steps * 3 + 3) * blocks + 4 * cells
    if scoring.context is not None:
        # Per radius and cell its network (1 + 4·angles → hidden → hidden → 2), and per pixel the separable
        # blurs (σ 1, the radii and their halves, of the image and of its detail): at 512×512 the
        # network is ~93 %.
        ctx = scoring.context
        per_cell = (1 + 4 * ctx.angles) * ctx.hidden + ctx.hidden * ctx.hidden + 2 * ctx.hidden
        flops += 2.0 * len(ctx.radii) * per_cell * cells
        sigmas = {1.0, *ctx.radii, *(max(r / 2, 1.0) for r in ctx.radii)}
        taps = sum(2 * max(1, math.ceil(3.0 * s)) + 1 for s in sigmas)
        flops += 2.0 * 2 * 2 * taps * height * width  # two passes each, the image and its detail
    if scoring.prototype_mode == "clusters":
        flops += sum(2.0 * scoring.clusters * (dim + 1) * cells for dim in scoring.member_dims)
    return flops / 1e9


def percentiles(values_ms: list[float]) -> tuple[float, float]:
    p50, p99 = np.percentile(np.asarray(values_ms), [50, 99])
    return float(p50), float(p99)


@dataclass
class Row:
    name: str
    short: str
    fps: float
    p50_ms: float | None
    p99_ms: float | None
    frames: int


def bench_backend(backend: InferenceBackend, batch: list[npt.NDArray[np.float32]], frames: int) -> Row:
    for x in batch[:5]:
        backend.infer(x[np.newaxis], want_heatmap=True)
    times: list[float] = []
    start = time.perf_counter()
    for i in range(frames):
        t = time.perf_counter()
        backend.infer(batch[i % len(batch)][np.newaxis], want_heatmap=True)
        times.append((time.perf_counter() - t) * 1e3)
    total = time.perf_counter() - start
    p50, p99 = percentiles(times)
    return Row("backend (bare infer, batch 1)", "backend", frames / total, p50, p99, frames)



def median_row(name: str, rows: list[Row]) -> Row:
    """Several runs of one measurement as one row: median rate and percentiles, frames summed."""
    def median(values: list[float | None]) -> float | None:
        clean = [v for v in values if v is not None]
        return float(np.median(clean)) if clean else None

    fps = float(np.median([r.fps for r in rows]))
    p50, p99 = median([r.p50_ms for r in rows]), median([r.p99_ms for r in rows])
    return Row(name, rows[0].short, fps, p50, p99, sum(r.frames for r in rows))


def bench_pipeline(
    name: str,
    short: str,
    bundle: LoadedBundle,
    images: list[npt.NDArray[np.uint8]],
    make_backend: Any,
    broker_port: int,
    state_dir: Path,
    seconds: float,
    rate_hz: float | None,
) -> Row:
    journal = Journal(JournalConfig(state_dir=state_dir))
    publisher = MqttPublisher(MqttConfig(host="127.0.0.1", port=broker_port), "bench", journal)
    publisher.start()
    source = MemorySource(images, rate_hz=rate_hz)
    pipeline = Pipeline(source, make_backend, publisher, bundle=bundle, queue_size=8, overflow="block",
                        read_timeout_s=1.0, image_store=journal)
    try:
        deadline = time.monotonic() + 30
        while not publisher.connected:
            if time.monotonic() > deadline:
                raise LinewatchError(f"the broker on port {broker_port} did not accept a connection")
            time.sleep(0.05)
        pipeline.start()
        while pipeline.snapshot().frames_out < WARMUP_FRAMES:
            time.sleep(0.01)
        first = pipeline.snapshot()
        time.sleep(seconds)
        last = pipeline.snapshot(window_s=seconds)
    finally:
        pipeline.stop(drain_timeout_s=10)
        publisher.close("stopped", "benchmark done", timeout_s=10)
        journal.close()
    measured_s = (last.taken_ns - first.taken_ns) / 1e9
    frames = last.frames_out - first.frames_out
    total = last.latency["total"]
    return Row(name, short, frames / measured_s, total.p50_ms, total.p99_ms, frames)


# ---------------------------------------------------------------------------------------------- run


def demo_bundle(work: Path) -> tuple[LoadedBundle, list[npt.NDArray[np.uint8]]]:
    from linewatch.service.demo import build_demo_product

    camera = SyntheticCameraConfig(family="stripes", width=512, height=512, defect_rate=0.2,
                                   defect_kinds=["scratch", "spot", "crack", "noise_patch"], seed=1000)
    print("linewatch bench: building the demo bundle (trainer fit, the trained h=16 network alone, "
          "512×512) …", flush=True)
    path, _ = build_demo_product(work / "products", camera, "bench-part", backbone_name="default-trained")
    source = SyntheticSource(camera)
    return load_bundle(path), [source.render(i)[0] for i in range(32)]


def bundle_images(bundle: LoadedBundle, n: int = 32) -> list[npt.NDArray[np.uint8]]:
    """Frames for a given bundle: noise at the model's input size (the network's cost does not depend on
    the content)."""
    rng = np.random.default_rng(0)
    spec = bundle.manifest.input
    return [rng.integers(0, 256, size=(spec.height, spec.width), dtype=np.uint8) for _ in range(n)]


def run(args: argparse.Namespace) -> int:
    setup_logging("WARNING")
    work = Path(tempfile.mkdtemp(prefix="linewatch-bench-"))
    try:
        if args.bundle is not None:
            bundle = load_bundle(args.bundle)
            images = bundle_images(bundle)
        else:
            bundle, images = demo_bundle(work)
        m = bundle.manifest
        ort_settings: dict[str, Any] = {}
        if args.threads is not None:
            ort_settings["intra_op_threads"] = args.threads
        if args.spinning is not None:
            ort_settings["allow_spinning"] = args.spinning == "on"
        config = InferenceConfig.model_validate({"backend": args.backend, "onnxruntime": ort_settings})
        reports: list[str] = []

        def make_backend(b: LoadedBundle) -> InferenceBackend:
            backend, report = create_backend(config, b)
            if not reports:
                # Every run makes the same choice: its warning (e.g. "TensorRT not used") once, not 8 times.
                logging.getLogger(create_backend.__module__).setLevel(logging.ERROR)
            reports.append(report)
            return backend

        print("linewatch bench: matrix-multiply roofline …", flush=True)
        roofline = matmul_roofline_gflops()
        batch = [preprocess(img, m.input, m.preprocessing) for img in images]

        def bare_backend() -> tuple[Row, str]:
            backend = make_backend(bundle)
            try:
                return bench_backend(backend, batch, args.frames), backend.name
            finally:
                backend.close()

        # On a shared machine the load drifts: the bare backend and the saturated pipeline take turns
        # (backend, pipeline, backend, pipeline, …, backend) and each pipeline run is compared with the mean
        # of the backend runs on either side of it; the table shows medians.
        gflop = model_gflop(m)
        backend_rows: list[Row] = []
        pipeline_rows: list[Row] = []
        print("linewatch bench: bare backend …", flush=True)
        row, backend_name = bare_backend()
        backend_rows.append(row)
        with PrivateMosquitto(work / "broker") as broker:
            for k in range(args.rounds):
                print(f"linewatch bench: whole pipeline, saturated ({k + 1}/{args.rounds}) …", flush=True)
                pipeline_rows.append(bench_pipeline(
                    "pipeline camera→MQTT, saturated", "saturated", bundle, images, make_backend,
                    broker.port, work / f"state-saturated-{k}", args.seconds / args.rounds, None,
                ))
                print(f"linewatch bench: bare backend ({k + 2}/{args.rounds + 1}) …", flush=True)
                backend_rows.append(bare_backend()[0])
            bare = median_row(f"backend (bare, batch 1; median of {len(backend_rows)} runs)", backend_rows)
            saturated = median_row(f"pipeline camera→MQTT, saturated (median of {args.rounds})",
                                   pipeline_rows)
            ratios = [
                p.fps / ((backend_rows[k].fps + backend_rows[k + 1].fps) / 2)
                for k, p in enumerate(pipeline_rows)
            ]
            ratio = float(np.median(ratios))
            paced_rate = PACED_FRACTION * bare.fps
            print(f"linewatch bench: whole pipeline, paced at {paced_rate:.1f} frames/s …", flush=True)
            paced = bench_pipeline(
                f"pipeline paced at {PACED_FRACTION:.0%} ({paced_rate:.1f}/s)", "paced", bundle, images,
                make_backend, broker.port, work / "state-paced", args.seconds, paced_rate,
            )
        roofline = max(roofline, matmul_roofline_gflops())  # the best this CPU showed in this run
    except LinewatchError as exc:
        print(f"linewatch bench: {exc}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(work, ignore_errors=True)

    achieved = gflop * bare.fps
    print()
    print(f"bundle {m.bundle_id}: h={m.scoring.feature_dim}, input {m.input.width}×{m.input.height}, "
          f"{gflop:.2f} GFLOP/frame; backend {backend_name}; {os.cpu_count()} CPU cores")
    ort = config.onnxruntime
    spinning = "on" if ort.allow_spinning else "off"
    load = os.getloadavg()[0]
    print(f"onnxruntime settings: intra_op_threads {ort.intra_op_threads}, spinning {spinning}; "
          f"load average {load:.1f} at the end")
    print()
    print(f"{'':58s} {'frames/s':>9s} {'p50 ms':>8s} {'p99 ms':>8s} {'frames':>7s}")
    for row in (bare, saturated, paced):
        print(f"{row.name:58s} {row.fps:9.1f} {_f(row.p50_ms):>8s} {_f(row.p99_ms):>8s} {row.frames:7d}")
    print()
    checks = [
        ("backend frames/s", bare.fps, f"≥ {TARGET_BACKEND_FPS:g}", bare.fps >= TARGET_BACKEND_FPS),
        ("pipeline / backend throughput (median of paired runs)", ratio, f"≥ {TARGET_RATIO:g}",
         ratio >= TARGET_RATIO),
    ]
    for row in (saturated, paced):
        if row.p50_ms and row.p99_ms:
            value = row.p99_ms / row.p50_ms
            checks.append((f"p99/p50 acquire→publish, {row.short}", value,
                           f"≤ {TARGET_P99_OVER_P50:g}", value <= TARGET_P99_OVER_P50))
    checks.append(("achieved GFLOP/s (backend)", achieved, f"of {roofline:.1f} roofline", True))
    for name, value, target, ok in checks:
        mark = "" if "roofline" in target else ("  ok" if ok else "  MISSED")
        print(f"{name:58s} {value:9.2f}  {target}{mark}")
    print(f"{'fraction of the matmul roofline':58s} {100 * achieved / roofline:8.1f} %")
    if args.json is not None:
        args.json.write_text(json.dumps({
            "bundle": m.bundle_id, "backend": backend_name, "gflop_per_frame": gflop,
            "roofline_gflops": roofline, "achieved_gflops": achieved, "ratio": ratio,
            "rows": [asdict(r) for r in (bare, saturated, paced)], "ratios": ratios,
            "backend_runs": [asdict(r) for r in backend_rows],
            "pipeline_runs": [asdict(r) for r in pipeline_rows], "reports": reports,
            "onnxruntime": ort.model_dump(), "load_average_end": load,
        }, indent=2))
    return 0


def _f(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"

"""ONNX Runtime backend throughput and latency at 512×512 on this CPU (h = 16/32, batch 1/8; and the default
fit's shape: a stacked pair of h = 16 networks and the line bank with 256 centres each, and without the bank).

    .venv/bin/python benchmarks/backend.py [--seconds S] [--threads N]

Prints one table row per configuration: frames/s, per-call latency p50/p99 (ms), per-frame time. Weights
are freshly initialised (speed does not depend on them). A second table checks that ONNX Runtime releases
the GIL while it runs: a pure-Python counter thread keeps counting during inference when it does.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from linewatch.bundle.registry import load_bundle
from linewatch.inference.onnxruntime import OnnxruntimeBackend, OnnxruntimeConfig
from trainer.context import ContextMember, collect_samples, train_member
from trainer.extremes import ExtremesMember, fit_extremes_members
from trainer.fit import prototype_of, write_bundle_from_backbone
from trainer.linebank import LineBank
from trainer.model import Backbone, FeatureNet
from trainer.whitened import WhitenedMember, fit_whitened_members

SIZE = 512


# (label, h, members, clusters, line bank, context member, whitened member, extremes member): the paper's
# global prototype at two widths, and what `trainer fit` writes by default (the shipped trained + untrained
# pair, the line bank, the whitened member where a product's texture is Gaussian or else the extremes member,
# and the context member, nearest of 256 centres per network; before: without those two, without the context
# member, without the bank, and 64 centres).
MODELS = [("16", 16, 1, None, False, False, False, False), ("32", 32, 1, None, False, False, False, False),
          ("16 K64", 16, 1, 64, False, False, False, False),
          ("16x2 K64", 16, 2, 64, False, False, False, False),
          ("16x2 K256", 16, 2, 256, False, False, False, False),
          ("16x2 lines K256", 16, 2, 256, True, False, False, False),
          ("16x2 lines context K256", 16, 2, 256, True, True, False, False),
          ("16x2 lines whitened context K256", 16, 2, 256, True, True, True, False),
          ("16x2 lines extremes context K256", 16, 2, 256, True, True, False, True)]


def make_bundle(root: Path, label: str, h: int, members: int = 1, clusters: int | None = None,
                lines: bool = False, context: bool = False, whitened: bool = False,
                extremes: bool = False) -> Path:
    torch.manual_seed(h)
    stack = FeatureNet.stack([FeatureNet(h) for _ in range(members)])
    good = np.random.default_rng(1).uniform(-1, 1, (1, 1, SIZE, SIZE)).astype(np.float32)
    member = None
    if context:  # a few steps: the speed does not depend on the weights
        member = train_member(collect_samples(ContextMember(), [good], 1), [0], steps=2)
    white = None
    if whitened:  # kept whatever the kurtosis: only its shape counts here
        white = fit_whitened_members(WhitenedMember(), [[good], [good]], [0],
                                     max_kurtosis=float("inf")).member
    grey = None
    if extremes:  # kept whatever the kurtosis: only its shape counts here
        grey = fit_extremes_members(ExtremesMember(), [good], [0], 0, float("inf"), 0.5).member
    bank = LineBank() if lines else None
    net = Backbone(stack, bank, member, white, grey) if lines or context or whitened or extremes else stack
    prototype = prototype_of(net, good, mode="clusters" if clusters else "global", clusters=clusters or 1)
    return write_bundle_from_backbone(root / f"bench-{label.replace(' ', '-')}", net, prototype, height=SIZE,
                                      width=SIZE, threshold=1.0)


def measure(backend: OnnxruntimeBackend, batch: int, seconds: float) -> tuple[float, float, float, int]:
    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, (batch, 1, SIZE, SIZE)).astype(np.float32)
    backend.infer(images, want_heatmap=False)  # first call at this batch size binds its output buffers
    latencies = []
    start = time.perf_counter()
    while time.perf_counter() - start < seconds or len(latencies) < 3:
        t0 = time.perf_counter()
        backend.infer(images, want_heatmap=False)
        latencies.append(time.perf_counter() - t0)
    total = time.perf_counter() - start
    lat_ms = np.array(latencies) * 1e3
    p50, p99 = (float(np.percentile(lat_ms, q)) for q in (50, 99))
    return batch * len(latencies) / total, p50, p99, len(latencies)


def gil_check(backend: OnnxruntimeBackend, seconds: float) -> tuple[float, float]:
    """Python counter rate (loops/s) alone, and while another thread runs inference back to back."""

    def count(stop: threading.Event, out: list[int]) -> None:
        n = 0
        while not stop.is_set():
            n += 1
        out.append(n)

    def rate(with_inference: bool) -> float:
        stop, out = threading.Event(), []
        worker = threading.Thread(target=count, args=(stop, out))
        image = np.zeros((1, 1, SIZE, SIZE), np.float32)
        worker.start()
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            if with_inference:
                backend.infer(image, want_heatmap=False)
            else:
                time.sleep(0.01)
        stop.set()
        worker.join()
        return out[0] / (time.perf_counter() - t0)

    return rate(False), rate(True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="measuring time per configuration")
    parser.add_argument("--threads", type=int, default=0,
                        help="ONNX Runtime intra-op threads (0 = all cores)")
    parser.add_argument("--models", default="",
                        help="comma list of the rows to measure, by label (default: all; "
                        f"{', '.join(m[0] for m in MODELS)})")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"ONNX Runtime backend, {SIZE}×{SIZE}, CPU cores visible: {os.cpu_count()}, "
          f"intra_op_threads={args.threads or 'default'}, load average {os.getloadavg()[0]:.1f} "
          "(other processes share these cores)")
    print(f"{'h':>32} {'batch':>5} {'frames/s':>9} {'p50 ms':>9} {'p99 ms':>9} {'ms/frame':>9} {'calls':>6}")
    with tempfile.TemporaryDirectory() as tmp:
        for label, h, members, clusters, lines, context, whitened, extremes in MODELS:
            if args.models and label not in args.models.split(","):
                continue
            bundle = load_bundle(make_bundle(Path(tmp), label, h, members, clusters, lines, context,
                                             whitened, extremes))
            backend = OnnxruntimeBackend(bundle, OnnxruntimeConfig(intra_op_threads=args.threads))
            for batch in (1, 8):
                fps, p50, p99, calls = measure(backend, batch, args.seconds)
                print(f"{label:>32} {batch:>5} {fps:>9.1f} {p50:>9.1f} {p99:>9.1f} {1e3 / fps:>9.1f} "
                      f"{calls:>6}")
            backend.close()
        if not (Path(tmp) / "bench-16").exists():
            return 0
        one_thread = OnnxruntimeBackend(load_bundle(Path(tmp) / "bench-16"),
                                        OnnxruntimeConfig(intra_op_threads=1))
        alone, during = gil_check(one_thread, min(args.seconds, 3.0))
        print()
        print("GIL during inference (h=16, batch 1, 1 ORT thread): Python counter loops/s")
        print(f"{'alone':>14} {'during infer':>14} {'ratio':>6}")
        print(f"{alone:>14.3g} {during:>14.3g} {during / alone:>6.2f}")
        print("(a ratio near 1 means the counter thread ran while ORT computed: the GIL is released;"
              " near 0 would mean it is held)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

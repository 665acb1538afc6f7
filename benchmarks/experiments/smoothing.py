"""Does Gaussian smoothing of the distance map help? (PatchCore smooths its anomaly map with σ = 4 px.)

KolektorSDD's masks are coarse regions around thin cracks; a map that answers sharply on the crack line
misses most of the mask's pixels. Smoothing spreads the answer over the neighbourhood and also steadies
the image score (the maximum). σ in heatmap cells (1 cell = 2 input pixels).

    .venv/bin/python benchmarks/experiments/smoothing.py --features random --k 64 --sigmas 0,1,2,4
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import common as C
from multiproto import kmeans, nearest_map, sample_vectors
from score_grid import load_features, sizes_for


def smooth(hm: np.ndarray, sigma: float) -> np.ndarray:
    if sigma <= 0:
        return hm
    return np.stack([cv2.GaussianBlur(m, (0, 0), sigma, borderType=cv2.BORDER_REPLICATE) for m in hm])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--features", required=True)
    ap.add_argument("--k", type=int, default=64)
    ap.add_argument("--size", default="native")
    ap.add_argument("--sigmas", default="0,1,2,4")
    args = ap.parse_args()
    C.set_threads(2)
    feat = load_features(args.features, 16, 0)
    split = C.load_ksdd()
    size = sizes_for(args.size, split)[args.size]
    rng = np.random.default_rng(0)
    samples, sums, sq, count = [], 0.0, 0.0, 0
    for chunk in C.batched(split.train, 8):
        f = C.extract(feat, chunk, size)
        samples.append(sample_vectors(f, 2048 * len(chunk), rng))
        f64 = f.astype(np.float64)
        sums, sq = sums + f64.sum(axis=(0, 2, 3)), sq + (f64 * f64).sum(axis=(0, 2, 3))
        count += f.shape[0] * f.shape[2] * f.shape[3]
    mean = sums / count
    std = np.sqrt(np.maximum(sq / count - mean * mean, 0))
    scale = np.maximum(std, 0.1 * np.median(std)).astype(np.float32)
    x = np.concatenate(samples)
    if args.k == 1:
        centres = mean[None].astype(np.float32)
    else:
        centres, _ = kmeans(x[rng.choice(len(x), min(len(x), 200_000), replace=False)], args.k, 15, 0)
    hm = nearest_map(C.extract(feat, split.test, size), centres, scale, False)
    print(f"features={args.features} K={args.k} size={size}")
    for s in (float(v) for v in args.sigmas.split(",")):
        sm = smooth(hm, s)
        img = C.auroc(C.image_scores(sm, 1), split.labels)
        pix = C.pixel_auroc(sm, split, size)
        print(f"  sigma {s:>4} cells: img {img:.3f} pix {pix:.3f}", flush=True)


if __name__ == "__main__":
    main()

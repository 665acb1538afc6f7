"""Several input scales: does scoring the same image at full and reduced size (one backbone, nearest-of-K
prototype per scale, maps brought to one grid and normalised by their good-image level) beat one scale?

    .venv/bin/python benchmarks/experiments/multiscale.py --features trainer/backbones/default_h16.pt --data synth
    .venv/bin/python benchmarks/experiments/multiscale.py --features random --data ksdd --scales 1,0.5
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import common as C
from multiproto import kmeans, nearest_map, sample_vectors
from score_grid import load_features
from train_probe import synth_set

from trainer.model import smooth_heatmap


def scale_maps(feat: C.FeatureFn, split: C.Split, size: tuple[int, int], k: int, sigma: float,
               grid: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(train maps, test maps) on ``grid``: nearest-of-k standardised distance, smoothed σ cells."""
    rng = np.random.default_rng(0)
    train = C.extract(feat, split.train, size)
    x = sample_vectors(train, 200_000, rng)
    std = x.std(0)
    scale = np.maximum(std, 0.1 * np.median(std)).astype(np.float32)
    centres, _ = kmeans(x, k, 15, 0)

    def maps(f: np.ndarray) -> np.ndarray:
        hm = nearest_map(f, centres, scale, False)
        if sigma > 0:
            hm = smooth_heatmap(torch.from_numpy(hm), sigma).numpy()
        return np.stack([C.heatmap_to_image(m, size, grid) for m in hm])

    return maps(train), maps(C.extract(feat, split.test, size))


def evaluate(feat: C.FeatureFn, split: C.Split, base: tuple[int, int], scales: list[float], k: int,
             sigma: float, grid: tuple[int, int]) -> dict[str, float]:
    per = []
    out = {}
    for s in scales:
        size = (2 * round(base[0] * s / 2), 2 * round(base[1] * s / 2))
        tr, te = scale_maps(feat, split, size, k, sigma, grid)
        level = np.percentile(tr.max(axis=(1, 2)), 50)  # a typical good image's maximum
        per.append(te / level)
        out[f"s{s}"] = C.auroc(te.max(axis=(1, 2)), split.labels)
    stack = np.stack(per)
    out["mean"] = C.auroc(stack.mean(0).max(axis=(1, 2)), split.labels)
    out["max"] = C.auroc(stack.max(0).max(axis=(1, 2)), split.labels)
    out["maxofmax"] = C.auroc(stack.max(axis=(2, 3)).max(0), split.labels)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--features", required=True)
    ap.add_argument("--h", type=int, default=16)
    ap.add_argument("--data", default="synth", help="ksdd | synth")
    ap.add_argument("--scales", default="1,0.5")
    ap.add_argument("--k", type=int, default=64)
    ap.add_argument("--sigma", type=float, default=1.0)
    args = ap.parse_args()
    C.set_threads(2)
    feat = load_features(args.features, args.h, 0)
    scales = [float(s) for s in args.scales.split(",")]
    print(f"features={args.features} data={args.data} scales={scales}", flush=True)
    if args.data == "ksdd":
        split = C.load_ksdd()
        hh, ww = C.native_size(split.train, 1.0, 1)
        f = min(1.0, 1024 / max(hh, ww))
        base = (2 * int(hh * f / 2), 2 * int(ww * f / 2))
        res = evaluate(feat, split, base, scales, args.k, args.sigma, (base[0] // 2, base[1] // 2))
        print("ksdd", {k: round(v, 3) for k, v in res.items()}, flush=True)
        return
    allres: dict[str, list[float]] = {}
    for fam in sorted(p for p in synth_set().iterdir() if p.is_dir()):
        split = C.load_mvtec(fam)
        res = evaluate(feat, split, split.train[0].shape, scales, args.k, args.sigma, split.train[0].shape)
        print(fam.name, {k: round(v, 3) for k, v in res.items()}, flush=True)
        for key, v in res.items():
            allres.setdefault(key, []).append(v)
    for key, v in allres.items():
        print(f"mean {key:>10} img {np.mean(v):.3f}  worst {np.min(v):.3f}")


if __name__ == "__main__":
    main()

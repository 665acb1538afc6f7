"""Normalising the distance map per position by what good parts do there.

A part's edge, a bore or a printed mark varies more between good parts than the flat surface beside it, so
the largest distances of good images sit at such places and set the threshold for the whole part. Cross-
fitting (the fit's default calibration) gives an out-of-fold distance map for every good image; their
per-position mean M and spread S (smoothed, floored) turn a map d into (d − M) / S or d / M.

    .venv/bin/python benchmarks/experiments/mapnorm.py --features trainer/backbones/default_h16.pt --data ksdd
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import common as C
from multiproto import nearest_map, sample_vectors
from score_grid import load_features, sizes_for
from train_probe import synth_set

from trainer.clustering import kmeans
from trainer.model import smooth_heatmap


def prototype(feats: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    x = sample_vectors(feats, 200_000, np.random.default_rng(0))
    std = x.std(0)
    scale = np.maximum(std, 0.1 * np.median(std)).astype(np.float32)
    centres = kmeans(x / scale, k, seed=0) * scale
    return centres, scale


def maps(feats: np.ndarray, centres: np.ndarray, scale: np.ndarray, sigma: float) -> np.ndarray:
    hm = nearest_map(feats, centres, scale, False)
    return smooth_heatmap(torch.from_numpy(hm), sigma).numpy() if sigma > 0 else hm


def evaluate(feat: C.FeatureFn, split: C.Split, size: tuple[int, int], k: int, sigma: float, folds: int,
             blur: float, pixel: bool) -> dict[str, tuple[float, float]]:
    train = C.extract(feat, split.train, size)
    order = np.random.default_rng(0).permutation(len(train))
    oof = np.empty((len(train), *train.shape[2:]), np.float32)
    for i in range(folds):
        held = order[i::folds]
        rest = np.setdiff1d(order, held)
        c, s = prototype(train[rest], k)
        oof[held] = maps(train[held], c, s, sigma)
    c, s = prototype(train, k)
    test = maps(C.extract(feat, split.test, size), c, s, sigma)
    del train
    mean = oof.mean(0)
    spread = oof.std(0)
    if blur > 0:
        mean = cv2.GaussianBlur(mean, (0, 0), blur)
        spread = cv2.GaussianBlur(spread, (0, 0), blur)
    spread = np.maximum(spread, 0.25 * np.median(spread))
    variants = {
        "raw": test,
        "minus-mean": test - mean,
        "z": (test - mean) / spread,
        "ratio": test / np.maximum(mean, 0.25 * np.median(mean)),
        "over-spread": test / spread,
    }
    out = {}
    for name, hm in variants.items():
        img = C.auroc(hm.reshape(len(hm), -1).max(1), split.labels)
        pix = C.pixel_auroc(hm, split, size) if pixel else float("nan")
        out[name] = (img, pix)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--features", required=True)
    ap.add_argument("--h", type=int, default=16)
    ap.add_argument("--data", default="ksdd")
    ap.add_argument("--size", default="cap1024")
    ap.add_argument("--k", type=int, default=64)
    ap.add_argument("--sigma", type=float, default=1.0)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--blur", type=float, default=2.0, help="σ (cells) smoothing M and S")
    args = ap.parse_args()
    C.set_threads(2)
    feat = load_features(args.features, args.h, 0)
    if args.data == "ksdd":
        split = C.load_ksdd()
        size = sizes_for(args.size, split)[args.size]
        for name, (img, pix) in evaluate(feat, split, size, args.k, args.sigma, args.folds, args.blur,
                                         True).items():
            print(f"RESULT ksdd {args.features} blur {args.blur} {name:>12} img {img:.3f} pix {pix:.3f}",
                  flush=True)
        return
    res: dict[str, list[float]] = {}
    for fam in sorted(p for p in synth_set().iterdir() if p.is_dir()):
        split = C.load_mvtec(fam)
        for name, (img, _) in evaluate(feat, split, split.train[0].shape, args.k, args.sigma, args.folds,
                                       args.blur, False).items():
            res.setdefault(name, []).append(img)
    for name, v in res.items():
        print(f"RESULT synth {args.features} blur {args.blur} {name:>12} mean {np.mean(v):.3f} "
              f"worst {np.min(v):.3f} {[round(x, 3) for x in v]}", flush=True)


if __name__ == "__main__":
    main()

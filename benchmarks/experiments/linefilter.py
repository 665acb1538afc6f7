"""Oriented line filters on the distance map: KolektorSDD's missed cracks are faint lines 250-350 px long,
each 32-px window of which looks like the surface's own streaks; the evidence is the length. The distance map
is averaged along short lines at several orientations, each filtered map turned into a z-score by the good
parts' (out-of-fold) mean and spread of that filter, and the map is the maximum over filters (the point
filter included, so spots keep their own evidence).

    .venv/bin/python benchmarks/experiments/linefilter.py --data ksdd --lengths 9,17,33
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import common as C
from mapnorm import maps, prototype
from normalise import patched
from score_grid import load_features, sizes_for
from train_probe import synth_set


def line_kernels(length: int, orientations: int) -> list[np.ndarray]:
    out = []
    r = length // 2
    for i in range(orientations):
        theta = math.pi * i / orientations
        k = np.zeros((length, length), np.float32)
        dx, dy = math.cos(theta) * r, math.sin(theta) * r
        cv2.line(k, (round(r - dx), round(r - dy)), (round(r + dx), round(r + dy)), 1.0,
                 thickness=1, lineType=cv2.LINE_AA)
        out.append(k / k.sum())
    return out


def filtered(hm: np.ndarray, kernels: list[np.ndarray]) -> np.ndarray:
    """N×H×W → F×N×H×W (zero padding renormalised by the filtered ones map)."""
    x = torch.from_numpy(hm).unsqueeze(1)
    ones = torch.ones_like(x[:1])
    out = []
    for k in kernels:
        w = torch.from_numpy(k)[None, None]
        pad = k.shape[0] // 2
        out.append((F.conv2d(x, w, padding=pad) / F.conv2d(ones, w, padding=pad)).squeeze(1).numpy())
    return np.stack(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--features", default="trainer/backbones/default_h16.pt")
    ap.add_argument("--data", default="ksdd")
    ap.add_argument("--size", default="cap1024")
    ap.add_argument("--lengths", default="9,17,33")
    ap.add_argument("--orientations", type=int, default=8)
    ap.add_argument("--sigma", type=float, default=1.0)
    args = ap.parse_args()
    C.set_threads(2)
    C.to_input = patched("centre", 0.0)
    feat = load_features(args.features, 16, 0)
    lengths = [int(v) for v in args.lengths.split(",")]

    def run(split: C.Split, size: tuple[int, int], pixel: bool) -> dict[str, tuple[float, float]]:
        train = C.extract(feat, split.train, size)
        order = np.random.default_rng(0).permutation(len(train))
        oof = np.empty((len(train), *train.shape[2:]), np.float32)
        for i in range(5):
            held = order[i::5]
            c, s = prototype(train[np.setdiff1d(order, held)], 64)
            oof[held] = maps(train[held], c, s, args.sigma)
        c, s = prototype(train, 64)
        test = maps(C.extract(feat, split.test, size), c, s, args.sigma)
        del train
        res = {"point": (C.auroc(test.reshape(len(test), -1).max(1), split.labels),
                         C.pixel_auroc(test, split, size) if pixel else float("nan"))}
        mu0, sd0 = oof.mean(), oof.std()
        z_point = (test - mu0) / sd0
        best = z_point
        for length in lengths:
            kernels = line_kernels(length, args.orientations)
            g = filtered(oof, kernels)
            t = filtered(test, kernels)
            z = np.stack([(t[i] - g[i].mean()) / g[i].std() for i in range(len(kernels))]).max(0)
            both = np.maximum(z_point, z)
            best = np.maximum(best, z)
            for name, hm in ((f"line{length}", z), (f"point+line{length}", both)):
                res[name] = (C.auroc(hm.reshape(len(hm), -1).max(1), split.labels),
                             C.pixel_auroc(hm, split, size) if pixel else float("nan"))
        res["point+all"] = (C.auroc(best.reshape(len(best), -1).max(1), split.labels),
                            C.pixel_auroc(best, split, size) if pixel else float("nan"))
        return res

    if args.data == "ksdd":
        split = C.load_ksdd()
        for name, (img, pix) in run(split, sizes_for(args.size, split)[args.size], True).items():
            print(f"RESULT ksdd {name:>14} img {img:.3f} pix {pix:.3f}", flush=True)
        return
    acc: dict[str, list[float]] = {}
    for fam in sorted(q for q in synth_set().iterdir() if q.is_dir()):
        split = C.load_mvtec(fam)
        for name, (img, _) in run(split, split.train[0].shape, False).items():
            acc.setdefault(name, []).append(img)
    for name, v in acc.items():
        print(f"RESULT synth {name:>14} mean {np.mean(v):.3f} worst {np.min(v):.3f}", flush=True)


if __name__ == "__main__":
    main()

"""Per-image brightness / contrast normalisation of the input: does removing each part's global level (and
spread) before the network make good parts more alike?

    .venv/bin/python benchmarks/experiments/normalise.py --features trainer/backbones/default_h16.pt --data ksdd --mode centre
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import common as C
from multiproto import evaluate
from score_grid import load_features, sizes_for
from train_probe import synth_set

_plain = C.to_input


def patched(mode: str, target_std: float):
    def to_input(img: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
        x = _plain(img, size)
        if mode == "centre":
            return (x - x.mean()).astype(np.float32)
        if mode.startswith("highpass"):  # highpassS: minus a Gaussian blur of σ = S input px (local level)
            sigma = float(mode[len("highpass"):])
            return (x - cv2.GaussianBlur(x, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)).astype(np.float32)
        return ((x - x.mean()) / max(float(x.std()), 1e-3) * target_std).astype(np.float32)

    return to_input


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--features", required=True)
    ap.add_argument("--data", default="ksdd")
    ap.add_argument("--mode", default="centre", help="none | centre | standardise")
    ap.add_argument("--std", type=float, default=0.2, help="input-unit spread after standardise")
    ap.add_argument("--size", default="cap1024")
    ap.add_argument("--aggregate", type=int, default=1, help="k×k mean of the features before scoring")
    args = ap.parse_args()
    C.set_threads(2)
    if args.mode != "none":
        C.to_input = patched(args.mode, args.std)
    feat = load_features(args.features, 16, 0)
    if args.aggregate > 1:  # PatchCore's local neighbourhood aggregation, same map size
        base, k = feat, args.aggregate

        def feat(x: np.ndarray) -> np.ndarray:
            t = torch.from_numpy(base(x))
            return F.avg_pool2d(t, k, stride=1, padding=k // 2, count_include_pad=False).numpy()
    if args.data == "ksdd":
        split = C.load_ksdd()
        res = evaluate(feat, split, sizes_for(args.size, split)[args.size], [64], pixel=True)
        print(f"RESULT ksdd {args.features} {args.mode} agg {args.aggregate} {res['K64-std']}", flush=True)
        return
    vals = []
    for fam in sorted(p for p in synth_set().iterdir() if p.is_dir()):
        split = C.load_mvtec(fam)
        vals.append(evaluate(feat, split, split.train[0].shape, [64], pixel=False)["K64-std"][0])
    print(f"RESULT synth {args.features} {args.mode} agg {args.aggregate} mean {np.mean(vals):.3f} worst {np.min(vals):.3f}", flush=True)


if __name__ == "__main__":
    main()

"""Which KolektorSDD images does a configuration get wrong? Writes a sheet of the highest-scored good parts
and the lowest-scored cracks with their heatmaps, and prints their names and scores.

    .venv/bin/python benchmarks/experiments/inspect_ksdd.py --features raw --size native --config 0 --out /tmp/sheet.png
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
from score_grid import SCORE_CONFIGS, load_features, sizes_for


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--features", required=True)
    ap.add_argument("--h", type=int, default=16)
    ap.add_argument("--size", default="native")
    ap.add_argument("--config", type=int, default=0)
    ap.add_argument("--n", type=int, default=6)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    C.set_threads(2)
    feat = load_features(args.features, args.h, 0)
    cfg = SCORE_CONFIGS[args.config]
    split = C.load_ksdd()
    size = sizes_for(args.size, split)[args.size]
    stats = C.PrototypeStats()
    for chunk in C.batched(split.train, 8):
        stats.add(C.extract(feat, chunk, size))
    mean, scale = stats.prototype(cfg)
    hms = np.concatenate([C.heatmaps(C.extract(feat, ch, size), mean, scale, cfg) for ch in C.batched(split.test, 8)])
    scores = C.image_scores(hms, cfg.pooling)
    print(f"image AUROC {C.auroc(scores, split.labels):.3f}")
    good = np.flatnonzero(split.labels == 0)
    bad = np.flatnonzero(split.labels == 1)
    worst_good = good[np.argsort(-scores[good])][: args.n]
    worst_bad = bad[np.argsort(scores[bad])][: args.n]
    vmax = np.percentile(hms, 99.9)
    tiles = []
    for i in list(worst_good) + list(worst_bad):
        img = split.test[i]
        hm = C.heatmap_to_image(hms[i], size, img.shape)
        hm8 = np.clip(hm / vmax * 255, 0, 255).astype(np.uint8)
        col = cv2.applyColorMap(hm8, cv2.COLORMAP_JET)
        gray = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
        if split.masks[i] is not None:
            cnts, _ = cv2.findContours(split.masks[i].astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
            cv2.drawContours(gray, cnts, -1, (0, 255, 0), 1)
        pair = np.hstack([gray, col])
        pair = cv2.resize(pair, (pair.shape[1] // 2, pair.shape[0] // 2))
        cv2.putText(pair, f"{split.test_names[i]} {scores[i]:.2f}", (5, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 255), 1)
        tiles.append(pair[:620])
        print(f"{split.test_names[i]:>28} score {scores[i]:.3f}")
    cv2.imwrite(str(args.out), np.hstack(tiles))


if __name__ == "__main__":
    main()

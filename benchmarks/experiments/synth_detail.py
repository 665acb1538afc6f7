"""Per-family and per-defect-kind AUROC on the `trainer synth` evaluation set (seed 0, 256 px).

    .venv/bin/python benchmarks/experiments/synth_detail.py --features CKPT|raw|random --config 7
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import common as C
from score_grid import SCORE_CONFIGS, load_features
from train_probe import synth_set


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--features", required=True)
    ap.add_argument("--h", type=int, default=16)
    ap.add_argument("--config", type=int, default=7)
    args = ap.parse_args()
    C.set_threads(2)
    feat = load_features(args.features, args.h, 0)
    cfg = SCORE_CONFIGS[args.config]
    root = synth_set()
    kinds: dict[str, list[float]] = {}
    for fam in sorted(p for p in root.iterdir() if p.is_dir()):
        split = C.load_mvtec(fam)
        size = split.train[0].shape
        stats = C.PrototypeStats()
        stats.add(C.extract(feat, split.train, size))
        mean, scale = stats.prototype(cfg)
        hm = C.heatmaps(C.extract(feat, split.test, size), mean, scale, cfg)
        sc = C.image_scores(hm, cfg.pooling)
        good = split.labels == 0
        per = {}
        for kind in sorted({n.split("/")[0] for n in split.test_names} - {"good"}):
            sel = np.array([n.startswith(kind + "/") for n in split.test_names])
            per[kind] = C.auroc(np.r_[sc[good], sc[sel]], np.r_[np.zeros(good.sum()), np.ones(sel.sum())])
            kinds.setdefault(kind, []).append(per[kind])
        print(f"{fam.name:>13} all {C.auroc(sc, split.labels):.3f} " + " ".join(f"{k}={v:.2f}" for k, v in per.items()))
    print(f"{'mean':>13} " + " ".join(f"{k}={np.mean(v):.3f}" for k, v in kinds.items()))


if __name__ == "__main__":
    main()

"""Score a feature extractor on KolektorSDD (and the DAGM samples) over input sizes × scoring configs.

    .venv/bin/python benchmarks/experiments/score_grid.py --features raw
    .venv/bin/python benchmarks/experiments/score_grid.py --features random --h 16
    .venv/bin/python benchmarks/experiments/score_grid.py --features CKPT.pt --sizes squash512,half,native

Prints one row per (size, scoring config): image AUROC, pixel AUROC, seconds for features.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import common as C

from trainer.model import FeatureNet

SCORE_CONFIGS = [
    C.ScoreConfig("global", "l2", False, 1),  # the paper
    C.ScoreConfig("global", "l2", True, 1),
    C.ScoreConfig("global", "l1", True, 1),
    C.ScoreConfig("spatial", "l2", False, 1),
    C.ScoreConfig("spatial", "l2", True, 1),
    C.ScoreConfig("spatial", "l1", True, 1),
    C.ScoreConfig("global", "l2", True, 4),
    C.ScoreConfig("global", "l2", True, 8),
    C.ScoreConfig("spatial", "l2", True, 4),
    C.ScoreConfig("spatial", "l2", True, 8),
    C.ScoreConfig("spatial", "l1", True, 8),
]


def load_features(spec: str, h: int, seed: int) -> C.FeatureFn:
    if "+" in spec:  # channel concatenation of several feature sources, e.g. CKPT.pt+random
        parts = [load_features(p, h, seed + i) for i, p in enumerate(spec.split("+"))]
        return lambda x: np.concatenate([f(x) for f in parts], axis=1)
    if spec == "raw":
        return C.raw_pixel_features
    if spec.startswith("bank:"):  # fixed oriented line filters (linebank.py), e.g. bank:1.5x4;3x4
        from linebank import bank_features

        return bank_features(spec[len("bank:") :])
    if spec.startswith("blob:"):  # isotropic LoG filters (blobbank.py), e.g. blob:2;4;8
        from blobbank import blob_features

        return blob_features(spec[len("blob:") :])
    if spec.startswith("moments:"):  # local mean and spread (blobbank.py), e.g. moments:3;6
        from blobbank import moment_features

        return moment_features(spec[len("moments:") :])
    if spec.startswith("linebank"):  # the product's trainer.linebank.LineBank; linebank:O = O orientations
        from trainer.linebank import ORIENTATIONS, LineBank

        return C.net_features(LineBank(orientations=int(spec.partition(":")[2] or ORIENTATIONS)))
    if spec == "random":
        torch.manual_seed(seed)
        return C.net_features(FeatureNet(h))
    ckpt = torch.load(spec, map_location="cpu", weights_only=False)
    net = FeatureNet(int(ckpt["h"]))
    net.load_state_dict(ckpt["state_dict"])
    return C.net_features(net)


def sizes_for(names: str, split: C.Split) -> dict[str, tuple[int, int]]:
    out = {}
    for n in names.split(","):
        if n.startswith("squash"):
            s = int(n[len("squash") :])
            out[n] = (s, s)
        elif n == "native":
            out[n] = C.native_size(split.train)
        elif n.startswith("cap"):  # trainer fit's policy: median size, long side capped, even sides
            cap = int(n[3:])
            hh, ww = C.native_size(split.train, 1.0, 1)
            f = min(1.0, cap / max(hh, ww))
            out[n] = (2 * int(hh * f / 2), 2 * int(ww * f / 2))
        elif n == "half":
            out[n] = C.native_size(split.train, 0.5)
        else:
            raise SystemExit(f"unknown size {n}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--features", required=True, help="raw | random | checkpoint path")
    ap.add_argument("--h", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sizes", default="squash512,half,native")
    ap.add_argument("--configs", default="all", help="all | comma-separated indices into SCORE_CONFIGS")
    ap.add_argument("--dagm", action="store_true", help="also the DAGM-samples pixel sanity check")
    args = ap.parse_args()
    C.set_threads(2)
    feat = load_features(args.features, args.h, args.seed)
    cfgs = SCORE_CONFIGS if args.configs == "all" else [SCORE_CONFIGS[int(i)] for i in args.configs.split(",")]
    ksdd = C.load_ksdd()
    print(f"features={args.features} h={args.h}")
    print(f"{'size':>10} {'input':>10} {'config':>22} {'img AUROC':>9} {'pix AUROC':>9} {'feat s':>7}")
    for sname, size in sizes_for(args.sizes, ksdd).items():
        res = C.evaluate_split(feat, ksdd, size, cfgs)
        for label, r in res.items():
            print(f"{sname:>10} {size[0]:>4}x{size[1]:<5} {label:>22} {r.image_auroc:9.3f} {r.pixel_auroc:9.3f} "
                  f"{r.seconds:7.0f}", flush=True)
    if args.dagm:
        t0 = time.time()
        for cfg in (C.ScoreConfig("global", "l2", False, 1), C.ScoreConfig("global", "l2", True, 4)):
            d = C.dagm_pixel_sanity(feat, cfg)
            print(f"DAGM samples pixel AUROC {cfg.label()}: "
                  + " ".join(f"{k}={v:.3f}" for k, v in d.items())
                  + f" mean={np.nanmean(list(d.values())):.3f} ({time.time() - t0:.0f}s)")


if __name__ == "__main__":
    main()

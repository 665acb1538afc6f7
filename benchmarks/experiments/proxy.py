"""Can a fit choose its own configuration from good images only? Proxy AUROC: the synthetic defects of
``linewatch.surfaces.defects`` pasted into held-out good images, scored against a prototype of the other
good images, against the same held-out images clean. Printed beside the real test AUROC, per backbone.

    .venv/bin/python benchmarks/experiments/proxy.py --data ksdd --features trainer/backbones/default_h16.pt,random
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import common as C
from mapnorm import maps, prototype
from score_grid import load_features, sizes_for
from train_probe import synth_set

from linewatch.surfaces.defects import DEFECT_KINDS, inject_defect


def proxy_and_real(feat: C.FeatureFn, split: C.Split, size: tuple[int, int], k: int, sigma: float,
                   copies: int) -> tuple[float, float, dict[str, float]]:
    n = len(split.train)
    order = np.random.default_rng(0).permutation(n)
    held = sorted(order[: max(4, n // 5)].tolist())
    rest = [split.train[i] for i in range(n) if i not in held]
    c, s = prototype(C.extract(feat, rest, size), k)
    clean = [split.train[i] for i in held]
    rng = np.random.default_rng(1)
    bad, kinds = [], []
    for _ in range(copies):
        for img in clean:
            kind = DEFECT_KINDS[int(rng.integers(len(DEFECT_KINDS)))]
            bad.append(inject_defect(img, kind, rng)[0])
            kinds.append(kind)
    sc = maps(C.extract(feat, clean, size), c, s, sigma).reshape(len(clean), -1).max(1)
    sb = maps(C.extract(feat, bad, size), c, s, sigma).reshape(len(bad), -1).max(1)
    labels = np.r_[np.zeros(len(sc)), np.ones(len(sb))]
    proxy = C.auroc(np.r_[sc, sb], labels)
    per = {}
    for kind in DEFECT_KINDS:
        m = np.array(kinds) == kind
        if m.any():
            per[kind] = round(C.auroc(np.r_[sc, sb[m]], np.r_[np.zeros(len(sc)), np.ones(m.sum())]), 3)
    ct, st = prototype(C.extract(feat, split.train, size), k)
    real = C.auroc(maps(C.extract(feat, split.test, size), ct, st, sigma).reshape(len(split.test), -1).max(1),
                   split.labels)
    return proxy, real, per


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--features", default="trainer/backbones/default_h16.pt,random")
    ap.add_argument("--data", default="ksdd")
    ap.add_argument("--size", default="cap1024")
    ap.add_argument("--sigma", type=float, default=1.0)
    ap.add_argument("--copies", type=int, default=2)
    ap.add_argument("--centre", action="store_true", help="subtract each image's mean (fit's normalise)")
    args = ap.parse_args()
    C.set_threads(2)
    if args.centre:
        from normalise import patched

        C.to_input = patched("centre", 0.0)
    for spec in args.features.split(","):
        feat = load_features(spec, 16, 0)
        if args.data == "ksdd":
            split = C.load_ksdd()
            p, r, per = proxy_and_real(feat, split, sizes_for(args.size, split)[args.size], 64, args.sigma,
                                       args.copies)
            print(f"RESULT ksdd {spec} proxy {p:.3f} real {r:.3f} {per}", flush=True)
            continue
        for fam in sorted(q for q in synth_set().iterdir() if q.is_dir()):
            split = C.load_mvtec(fam)
            p, r, per = proxy_and_real(feat, split, split.train[0].shape, 64, args.sigma, args.copies)
            print(f"RESULT {fam.name} {spec} proxy {p:.3f} real {r:.3f}", flush=True)


if __name__ == "__main__":
    main()

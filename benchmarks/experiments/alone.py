"""Members that reject alone: the product averages its members' levelled maps, so a mark only one member
sees counts a fifth (§9, §15: grass cracks 4.35 spreads deep against the good parts' 3.20 stay under the
threshold). Here the averaged map (the product's members T, R, L, P and the extremes X, levelled, σ 1) is
joined by maximum with a grey-level extremes map of its own, each put on one scale by its good parts' median
maximum, so a part is rejected when either path is far beyond its good parts:

- ``X`` / ``Xn``: |x − median| per cell, with / without the σ 1 smoothing;
- ``Xs`` / ``Xns``: dark and bright excursions apart, each over its own good level, with / without smoothing;
- ``q50`` / ``q75``: the alone path's scale at that percentile of its out-of-fold good maxima.

The averaged map's scale is the median of the good *test* parts' scores (a fit takes it from out-of-fold
calibration parts; the median of 200 parts is what both estimate). Only the families where the product keeps
the extremes member (the whitened good images' kurtosis ≥ 0.5) are affected; fusion.py's caches are used and
filled.

    .venv/bin/python benchmarks/experiments/alone.py --synth-seed 7 --families grass,gravel,weave
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import common as C
from fusion import cached
from train_probe import synth_set
from whiten import per_kind

AVERAGED = ("T", "R", "L", "P", "X")  # the product's members where the extremes member is kept
KINDS = ("crack", "scratch", "spot")


def top(maps: np.ndarray) -> np.ndarray:
    return maps.reshape(len(maps), -1).max(1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--synth-seed", type=int, default=7)
    ap.add_argument("--families", default="grass,gravel,weave")
    ap.add_argument("--test", default="200x30")
    ap.add_argument("--cache", type=Path, default=C.CACHE / "fusion")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    C.set_threads(args.threads)
    good_n, defect_n = (int(v) for v in args.test.split("x"))
    prefix = ("" if args.synth_seed == 0 else f"s{args.synth_seed}-") + f"t{args.test}-"
    table: dict[str, list[float]] = {}
    for fam in args.families.split(","):
        split = C.load_mvtec(synth_set(args.synth_seed, good_n, defect_n) / fam)
        size = split.train[0].shape
        ms = {n: cached(n, prefix + fam, split, size, args.cache) for n in (*AVERAGED, "X", "Xn", "Xs", "Xns")}
        good = np.array([n.startswith("good/") for n in split.test_names])
        level = {k: float(np.median(ref)) for k, (_, ref) in ms.items()}
        averaged = top(np.mean([ms[k][0] / level[k] for k in AVERAGED], axis=0))
        rows = {"averaged (the thirteenth session's product)": averaged}
        scale = np.median(averaged[good])
        for alone in ("X", "Xn", "Xs", "Xns"):
            maps, ref = ms[alone]
            for q in (50, 75):
                rows[f"averaged or {alone} q{q}"] = np.maximum(averaged / scale, top(maps) / np.percentile(ref, q))
        for label, scores in rows.items():
            a = per_kind(scores, split)
            table.setdefault(label, []).append(a["all"])
            print(f"{fam:8s} {label:44s} {a['all']:.3f}  " + "  ".join(f"{k} {a[k]:.3f}" for k in KINDS if k in a),
                  flush=True)
    for label, values in table.items():
        print(f"RESULT seed {args.synth_seed} {label:44s} mean {np.mean(values):.3f} worst {np.min(values):.3f}")


if __name__ == "__main__":
    main()

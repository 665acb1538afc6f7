"""Members that reject alone: the product averages its members' levelled maps, so a mark only one member
sees counts a fifth (§9, §15: grass cracks 4.35 spreads deep against the good parts' 3.20 stay under the
threshold). Here the averaged map (the product's members T, R, L, P and, by the product's gate, the whitened
``Wp17`` or the extremes ``X``, levelled, σ 1) is joined by maximum with one or more maps of their own, each
put on one scale by its good parts' median maximum, so a part is rejected when any path is far beyond its good
parts. Alone paths compared:

- extremes families: ``X`` / ``Xn`` (|x − median| per cell, with / without σ 1), ``Xs`` / ``Xns`` (dark and
  bright excursions apart, each over its own good level, with / without σ 1), ``Xnd`` / ``Xnb`` (the dark /
  the bright excursions alone, without σ 1);
- whitened families: ``Wp17`` / ``Wp17n`` (the whitened map with / without σ 1);
- ``+P``, ``+T``, ``+R``, ``+L``: the best of those and one more member alone;
- ``q50`` / ``q75``: the alone paths' scale at that percentile of their out-of-fold good maxima (else q50).

The averaged map's scale is the median of the good *test* parts' scores (a fit takes it from out-of-fold
calibration parts; the median of 200 parts is what both estimate). fusion.py's caches are used and filled.

    .venv/bin/python benchmarks/experiments/alone.py --synth-seed 7
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import common as C
from fusion import cached, product_kurtosis
from train_probe import synth_set
from whiten import per_kind

KINDS = ("crack", "scratch", "spot")
ALONE = {"X": ("X", "Xn", "Xs", "Xns", "Xnd", "Xnb"), "Wp17": ("Wp17", "Wp17n")}
BEST = {"X": "Xns", "Wp17": "Wp17"}  # what the product builds (trainer fit's alone members)


def top(maps: np.ndarray) -> np.ndarray:
    return maps.reshape(len(maps), -1).max(1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--synth-seed", type=int, default=7)
    ap.add_argument("--families", default="", help="comma list (default: all eight)")
    ap.add_argument("--test", default="200x30")
    ap.add_argument("--cache", type=Path, default=C.CACHE / "fusion")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    C.set_threads(args.threads)
    good_n, defect_n = (int(v) for v in args.test.split("x"))
    prefix = ("" if args.synth_seed == 0 else f"s{args.synth_seed}-") + f"t{args.test}-"
    root = synth_set(args.synth_seed, good_n, defect_n)
    families = args.families.split(",") if args.families else sorted(p.name for p in root.iterdir() if p.is_dir())
    table: dict[str, list[float]] = {}
    for fam in families:
        split = C.load_mvtec(root / fam)
        size = split.train[0].shape
        gated = "Wp17" if product_kurtosis(split, size) < 0.5 else "X"
        names = ("T", "R", "L", "P", gated, *ALONE[gated])
        ms = {n: cached(n, prefix + fam, split, size, args.cache) for n in names}
        good = np.array([n.startswith("good/") for n in split.test_names])
        level = {k: float(np.median(ref)) for k, (_, ref) in ms.items()}
        averaged = top(np.mean([ms[k][0] / level[k] for k in ("T", "R", "L", "P", gated)], axis=0))
        scale = np.median(averaged[good])

        def alone(name: str, q: float = 50) -> np.ndarray:
            maps, ref = ms[name]
            return top(maps) / np.percentile(ref, q)

        rows = {"averaged (the thirteenth session's product)": averaged}
        for name in ALONE[gated]:
            for q in (50, 75):
                rows[f"averaged or {name} alone q{q}"] = np.maximum(
                    averaged / scale, alone(name, q))
        best = np.maximum(averaged / scale, alone(BEST[gated]))
        rows["averaged or the product's alone path"] = best
        for extra in ("P", "T", "R", "L"):
            rows[f"... and {extra} alone"] = np.maximum(best, alone(extra))
        for label, scores in rows.items():
            a = per_kind(scores, split)
            key = label if "alone q" not in label else f"{label} ({gated} families)"
            table.setdefault(key, []).append(a["all"])
            print(f"{fam:13s} {gated:4s} {label:44s} {a['all']:.3f}  "
                  + "  ".join(f"{k} {a[k]:.3f}" for k in KINDS if k in a), flush=True)
    for label, values in table.items():
        print(f"RESULT seed {args.synth_seed} {label:56s} mean {np.mean(values):.3f} worst {np.min(values):.3f} "
              f"({len(values)} families)")


if __name__ == "__main__":
    main()

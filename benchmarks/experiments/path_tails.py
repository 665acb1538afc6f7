"""Threshold rules for a score that is the maximum of paths (§16: the averaged map and the members that reject
alone). The fourteenth session's products calibrate one Fréchet on the maximum of the weighed paths' out-of-
fold scores; on grass the dark path's good maxima have a tail of their own that this fit under-reaches (31 of
4 000 good test parts rejected for a 0.5 % target, 16 before the alone paths).

``fit`` fits a product through ``trainer.fit.fit_product`` (the product's code, default options) and keeps
what the fit saw and what the test set gives, per path: the out-of-fold calibration path scores (N×P, before
the weights), the weights and powers of the product's join, and the test parts' path scores from the bundle
(weights folded in, powers not), with labels.
``rules`` recomputes the threshold for a 0.5 % target by each rule and counts good test parts above it and
defects at or below it, pooled over products:

- ``max``: the fourteenth session's rule (trainer/calibration.py's ``calibrate_threshold`` on the maximum of
  the weighed paths);
- ``paths``: the product's rule since (``calibrate_paths``: ``indep`` with its fallbacks);
- ``indep``: each path's own Fréchet, the threshold where the maximum of independent paths exceeds it with
  the target probability (positively associated paths exceed it less often: conservative);
- ``union``: the same with the union bound (sum of the paths' exceedance probabilities);
- ``bonf``: the largest of the paths' own thresholds at target / P (weighed);
- ``maxpath``: the largest of the paths' own thresholds at the target (each path alone meets it);
- ``tails/equal shares`` (§18): a different score, not only a threshold — each path standardised by its own
  fitted law before the maximum (``tail_joined``), each path exceeding with an equal share of the target;
- ``product join`` (§19): the product's since, ``trainer.calibration.join_paths`` — the same where every
  path's tail fits, the median join (``paths``) where one does not.

    .venv/bin/python benchmarks/experiments/path_tails.py fit --root SYNTH_ROOT --families grass --out DIR
    .venv/bin/python benchmarks/experiments/path_tails.py rules DIR...
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import trainer.fit as fit_module
from linewatch.bundle.registry import load_bundle
from trainer.calibration import (
    PathJoin,
    calibrate_paths,
    calibrate_threshold,
    fit_tail,
    join_paths,
    median_gains,
    solve_falling,
)
from trainer.evaluate import mvtec_test_set
from trainer.export import export_for_scoring
from trainer.fit import FitOptions, fit_product, preprocessed_batches
from trainer.metrics import auroc
from trainer.scorer import OnnxruntimeScorer

TARGET = 0.005


def fit_one(root: Path, family: str, out: Path, threads: int, seed: int, bright_alone: bool = False) -> None:
    seen: list[np.ndarray] = []
    real_join = fit_module.join_paths

    def join(path_scores: np.ndarray, target_frr: float) -> PathJoin:
        seen.append(np.array(path_scores, np.float64))
        return real_join(path_scores, target_frr)

    fit_module.join_paths = join
    try:
        fitted = fit_product(root / family / "train" / "good", f"synth-{family}", out / "products",
                             "default", FitOptions(threads=threads, seed=seed, bright_alone=bright_alone))
    finally:
        fit_module.join_paths = real_join
    bundle = load_bundle(fitted.path)
    m = bundle.manifest
    items = mvtec_test_set(root / family)
    cal = seen[0]
    product = real_join(cal, TARGET)
    if cal.shape[1] > 1:
        # the paths with the bundle's weights but without its powers: every rule below starts from them
        linear = m.scoring.model_copy(update={"alone_exponents": ()})
        graph = export_for_scoring(fitted.backbone, linear, m.input.height, m.input.width, path_scores=True)
        scorer = OnnxruntimeScorer(graph, bundle.prototype_mean, bundle.prototype_scale, threads)
        test = np.concatenate([scorer.path_scores(b) for b in preprocessed_batches(
            [i.path for i in items], m.input, m.preprocessing, 8)])
    else:  # no member rejects alone: one path
        scorer = OnnxruntimeScorer(bundle.model_path, bundle.prototype_mean, bundle.prototype_scale, threads)
        test = np.concatenate([scorer.run(b)[1] for b in preprocessed_batches(
            [i.path for i in items], m.input, m.preprocessing, 8)])[:, None]
    gains_ = np.asarray([1.0, *product.gains])
    np.savez(out / f"{family}.npz", cal=cal, gains=gains_, test=test, exponents=np.asarray(product.exponents),
             defect=np.asarray([i.defect or "" for i in items]), threshold=m.threshold)
    good = np.asarray([not i.defect for i in items])
    print(f"{family}: paths {cal.shape[1]}, gains {gains_}, exponents {product.exponents}, threshold "
          f"{m.threshold:.4f} ({m.calibration.method}), test FR "
          f"{int(np.sum(product.joined(test / gains_)[good] > m.threshold))}", flush=True)


def thresholds(w: np.ndarray) -> dict[str, float]:
    """Each rule's threshold for N×P weighed calibration path scores."""
    out = {"max": calibrate_threshold(w.max(1), TARGET).threshold, "paths": calibrate_paths(w, TARGET).threshold}
    fits = [fit_tail(w[:, p]) for p in range(w.shape[1])]  # the product's per-path fits, without fallbacks
    lo, hi = float(w.min()), float(w.max())
    out["indep"] = solve_falling(lambda t: 1 - math.prod(1 - f.exceedance(t) for f in fits), TARGET, lo, hi)
    out["union"] = solve_falling(lambda t: sum(f.exceedance(t) for f in fits), TARGET, lo, hi)
    out["bonf"] = max(f.quantile(1 - TARGET / len(fits)) for f in fits)
    out["maxpath"] = max(f.quantile(1 - TARGET) for f in fits)
    return out


def weights(cal: np.ndarray, scheme: str) -> np.ndarray:
    """Per path the factor on its scores: ``median`` puts each path's median at the averaged path's (the
    product), ``tail`` its fitted (1 - target) quantile, ``q90`` its 90th percentile."""
    if scheme == "median":
        return np.asarray([1.0, *median_gains(cal)])
    if scheme == "q90":
        at = np.percentile(cal, 90, axis=0)
    else:
        at = np.asarray([fit_tail(cal[:, p]).quantile(1 - TARGET) for p in range(cal.shape[1])])
    return at[0] / at


def tail_joined(cal: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, float]:
    """Each path on its own fitted tail (RESULTS.md §18): a part's score is the largest over the paths of its
    path score standardised by that path's law, (log x − loc) / scale for a Fréchet (monotone in −log P(good
    score > x), so the ranking is that of the most unusual path), and the threshold where each of the P paths
    exceeds with 1 − (1 − target)^(1/P). Every path's fit is used, even where KS rejects it."""
    fits = [fit_tail(cal[:, p]) for p in range(cal.shape[1])]
    score = np.max([f.standardised(test[:, p]) for p, f in enumerate(fits)], axis=0)
    share = 1.0 - (1.0 - TARGET) ** (1.0 / len(fits))
    return score, -math.log(-math.log1p(-share))  # the standard Gumbel's (1 − share) quantile


def rules(dirs: list[Path]) -> None:
    totals: dict[str, list[float]] = {}
    n_good = n_def = n_prod = 0
    for d in dirs:
        for f in sorted(d.glob("*.npz")):
            z = np.load(f)
            good = z["defect"] == ""
            raw = z["test"] / z["gains"]  # the test path scores before the product's weights
            n_good += int(good.sum())
            n_def += int((~good).sum())
            n_prod += 1
            row = []
            for scheme in ("median", "tail", "q90"):
                g = weights(z["cal"], scheme)
                score = (raw * g).max(1)
                auc = auroc(score, ~good) or 0.0
                ts = thresholds(z["cal"] * g)
                if scheme == "median" and "exponents" not in z:  # fitted before the tail join: one of these
                    assert min(abs(ts[r] - float(z["threshold"])) for r in ("max", "paths")) < 1e-3 * ts["max"]
                row.append(f"{scheme} auc {auc:.3f}")
                for name, t in ts.items():
                    if scheme != "median" and name not in ("paths", "max"):
                        continue
                    fr, miss = int(np.sum(score[good] > t)), int(np.sum(score[~good] <= t))
                    tot = totals.setdefault(f"{scheme}/{name}", [0, 0, 0.0])
                    tot[0] += fr
                    tot[1] += miss
                    tot[2] += auc
                    row.append(f"{name} FR {fr} miss {miss}")
            score, t = tail_joined(z["cal"], raw)
            auc = auroc(score, ~good) or 0.0
            fr, miss = int(np.sum(score[good] > t)), int(np.sum(score[~good] <= t))
            tot = totals.setdefault("tails/equal shares", [0, 0, 0.0])
            tot[0], tot[1], tot[2] = tot[0] + fr, tot[1] + miss, tot[2] + auc
            row.append(f"tails auc {auc:.3f} FR {fr} miss {miss}")
            join = join_paths(z["cal"], TARGET)  # the product's join: the tails where they fit, else medians
            if "exponents" in z:
                assert abs(join.calibration.threshold - float(z["threshold"])) < 1e-4 * float(z["threshold"])
            score, t = join.joined(raw), join.calibration.threshold
            auc = auroc(score, ~good) or 0.0
            fr, miss = int(np.sum(score[good] > t)), int(np.sum(score[~good] <= t))
            tot = totals.setdefault("product join", [0, 0, 0.0])
            tot[0], tot[1], tot[2] = tot[0] + fr, tot[1] + miss, tot[2] + auc
            row.append(f"product {'tails' if join.exponents else 'medians'} auc {auc:.3f} FR {fr} miss {miss}")
            print(f"{d.name}/{f.stem:13s} P {z['cal'].shape[1]}  " + " ".join(row))
    print(f"pooled over {n_prod} products, {n_good} good / {n_def} defective test parts:")
    for name, (fr, miss, auc) in totals.items():
        print(f"  {name:16s} mean AUROC {auc / n_prod:.4f}  good rejected {int(fr):4d} ({100 * fr / n_good:.2f} %)"
              f"  defects missed {int(miss):4d} ({100 * miss / n_def:.1f} %)")


def main() -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fit")
    f.add_argument("--root", type=Path, required=True, help="a synth set: one MVTec-layout folder per family")
    f.add_argument("--families", required=True)
    f.add_argument("--out", type=Path, required=True)
    f.add_argument("--threads", type=int, default=1)
    f.add_argument("--seed", type=int, default=0, help="the fit's seed (folds)")
    f.add_argument("--bright-alone", action="store_true", help="trainer fit --bright-alone (§21)")
    r = sub.add_parser("rules")
    r.add_argument("dirs", type=Path, nargs="+")
    args = ap.parse_args()
    if args.cmd == "fit":
        args.out.mkdir(parents=True, exist_ok=True)
        for family in args.families.split(","):
            fit_one(args.root, family, args.out, args.threads, args.seed, args.bright_alone)
    else:
        rules(args.dirs)


if __name__ == "__main__":
    main()

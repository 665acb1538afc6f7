"""Threshold rules compared on the out-of-fold good scores a fit calibrated from, against the test scores.

`benchmarks/accuracy.py --work W` writes, per product, the fit's calibration scores
(`reports/<config>/<product>/calibration_scores.json`) beside the evaluation's `metrics.json`. This script
recomputes the threshold for a 0.5 % false-reject target by each rule and counts the good test parts above it
and the defects at or below it, per product and pooled:

- ``current``: the product's rule (trainer/calibration.py: Gumbel by maximum likelihood, the empirical quantile
  when a KS or a tail test rejects it);
- ``log-gumbel``: a Gumbel fitted to the logarithms of the scores (a Fréchet-like, power-law tail);
- ``gev``: a generalised extreme-value distribution with a free shape (scipy), heavier or lighter tails.

    .venv/bin/python benchmarks/experiments/calibration_rules.py W [--config default]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
from scipy.stats import genextreme

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from trainer.calibration import calibrate_threshold, gumbel_fit, gumbel_quantile

TARGET = 0.005


def log_gumbel(x: np.ndarray) -> float:
    loc, scale = gumbel_fit(np.log(x))
    return math.exp(gumbel_quantile(1 - TARGET, loc, scale))


def gev(x: np.ndarray) -> float:
    c, loc, scale = genextreme.fit(x)
    return float(genextreme.ppf(1 - TARGET, c, loc, scale))


RULES = {"current": lambda x: calibrate_threshold(x, TARGET).threshold, "log-gumbel": log_gumbel, "gev": gev}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("work", type=Path)
    ap.add_argument("--config", default="default")
    args = ap.parse_args()
    total = {k: [0, 0, 0, 0] for k in RULES}
    for report in sorted((args.work / "reports" / args.config).iterdir()):
        cal = np.array(json.loads((report / "calibration_scores.json").read_text()))
        images = json.loads((report / "metrics.json").read_text())["images"]
        good = np.array([i["score"] for i in images if i["defect"] is None])
        bad = np.array([i["score"] for i in images if i["defect"] is not None])
        cells = []
        for name, rule in RULES.items():
            t = rule(cal)
            fr, miss = int((good > t).sum()), int((bad <= t).sum())
            total[name] = [a + b for a, b in zip(total[name], (fr, len(good), miss, len(bad)), strict=True)]
            cells.append(f"{name} {t:.3f}: {fr}/{len(good)} rejected, {miss}/{len(bad)} missed")
        print(f"{report.name:20s} n {len(cal)}, median {np.median(cal):.3f}, max {cal.max():.3f}; good test max "
              f"{good.max():.3f} | " + " | ".join(cells))
    for name, (fr, n_good, miss, n_bad) in total.items():
        print(f"POOLED {name:12s} false rejects {fr}/{n_good} = {100 * fr / n_good:.1f} %, "
              f"misses {miss}/{n_bad} = {100 * miss / n_bad:.1f} %")


if __name__ == "__main__":
    main()

"""benchmarks/accuracy.py's table: what it pools over the synthetic families and the uncertainty it prints
beside each figure (the numbers a closing note quotes come from here)."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.accuracy import Row, format_table, summarise_synthetic
from trainer.metrics import auroc, auroc_interval, rate_upper_bound


def _family(name: str, shift: float, false_rejects: int, rng: np.random.Generator) -> Row:
    good, bad = rng.normal(size=200), rng.normal(size=180) + shift
    scores, labels = np.r_[good, bad], np.r_[np.zeros(200), np.ones(180)]
    row = Row(f"synth/{name}", "default", "256x256", image_auroc=auroc(scores, labels), pixel_auroc=0.99,
              frr=false_rejects / 200, miss=0.1, n_good=200, n_defect=180, fit_s=60.0, eval_s=14.0,
              image_ci=auroc_interval([(scores, labels)]), frr_upper=rate_upper_bound(false_rejects, 200))
    row.extra = {"false_rejects": false_rejects, "test_scores": (scores.tolist(), labels.tolist())}
    return row


def test_the_synthetic_mean_pools_parts_and_resamples_every_family_at_once() -> None:
    rng = np.random.default_rng(0)
    rows = [_family("grass", 1.0, 3, rng), _family("weave", 4.0, 0, rng), _family("brick", 2.0, 1, rng)]
    mean, worst = summarise_synthetic(rows)
    assert mean.image_auroc == pytest.approx(np.mean([r.image_auroc for r in rows]))
    assert worst.image_auroc == min(r.image_auroc for r in rows)
    # 4 false rejects of 600 good parts, pooled; its bound is the pooled count's, not a mean of bounds
    assert mean.frr == pytest.approx(4 / 600)
    assert mean.frr_upper == pytest.approx(rate_upper_bound(4, 600))
    lo, hi = mean.image_ci
    assert lo < mean.image_auroc < hi
    # three families' parts together pin the mean down better than one family's parts pin that family
    assert hi - lo < rows[0].image_ci[1] - rows[0].image_ci[0]
    assert worst.image_ci is None and worst.frr_upper is None

    table = format_table([*rows, mean, worst], "default")
    line = next(ln for ln in table.splitlines() if ln.startswith("synth (mean)"))
    assert f"{lo:.3f}-{hi:.3f}" in line and f"{100 * mean.frr_upper:.1f}%" in line
    assert "95% interval" in table and "FRR<=95%" in table

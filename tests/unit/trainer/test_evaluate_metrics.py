import numpy as np
import pytest

from trainer.calibration import binomial_tail
from trainer.metrics import (
    PixelAuroc,
    auroc,
    auroc_interval,
    heatmap_to_image,
    rate_upper_bound,
    rates_at_threshold,
    roc_curve,
)


def _pairwise_auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    pos, neg = scores[labels == 1], scores[labels == 0]
    diff = pos[:, None] - neg[None, :]
    return float(((diff > 0) + 0.5 * (diff == 0)).mean())


def test_auroc_known_cases() -> None:
    assert auroc([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1]) == 1.0
    assert auroc([0.9, 0.8, 0.2, 0.1], [0, 0, 1, 1]) == 0.0
    assert auroc([0.5, 0.5, 0.5, 0.5], [0, 1, 0, 1]) == 0.5
    # one defect below one of two good parts: 3 of 4 pairs ordered correctly
    assert auroc([0.1, 0.6, 0.5, 0.9], [0, 0, 1, 1]) == 0.75
    assert auroc([0.1, 0.2], [0, 0]) is None


def test_auroc_matches_pairwise_definition_with_ties() -> None:
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 10, size=300).astype(float)  # many ties
    labels = rng.integers(0, 2, size=300)
    assert auroc(scores, labels) == pytest.approx(_pairwise_auroc(scores, labels), abs=1e-12)


def test_roc_curve_area_equals_auroc() -> None:
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, size=200)
    scores = rng.normal(size=200) + labels
    fpr, tpr = roc_curve(scores, labels)
    assert fpr[0] == 0 and tpr[0] == 0 and fpr[-1] == 1 and tpr[-1] == 1
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    assert np.trapezoid(tpr, fpr) == pytest.approx(auroc(scores, labels), abs=1e-12)


def test_auroc_interval_holds_the_figure_and_narrows_with_more_parts() -> None:
    rng = np.random.default_rng(3)

    def test_set(n_good: int, n_defect: int) -> tuple[np.ndarray, np.ndarray]:
        scores = np.r_[rng.normal(size=n_good), rng.normal(size=n_defect) + 1.5]
        return scores, np.r_[np.zeros(n_good), np.ones(n_defect)]

    small, large = test_set(20, 30), test_set(400, 600)
    lo, hi = auroc_interval([small])
    assert lo < auroc(*small) < hi
    lo_l, hi_l = auroc_interval([large])
    assert lo_l < auroc(*large) < hi_l
    assert hi_l - lo_l < 0.4 * (hi - lo)  # width ~ 1/sqrt(n): 20× the parts, under half the width
    # the true AUROC of two unit normals 1.5 apart, Φ(1.5/√2) = 0.856, lies in the large set's interval
    assert lo_l < 0.856 < hi_l
    assert auroc_interval([small], seed=1) != (lo, hi) and auroc_interval([small]) == (lo, hi)


def test_auroc_interval_of_a_mean_over_products() -> None:
    rng = np.random.default_rng(4)
    sets = [(np.r_[rng.normal(size=20), rng.normal(size=30) + shift], np.r_[np.zeros(20), np.ones(30)])
            for shift in (0.5, 1.0, 3.0)]
    lo, hi = auroc_interval(sets)
    assert lo < np.mean([auroc(*s) for s in sets]) < hi
    # perfectly separated parts stay perfectly separated in every resample; ties count half
    assert auroc_interval([([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1])]) == (1.0, 1.0)
    assert auroc_interval([([0.5, 0.5, 0.5, 0.5], [0, 1, 0, 1])]) == (0.5, 0.5)
    assert auroc_interval([([0.1, 0.2], [0, 0])]) is None


def test_rate_upper_bound_is_clopper_pearson() -> None:
    # no event in n parts: the bound solves (1 - p)^n = 0.05
    assert rate_upper_bound(0, 73) == pytest.approx(1 - 0.05 ** (1 / 73), rel=1e-9)
    for count, n in ((3, 160), (1, 40), (10, 640)):
        bound = rate_upper_bound(count, n)
        assert bound is not None and count / n < bound
        # at the bound, seeing `count` or fewer is exactly 5 % likely
        assert 1 - binomial_tail(n, bound, count + 1) == pytest.approx(0.05, abs=1e-9)
    assert rate_upper_bound(5, 5) == 1.0 and rate_upper_bound(0, 0) is None
    with pytest.raises(ValueError, match="outside"):
        rate_upper_bound(6, 5)


def test_pixel_auroc_streams_images_and_matches_exact() -> None:
    rng = np.random.default_rng(2)
    maps = [rng.normal(size=(20, 30)) for _ in range(5)]
    masks = [rng.random((20, 30)) < 0.1 for _ in range(5)]
    for heat, mask in zip(maps, masks, strict=True):
        heat[mask] += 1.5
    acc = PixelAuroc(min(m.min() for m in maps), max(m.max() for m in maps))
    for heat, mask in zip(maps, masks, strict=True):
        acc.add(heat, mask)
    exact = auroc(np.concatenate([m.ravel() for m in maps]), np.concatenate([m.ravel() for m in masks]))
    assert acc.value() == pytest.approx(exact, abs=1e-4)
    assert PixelAuroc(0, 1).value() is None


def test_rates_at_threshold_reject_strictly_above() -> None:
    r = rates_at_threshold([0.1, 0.5, 0.6, 0.5, 0.9], [0, 0, 0, 1, 1], threshold=0.5)
    assert r.false_rejects == 1 and r.false_reject_rate == pytest.approx(1 / 3)
    assert r.misses == 1 and r.miss_rate == pytest.approx(0.5)
    assert rates_at_threshold([0.1], [0], 1.0).miss_rate is None


@pytest.mark.parametrize(("image_hw", "input_hw"), [((80, 100), (80, 100)), ((160, 300), (80, 100))])
def test_heatmap_cell_maps_to_the_centre_of_its_neighbourhood(
    image_hw: tuple[int, int], input_hw: tuple[int, int]
) -> None:
    hh, hw = (input_hw[0] - 6) // 2 - 12, (input_hw[1] - 6) // 2 - 12
    heat = np.zeros((hh, hw), np.float32)
    heat[5, 9] = 1.0  # neighbourhood rows 10..41, cols 18..49 of the model input: centre (26, 34)
    up = heatmap_to_image(heat, input_hw, image_hw)
    assert up.shape == image_hw
    y, x = np.unravel_index(np.argmax(up), up.shape)
    sy, sx = image_hw[0] / input_hw[0], image_hw[1] / input_hw[1]
    assert abs((y + 0.5) - 26 * sy) <= sy and abs((x + 0.5) - 34 * sx) <= sx
    assert up.max() <= 1.0 and up.min() >= 0.0

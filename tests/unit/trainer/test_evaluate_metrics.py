import numpy as np
import pytest

from trainer.metrics import PixelAuroc, auroc, heatmap_to_image, rates_at_threshold, roc_curve


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

"""linewatch.surfaces: texture families (a product per style, a part per rng) and defects with masks."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from linewatch.surfaces import DEFECT_KINDS, FAMILIES, inject_defect, render_surface


def test_families_and_kinds_cover_the_issue() -> None:
    assert {"stripes", "fractal", "weave", "speckle", "random_phase"} <= set(FAMILIES)
    assert {"brick", "grass", "gravel"} <= set(FAMILIES)  # scikit-image is part of the train extra
    assert set(DEFECT_KINDS) == {"scratch", "spot", "crack", "dent", "missing_pattern", "noise_patch"}


@pytest.mark.parametrize("family", FAMILIES)
def test_surface_is_uint8_of_requested_shape_and_textured(family: str) -> None:
    image = render_surface(family, 96, 160, np.random.default_rng(0), style_seed=3)
    assert image.dtype == np.uint8 and image.shape == (96, 160)
    assert image.std() > 8.0  # a texture, not a flat field
    assert 5 < image.mean() < 250  # not saturated


@pytest.mark.parametrize("family", FAMILIES)
def test_parts_of_one_product_are_alike_but_not_identical(family: str) -> None:
    parts = [render_surface(family, 128, 128, np.random.default_rng(i), style_seed=7) for i in range(4)]
    again = render_surface(family, 128, 128, np.random.default_rng(0), style_seed=7)
    np.testing.assert_array_equal(parts[0], again)  # deterministic under (rng seed, style)
    assert not np.array_equal(parts[0], parts[1])
    means = [p.mean() for p in parts]
    stds = [p.std() for p in parts]
    assert max(means) - min(means) < 12.0
    assert max(stds) / min(stds) < 1.35


def test_products_differ_by_style() -> None:
    images = [render_surface("stripes", 128, 128, np.random.default_rng(0), style_seed=s) for s in range(6)]
    looks = {(round(float(img.mean())), round(float(img.std()))) for img in images}
    assert len(looks) >= 5


def test_unknown_family_and_tiny_size_are_refused_by_name() -> None:
    with pytest.raises(ValueError, match="velvet"):
        render_surface("velvet", 64, 64, np.random.default_rng(0))
    with pytest.raises(ValueError, match="8×8"):
        render_surface("fractal", 4, 64, np.random.default_rng(0))


@pytest.mark.parametrize("kind", DEFECT_KINDS)
def test_defect_is_visible_localised_and_masked(kind: str) -> None:
    for trial, family in enumerate(FAMILIES):
        image = render_surface(family, 192, 256, np.random.default_rng(trial), style_seed=trial)
        original = image.copy()
        defective, mask = inject_defect(image, kind, np.random.default_rng(100 + trial))
        np.testing.assert_array_equal(image, original)  # the input is left alone
        assert defective.dtype == np.uint8 and defective.shape == image.shape
        assert mask.dtype == np.uint8 and mask.shape == image.shape
        assert set(np.unique(mask).tolist()) == {0, 255}
        area = float((mask > 0).mean())
        assert 0.0005 < area < 0.06, f"{kind} on {family}: mask covers {area:.4f} of the image"
        diff = np.abs(defective.astype(np.int32) - image.astype(np.int32))
        assert diff[mask > 0].mean() > 15.0, f"{kind} on {family} is not visible"
        # Nothing changes far from the mask: a defect is local.
        reach = int(0.06 * min(image.shape))
        near = cv2.dilate(mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * reach + 1, 2 * reach + 1)))
        assert int(((diff > 2) & (near == 0)).sum()) == 0


@pytest.mark.parametrize("kind", DEFECT_KINDS)
def test_defect_is_deterministic_under_rng_and_varies_with_it(kind: str) -> None:
    image = render_surface("fractal", 128, 128, np.random.default_rng(0), style_seed=1)
    a, mask_a = inject_defect(image, kind, np.random.default_rng(5))
    b, mask_b = inject_defect(image, kind, np.random.default_rng(5))
    _, mask_c = inject_defect(image, kind, np.random.default_rng(6))
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(mask_a, mask_b)
    assert not np.array_equal(mask_a, mask_c)


def test_defect_scales_with_image_size_and_takes_16_bit() -> None:
    small = render_surface("weave", 128, 128, np.random.default_rng(0), style_seed=2)
    large = render_surface("weave", 512, 512, np.random.default_rng(0), style_seed=2)
    _, mask_small = inject_defect(small, "spot", np.random.default_rng(3))
    _, mask_large = inject_defect(large, "spot", np.random.default_rng(3))
    # Same rng → same relative size: the covered fraction is about the same at both resolutions.
    assert (mask_large > 0).mean() == pytest.approx((mask_small > 0).mean(), rel=0.3)

    deep = small.astype(np.uint16) * 257
    defective, mask = inject_defect(deep, "scratch", np.random.default_rng(1))
    assert defective.dtype == np.uint16 and mask.any()
    assert np.abs(defective.astype(np.int64) - deep)[mask > 0].mean() > 15 * 257


def test_bad_defect_requests_are_refused() -> None:
    image = np.full((64, 64), 128, np.uint8)
    with pytest.raises(ValueError, match="hole"):
        inject_defect(image, "hole", np.random.default_rng(0))
    with pytest.raises(ValueError, match="2-D"):
        inject_defect(np.zeros((64, 64, 3), np.uint8), "spot", np.random.default_rng(0))
    with pytest.raises(ValueError, match="too small"):
        inject_defect(np.zeros((8, 64), np.uint8), "spot", np.random.default_rng(0))

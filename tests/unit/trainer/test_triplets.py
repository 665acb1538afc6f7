"""Triplet sampling (DESIGN 2.3): shapes, same-position positives, scales, negative kinds, determinism."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from trainer.triplets import LOCAL_KINDS, NEGATIVE_KINDS, ImageClass, TripletConfig, Triplets, TripletSampler

KIND = {kind: code for code, kind in enumerate(NEGATIVE_KINDS)}


def banded_classes(n_classes: int = 3, n_images: int = 4) -> list[ImageClass]:
    """Class k lives in its own grey band (20 + 70k …); image i of a class is the class's texture + 4i.

    So a patch tells its class by its level, and two patches of one class at the same position differ by a
    constant (the images' offsets), at every scale (resizing is linear).
    """
    classes = []
    for k in range(n_classes):
        rng = np.random.default_rng(k)
        base = cv2.resize(
            rng.uniform(0, 1, (64, 64)).astype(np.float32), (512, 512), interpolation=cv2.INTER_CUBIC
        )
        base = (base - base.min()) / (base.max() - base.min())
        images = [np.round(20 + 70 * k + 40 * base + 4 * i).astype(np.uint8) for i in range(n_images)]
        classes.append(ImageClass(f"class{k}", images))
    return classes


def class_of(patches: np.ndarray) -> np.ndarray:
    grey = (patches.astype(np.float32).mean(axis=(1, 2)) + 1.0) * 127.5
    return np.floor((grey - 20) / 70).astype(int)


def test_shapes_dtype_range_and_kind_labels() -> None:
    sampler = TripletSampler(banded_classes(), TripletConfig(p_noise=0.3, p_local=0.3))
    t = sampler.sample(1000, np.random.default_rng(0))
    assert len(t) == 1000
    for patches in (t.anchor, t.positive, t.negative):
        assert patches.shape == (1000, 32, 32) and patches.dtype == np.float16
        assert patches.min() >= -1.0 and patches.max() <= 1.0
    assert set(np.unique(t.negative_kind)) <= set(range(len(NEGATIVE_KINDS)))
    assert sum(t.kind_counts().values()) == 1000


def test_positive_is_the_same_position_of_another_image_of_the_class() -> None:
    sampler = TripletSampler(banded_classes(), TripletConfig(p_noise=0.5))
    t = sampler.sample(2000, np.random.default_rng(1))
    diff = t.anchor.astype(np.float32) - t.positive.astype(np.float32)
    # Same position: the difference is the constant offset between the two images, at every pixel.
    assert diff.std(axis=(1, 2)).max() < 2e-3
    # Another image: that offset is a nonzero multiple of 4 grey levels.
    offset = np.abs(diff.mean(axis=(1, 2))) * 127.5
    assert offset.min() > 3.0
    np.testing.assert_allclose(offset / 4, np.round(offset / 4), atol=0.05)
    assert (class_of(t.anchor) == class_of(t.positive)).all()
    # Positions vary: anchors are not all the same patch.
    assert len({round(float(v), 2) for v in t.anchor[:, 0, 0]}) > 50


def test_single_image_class_pairs_a_patch_with_itself() -> None:
    classes = banded_classes(n_classes=2, n_images=1)
    t = TripletSampler(classes, TripletConfig(p_noise=0.5)).sample(300, np.random.default_rng(2))
    np.testing.assert_array_equal(t.anchor, t.positive)


def test_source_is_rescaled_to_each_scale_about_equally_often() -> None:
    ramp = np.tile(np.linspace(0, 255, 600), (500, 1)).astype(np.uint8)  # any size: resized per scale
    sampler = TripletSampler([ImageClass("ramp", [ramp, ramp])], TripletConfig(p_noise=1.0))
    t = sampler.sample(4000, np.random.default_rng(3))
    # The ramp rises by 2 (the whole input range) over S pixels at scale S: 31 px across a patch.
    rise = t.anchor[:, 16, 31].astype(np.float32) - t.anchor[:, 16, 0].astype(np.float32)
    scale = 62.0 / rise
    for side in (512, 256, 128, 64):
        share = float((np.abs(scale / side - 1) < 0.15).mean())
        assert share == pytest.approx(0.25, abs=0.04), f"scale {side}: {share:.3f}"


def test_negative_kind_probabilities_follow_the_config() -> None:
    sampler = TripletSampler(banded_classes(), TripletConfig(p_noise=0.3, p_local=0.4))
    counts = sampler.sample(20000, np.random.default_rng(4)).kind_counts()
    assert counts["noise"] / 20000 == pytest.approx(0.3, abs=0.02)
    assert counts["cross_class"] / 20000 == pytest.approx(0.3, abs=0.02)
    for kind in LOCAL_KINDS:
        assert counts[kind] / 20000 == pytest.approx(0.1, abs=0.015)

    paper = TripletSampler(banded_classes(), TripletConfig(p_noise=0.0)).sample(500, np.random.default_rng(5))
    assert paper.kind_counts()["cross_class"] == 500
    # One class: no other class to take negatives from, so all negatives are synthetic.
    alone = TripletSampler(
        banded_classes()[:1], TripletConfig(p_noise=0.2, p_local=0.2, local_kinds=("blob",))
    )
    counts = alone.sample(4000, np.random.default_rng(6)).kind_counts()
    assert counts["cross_class"] == 0 and counts["noise"] / 4000 == pytest.approx(0.5, abs=0.04)
    with pytest.raises(ValueError, match="synthetic negatives"):
        TripletSampler(banded_classes()[:1], TripletConfig(p_noise=0.0))


def test_cross_class_negatives_come_from_another_class() -> None:
    t = TripletSampler(banded_classes(), TripletConfig(p_noise=0.5)).sample(3000, np.random.default_rng(7))
    cross = t.negative_kind == KIND["cross_class"]
    assert (class_of(t.negative[cross]) != class_of(t.anchor[cross])).all()
    noise = t.negative_kind == KIND["noise"]
    assert (class_of(t.negative[noise]) == class_of(t.anchor[noise])).mean() > 0.95


def _deviation(t_anchor: np.ndarray, t_negative: np.ndarray) -> np.ndarray:
    """|negative − anchor − the constant image offset|: what the corruption changed."""
    diff = t_negative.astype(np.float32) - t_anchor.astype(np.float32)
    return np.abs(diff - np.median(diff, axis=(1, 2), keepdims=True))


def test_noise_patch_is_a_rectangle_of_the_configured_size() -> None:
    config = TripletConfig(p_noise=1.0, noise_size_px=(6, 10), noise_sigma=(0.4, 0.5))
    t = TripletSampler(banded_classes(), config).sample(500, np.random.default_rng(8))
    changed = _deviation(t.anchor, t.negative) > 0.02
    rows, cols = changed.any(axis=2), changed.any(axis=1)
    height, width = rows.sum(axis=1), cols.sum(axis=1)
    assert (height <= 10).all() and (width <= 10).all()
    assert np.median(height) >= 6 and np.median(width) >= 6
    # Outside the rectangle nothing changes (the base is a same-class patch at the same position).
    for i in range(50):
        outside = ~(rows[i][:, None] & cols[i][None, :])
        assert not changed[i][outside].any()


@pytest.mark.parametrize("kind", LOCAL_KINDS)
def test_local_negatives_change_the_patch_locally(kind: str) -> None:
    config = TripletConfig(p_noise=0.0, p_local=1.0, local_kinds=(kind,))
    t = TripletSampler(banded_classes(), config).sample(600, np.random.default_rng(9))
    assert (t.negative_kind == KIND[kind]).all()
    dev = _deviation(t.anchor, t.negative)
    changed = (dev > 0.03).mean(axis=(1, 2))
    assert np.median(changed) < 0.4  # local: most of the patch is untouched
    assert np.median(dev.max(axis=(1, 2))) > 0.05  # but something visible changed
    assert (class_of(t.negative) == class_of(t.anchor)).mean() > 0.9  # same texture, locally altered


def test_plain_classes_use_whole_images_without_augmentation() -> None:
    # Image i of class k has the constant level 30 + 50k + 2i: its level names its class and image.
    plain = [
        ImageClass(
            f"c{k}", [np.full((32, 32), 30 + 50 * k + 2 * i, np.uint8) for i in range(5)], augment=False
        )
        for k in range(4)
    ]
    t = TripletSampler(plain, TripletConfig(p_noise=1.0, p_local=0.0)).sample(2000, np.random.default_rng(10))
    assert (t.negative_kind == KIND["cross_class"]).all()  # no noise corruption for plain classes

    def level(x: np.ndarray) -> np.ndarray:
        return np.round((x[:, 0, 0].astype(np.float32) + 1) * 127.5).astype(int) - 30

    a, b, c = level(t.anchor), level(t.positive), level(t.negative)
    for patches in (t.anchor, t.positive, t.negative):
        assert (patches.astype(np.float32).std(axis=(1, 2)) == 0).all()  # whole images, untouched
    assert (a // 50 == b // 50).all() and (a != b).all()
    assert (c // 50 != a // 50).all()


def test_mixed_plain_and_augmented_classes_follow_weights() -> None:
    plain = [
        ImageClass(f"c{k}", [np.full((32, 32), 10 * k, np.uint8)] * 3, augment=False, weight=0.5)
        for k in range(2)
    ]
    sampler = TripletSampler(banded_classes() + plain, TripletConfig(p_noise=0.5))
    t = sampler.sample(8000, np.random.default_rng(11))
    flat = t.anchor.astype(np.float32).std(axis=(1, 2)) == 0
    assert flat.mean() == pytest.approx(1.0 / 4.0, abs=0.02)  # weights 1+1+1 vs 0.5+0.5


def test_deterministic_under_seed() -> None:
    sampler = TripletSampler(banded_classes(), TripletConfig(p_noise=0.3, p_local=0.4))
    first = sampler.sample(5000, np.random.default_rng(42))  # more than one vectorised chunk
    again = sampler.sample(5000, np.random.default_rng(42))
    other = sampler.sample(5000, np.random.default_rng(43))
    for x, y in (
        (first.anchor, again.anchor),
        (first.positive, again.positive),
        (first.negative, again.negative),
    ):
        np.testing.assert_array_equal(x, y)
    np.testing.assert_array_equal(first.negative_kind, again.negative_kind)
    assert not np.array_equal(first.anchor, other.anchor)


def test_invalid_configs_are_refused() -> None:
    with pytest.raises(ValueError, match="p_noise"):
        TripletConfig(p_noise=0.7, p_local=0.5)
    with pytest.raises(ValueError, match="scale"):
        TripletConfig(scales=(512, 16))
    with pytest.raises(ValueError, match="local_kinds"):
        TripletConfig(p_local=0.2, local_kinds=("sparkle",))
    with pytest.raises(ValueError, match="no class"):
        TripletSampler([ImageClass("empty", [])])


# ---------------------------------------------------------------------------------------- local_contrast


def noise_class(grey_std: float, seed: int = 0) -> ImageClass:
    """One image of i.i.d. grey noise around mid-grey with the given spread (one scale, no resizing)."""
    image = np.random.default_rng(seed).normal(128, grey_std, (64, 64))
    return ImageClass(f"noise{grey_std:g}", [np.clip(np.round(image), 0, 255).astype(np.uint8)])


def local_negatives(cls: ImageClass, kind: str, contrast: str, n: int = 600, seed: int = 0) -> np.ndarray:
    """What a ``kind`` negative changed, per triplet: negative − positive (a single image is its own
    positive and base, so the difference is the defect alone)."""
    config = TripletConfig(
        scales=(64,), p_noise=0.0, p_local=1.0, local_kinds=(kind,), local_contrast=contrast
    )
    t = TripletSampler([cls], config).sample(n, np.random.default_rng(seed))
    assert (t.negative_kind == KIND[kind]).all()
    return t.negative.astype(np.float32) - t.positive.astype(np.float32)


@pytest.mark.parametrize("kind", ["blob", "curve"])
def test_relative_contrast_follows_the_patch_spread(kind: str) -> None:
    def peak(grey_std: float, contrast: str) -> float:
        diff = local_negatives(noise_class(grey_std), kind, contrast)
        return float(np.median(np.abs(diff).max(axis=(1, 2))))

    # Texture 3× busier: a relative defect is about 3× stronger, an absolute one the same.
    assert peak(30.0, "relative") / peak(10.0, "relative") == pytest.approx(3.0, rel=0.25)
    assert peak(30.0, "absolute") / peak(10.0, "absolute") == pytest.approx(1.0, rel=0.15)
    # On a calm texture the relative defect stays within a few times its spread (10 grey = 0.078 units).
    assert 0.078 < peak(10.0, "relative") < 4 * 0.078


def test_relative_contrast_has_a_floor_on_flat_patches() -> None:
    diff = local_negatives(ImageClass("flat", [np.full((64, 64), 128, np.uint8)]), "curve", "relative")
    peaks = np.abs(diff).max(axis=(1, 2))
    assert (peaks > 0.03).mean() > 0.95  # visible although the patch has no spread at all


def test_relative_curves_are_thin_mostly_dark_and_cross_the_patch() -> None:
    diff = local_negatives(noise_class(20.0), "curve", "relative", n=1000)
    peak = np.abs(diff).max(axis=(1, 2), keepdims=True)
    changed = np.abs(diff) > 0.2 * peak
    assert np.median(changed.mean(axis=(1, 2))) < 0.25  # a line, not an area
    dark = diff.sum(axis=(1, 2)) < 0
    assert dark.mean() == pytest.approx(0.7, abs=0.05)

    # Crossing: the line runs from one side of the patch to another far more often than an absolute one.
    def crossing(ch: np.ndarray) -> np.ndarray:
        rows, cols = ch.any(axis=2), ch.any(axis=1)
        return rows[:, 0].astype(int) + rows[:, -1] + cols[:, 0] + cols[:, -1] >= 2

    absolute = local_negatives(noise_class(20.0), "curve", "absolute", n=1000)
    abs_changed = np.abs(absolute) > 0.2 * np.abs(absolute).max(axis=(1, 2), keepdims=True)
    assert crossing(changed).mean() > 0.85
    assert crossing(changed).mean() > crossing(abs_changed).mean() + 0.2


@pytest.mark.parametrize("kind", ["blob", "curve"])
def test_relative_negatives_change_the_patch_locally(kind: str) -> None:
    config = TripletConfig(p_noise=0.0, p_local=1.0, local_kinds=(kind,), local_contrast="relative")
    t = TripletSampler(banded_classes(), config).sample(600, np.random.default_rng(9))
    dev = _deviation(t.anchor, t.negative)
    assert np.median((dev > 0.03).mean(axis=(1, 2))) < 0.5  # most of the patch is untouched
    assert np.median(dev.max(axis=(1, 2))) > 0.05  # but something visible changed
    assert (class_of(t.negative) == class_of(t.anchor)).mean() > 0.9


def test_local_contrast_changes_only_blobs_and_curves_and_is_seeded() -> None:
    def sample(contrast: str, seed: int, n: int) -> Triplets:
        config = TripletConfig(scales=(256,), p_noise=0.3, p_local=0.4, local_contrast=contrast)
        return TripletSampler(banded_classes(), config).sample(n, np.random.default_rng(seed))

    relative, again = sample("relative", 42, 5000), sample("relative", 42, 5000)  # > one vectorised chunk
    for name in ("anchor", "positive", "negative", "negative_kind"):
        np.testing.assert_array_equal(getattr(relative, name), getattr(again, name))
    # Within one chunk and scale the draws agree up to the first blob or curve: the absolute and relative
    # samples share patches and kinds, and their noise and cross-class negatives; blobs and curves differ.
    relative, absolute = sample("relative", 42, 2000), sample("absolute", 42, 2000)
    np.testing.assert_array_equal(relative.negative_kind, absolute.negative_kind)
    np.testing.assert_array_equal(relative.anchor, absolute.anchor)
    affected = np.isin(relative.negative_kind, [KIND["blob"], KIND["curve"]])
    differs = (relative.negative != absolute.negative).any(axis=(1, 2))
    assert differs[affected].mean() > 0.9
    assert not differs[np.isin(relative.negative_kind, [KIND["cross_class"], KIND["noise"]])].any()
    with pytest.raises(ValueError, match="local_contrast"):
        TripletConfig(local_contrast="loud")


def test_centred_images_present_their_mean_as_zero_like_fits_image_mean_normalisation() -> None:
    rng = np.random.default_rng(0)
    bright = [np.clip(200 + rng.normal(0, 10, (128, 128)), 0, 255).astype(np.uint8) for _ in range(3)]
    dark = [np.clip(60 + rng.normal(0, 10, (128, 128)), 0, 255).astype(np.uint8) for _ in range(3)]
    classes = [ImageClass("bright", bright), ImageClass("dark", dark)]
    def sample(centre: bool) -> Triplets:
        config = TripletConfig(scales=(64,), p_noise=0.0, centre_images=centre)
        return TripletSampler(classes, config).sample(400, np.random.default_rng(1))

    plain, centred = sample(False), sample(True)
    plain_means = plain.anchor.astype(np.float32).mean(axis=(1, 2))
    centred_means = centred.anchor.astype(np.float32).mean(axis=(1, 2))
    assert np.all(np.abs(plain_means) > 0.4)  # 200 and 60 grey: +0.57 and -0.53
    assert np.all(np.abs(centred_means) < 0.05)  # each image's own mean is mid-grey
    # the texture is kept: the same spread either way
    np.testing.assert_allclose(centred.anchor.astype(np.float32).std(axis=(1, 2)).mean(),
                               plain.anchor.astype(np.float32).std(axis=(1, 2)).mean(), rtol=0.05)

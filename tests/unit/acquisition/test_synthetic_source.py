from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from pydantic import ValidationError

from linewatch.acquisition.synthetic import SyntheticCameraConfig, SyntheticSource
from linewatch.errors import CameraTimeoutError, SourceExhaustedError
from linewatch.surfaces import DEFECT_KINDS


def synthetic(**fields: object) -> SyntheticSource:
    base: dict[str, object] = {"kind": "synthetic", "width": 96, "height": 64, "rate_hz": None}
    source = SyntheticSource(SyntheticCameraConfig.model_validate({**base, **fields}))
    source.open()
    return source


def test_defect_rate_is_respected() -> None:
    source = synthetic(defect_rate=0.25, seed=3)
    truths = [source.read(timeout_s=1.0).ground_truth for _ in range(400)]
    assert all(t is not None for t in truths)
    fraction = np.mean([t.defective for t in truths if t is not None])
    assert 0.18 <= fraction <= 0.32  # Binomial(400, 0.25): ± 3.5 standard deviations
    never = synthetic(defect_rate=0.0)
    assert not any(never.read(1.0).ground_truth.defective for _ in range(50))  # type: ignore[union-attr]
    always = synthetic(defect_rate=1.0, defect_kinds=["spot", "scratch"])
    kinds = {always.read(1.0).ground_truth.defect_kind for _ in range(40)}  # type: ignore[union-attr]
    assert kinds == {"spot", "scratch"}


def test_ground_truth_masks_mark_where_the_image_was_changed() -> None:
    defective = synthetic(defect_rate=1.0, family="stripes", seed=7)
    good = synthetic(defect_rate=0.0, family="stripes", seed=7)  # the same parts without defects
    for _ in range(2 * len(DEFECT_KINDS)):
        frame, part = defective.read(1.0), good.read(1.0)
        truth = frame.ground_truth
        assert truth is not None and truth.defective and truth.defect_kind in DEFECT_KINDS
        assert truth.mask is not None and truth.mask.shape == frame.image.shape == (64, 96)
        assert truth.mask.dtype == np.uint8 and set(np.unique(truth.mask)) <= {0, 255}
        inside = truth.mask > 0
        assert inside.any()
        change = np.abs(frame.image.astype(int) - part.image.astype(int))
        assert change[inside].sum() >= 0.7 * change.sum(), truth.defect_kind
        assert change[inside].mean() >= 20 * max(change[~inside].mean(), 0.01), truth.defect_kind
        assert part.ground_truth is not None and part.ground_truth.mask is None


def test_same_seed_same_frames_other_seed_other_frames() -> None:
    a, b = synthetic(defect_rate=0.5, seed=11), synthetic(defect_rate=0.5, seed=11)
    other = synthetic(defect_rate=0.5, seed=12)
    for _ in range(10):
        fa, fb, fo = a.read(1.0), b.read(1.0), other.read(1.0)
        assert fa.frame_id == fb.frame_id
        assert np.array_equal(fa.image, fb.image)
        ta, tb = fa.ground_truth, fb.ground_truth
        assert ta is not None and tb is not None
        assert (ta.defective, ta.defect_kind) == (tb.defective, tb.defect_kind)
        assert (ta.mask is None and tb.mask is None) or np.array_equal(ta.mask, tb.mask)  # type: ignore[arg-type]
        assert not np.array_equal(fa.image, fo.image)
    # Re-opening restarts the sequence.
    first = a.render(0)[0]
    a.close()
    a.open()
    again = a.read(1.0)
    assert again.frame_id == 0 and np.array_equal(again.image, first)


def test_parts_of_one_product_look_alike_and_products_differ() -> None:
    part1, part2 = (synthetic(family="weave", style_seed=1, defect_rate=0.0).render(k)[0] for k in (0, 1))
    other_product = synthetic(family="weave", style_seed=2, defect_rate=0.0).render(0)[0]
    assert part1.dtype == np.uint8 and part1.shape == (64, 96)
    assert not np.array_equal(part1, part2)  # individual parts vary
    assert not np.array_equal(part1, other_product)


def test_frame_count_and_pacing() -> None:
    source = synthetic(frame_count=3)
    assert [source.read(1.0).frame_id for _ in range(3)] == [0, 1, 2]
    with pytest.raises(SourceExhaustedError, match="all 3 frames delivered"):
        source.read(1.0)
    slow = synthetic(rate_hz=0.5)
    slow.read(timeout_s=0.01)
    with pytest.raises(CameraTimeoutError):
        slow.read(timeout_s=0.01)


def test_config_validation_names_the_problem() -> None:
    with pytest.raises(ValidationError, match="unknown surface family 'marble'"):
        SyntheticCameraConfig(family="marble")
    with pytest.raises(ValidationError, match=r"unknown defect kinds \['rust'\]"):
        SyntheticCameraConfig(defect_kinds=["spot", "rust"])
    with pytest.raises(ValidationError, match="defect_rate"):
        SyntheticCameraConfig(defect_rate=1.5)
    with pytest.raises(ValidationError) as caught:
        SyntheticCameraConfig.model_validate({"kind": "synthetic", "defect_ratio": 0.2})
    assert caught.value.errors()[0]["loc"] == ("defect_ratio",)


def test_the_synthetic_camera_does_not_import_torch() -> None:
    code = "import sys, linewatch.acquisition.synthetic; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0

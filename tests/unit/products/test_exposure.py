"""The bundle's exposure range: frames whose brightness or contrast no good part had are not scored."""

import json

import pytest
from daemon_support import make_manifest
from pydantic import ValidationError

from linewatch.bundle.manifest import BundleManifest, Exposure


def _range() -> Exposure:
    return Exposure(level_min=0.2, level_max=0.6, contrast_min=0.1, contrast_max=0.2, level_margin=0.2,
                    contrast_factor=2.0, n_images=150)


def test_frames_inside_the_margins_pass_the_check_outside_they_are_named() -> None:
    e = _range()
    assert e.problem(0.4, 0.15) is None
    assert e.problem(0.0, 0.05) is None and e.problem(0.8, 0.4) is None  # the margins themselves
    assert e.problem(0.4, 3.0) is None  # more contrast than any good part: a defect or noise, for the score
    assert e.problem(-1.0, 0.0) == "image mean -1.000 outside the good parts' 0.000..0.800"  # black
    assert e.problem(1.0, 0.0) == "image mean 1.000 outside the good parts' 0.000..0.800"  # saturated
    assert e.problem(0.4, 0.0) == "image contrast 0.000 below the good parts' 0.050 (blank or flat frame)"


def test_a_range_upside_down_is_refused() -> None:
    with pytest.raises(ValidationError, match="min <= max"):
        Exposure(level_min=0.6, level_max=0.2, contrast_min=0.1, contrast_max=0.2, level_margin=0.0,
                 contrast_factor=1.0, n_images=1)


def test_a_manifest_from_before_exposure_and_normalise_still_reads() -> None:
    raw = json.loads(make_manifest().model_dump_json())
    del raw["exposure"], raw["preprocessing"]["normalise"]
    old = BundleManifest.model_validate(raw)
    assert old.exposure is None and old.preprocessing.normalise == "none"
    with_range = json.loads(make_manifest().model_copy(update={"exposure": _range()}).model_dump_json())
    assert BundleManifest.model_validate(with_range).exposure == _range()

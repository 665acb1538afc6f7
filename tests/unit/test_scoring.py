"""Scoring: threshold decision, defect location in image pixels, heatmap rendering."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
from daemon_support import DarknessBackend, dark_square_image, make_manifest

from linewatch.bundle.manifest import Preprocessing
from linewatch.frames import VerdictKind
from linewatch.inference.preprocessing import preprocess
from linewatch.scoring.decision import decide
from linewatch.scoring.heatmap import heatmap_in_input_pixels, heatmap_png, render_heatmap
from linewatch.scoring.location import defect_location


def test_score_above_threshold_fails_at_or_below_passes() -> None:
    assert decide(1.5, 1.0) == (VerdictKind.FAIL, None)
    assert decide(1.0, 1.0) == (VerdictKind.PASS, None)
    assert decide(0.2, 1.0) == (VerdictKind.PASS, None)


@pytest.mark.parametrize("score", [math.nan, math.inf, -math.inf])
def test_non_finite_score_is_never_a_pass(score: float) -> None:
    verdict, reason = decide(score, 1.0)
    assert verdict is VerdictKind.NOT_INSPECTED
    assert reason is not None and "not finite" in reason


def test_location_maps_heatmap_cell_to_receptive_field_centre() -> None:
    manifest = make_manifest(height=512, width=512)
    # Cell (0, 0) sees input pixels [0, 32): centre 16. Same image size as the input: no rescale.
    loc = defect_location((0, 0), (512, 512), manifest)
    assert (loc.x, loc.y) == (16, 16)
    loc = defect_location((10, 100), (512, 512), manifest)
    assert (loc.x, loc.y) == (100 * 2 + 16, 10 * 2 + 16)


def test_location_scales_to_camera_resolution_and_stays_inside() -> None:
    manifest = make_manifest(height=256, width=256)
    loc = defect_location((50, 20), (1024, 512), manifest)  # camera image 1024 high, 512 wide
    assert loc.x == round((20 * 2 + 16) * 512 / 256)
    assert loc.y == round((50 * 2 + 16) * 1024 / 256)
    edge = defect_location((10_000, 10_000), (100, 80), manifest)
    assert 0 <= edge.x < 80 and 0 <= edge.y < 100


def test_location_of_a_dark_square_through_a_backend_lands_on_it() -> None:
    manifest = make_manifest(height=128, width=128)
    # Camera at 2× the model's input size; the square fills exactly one 32×32 neighbourhood of the input.
    image = dark_square_image(256, x=180, y=60, side=64)
    backend = DarknessBackend(manifest)
    out = backend.infer(preprocess(image, manifest.input, Preprocessing())[None], want_heatmap=False)[0]
    loc = defect_location(out.argmax_rc, (256, 256), manifest)
    assert abs(loc.x - 212) <= 4 and abs(loc.y - 92) <= 4


def test_heatmap_is_placed_on_the_input_grid_at_the_receptive_field_centres() -> None:
    manifest = make_manifest(height=64, width=64)
    sc = manifest.scoring
    heat = np.zeros((sc.heatmap_height, sc.heatmap_width), dtype=np.float32)
    heat[3, 5] = 10.0
    grid = heatmap_in_input_pixels(heat, manifest)
    assert grid.shape == (64, 64)
    y, x = np.unravel_index(int(np.argmax(grid)), grid.shape)
    assert abs(int(x) - (5 * 2 + 16)) <= 1 and abs(int(y) - (3 * 2 + 16)) <= 1


def test_rendered_heatmap_is_hot_where_the_distance_is_high_and_keeps_aspect() -> None:
    manifest = make_manifest(height=64, width=64, threshold=1.0)
    sc = manifest.scoring
    heat = np.zeros((sc.heatmap_height, sc.heatmap_width), dtype=np.float32)
    heat[:, -4:] = 3.0  # right edge far above the threshold
    image = np.full((300, 1200), 128, dtype=np.uint8)
    out = render_heatmap(image, heat, manifest, threshold=1.0, max_side=400)
    assert out.shape == (100, 400, 3) and out.dtype == np.uint8
    left, right = out[50, 120], out[50, 290]  # input x ≈ 19 and ≈ 46 (cells 13..16)
    assert right[2] > left[2] + 60  # red channel (BGR): hot on the right
    assert left[0] > right[0]  # blue where the distance is low


def test_heatmap_png_decodes_to_the_rendered_image() -> None:
    manifest = make_manifest(height=64, width=64)
    sc = manifest.scoring
    rng = np.random.default_rng(0)
    heat = rng.random((sc.heatmap_height, sc.heatmap_width), dtype=np.float32)
    image = (rng.random((64, 64)) * 65535).astype(np.uint16)
    png = heatmap_png(image, heat, manifest, threshold=0.5)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    decoded = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(decoded, render_heatmap(image, heat, manifest, threshold=0.5))

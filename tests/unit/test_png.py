"""The one PNG encoder: lossless for every image kind the daemon keeps or publishes; clear errors."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from linewatch.png import encode_png


@pytest.mark.parametrize(
    ("shape", "dtype"),
    [((48, 64), np.uint8), ((48, 64), np.uint16), ((48, 64, 3), np.uint8)],
    ids=["mono8", "mono16", "bgr8"],
)
def test_png_round_trip_is_lossless(shape: tuple[int, ...], dtype: type) -> None:
    rng = np.random.default_rng(1)
    image = rng.integers(0, np.iinfo(dtype).max, size=shape, endpoint=True).astype(dtype)
    png = encode_png(image)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    decoded = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED)
    assert decoded.dtype == image.dtype
    np.testing.assert_array_equal(decoded, image)


@pytest.mark.parametrize(
    ("image", "problem"),
    [
        (np.zeros((0, 0), np.uint8), "shape"),
        (np.zeros((4, 4), np.float32), "float32"),
        (np.zeros((2, 2, 2, 2), np.uint8), "shape"),
    ],
)
def test_png_refuses_what_it_cannot_hold_by_name(image: np.ndarray, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        encode_png(image)

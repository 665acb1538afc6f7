"""Camera image → model input (``linewatch.inference.preprocessing``), shared by daemon and trainer."""

import numpy as np
import pytest

from linewatch.bundle.manifest import InputSpec, Preprocessing
from linewatch.inference.preprocessing import preprocess

SPEC = InputSpec(height=40, width=60)


def _surface(offset: int = 0, dtype: type = np.uint8, full: int = 255) -> np.ndarray:
    rng = np.random.default_rng(0)
    base = rng.integers(60, 160, size=(80, 120)).astype(np.int64) * (full // 255)
    return np.clip(base + offset * (full // 255), 0, full).astype(dtype)


def test_values_map_from_the_dtype_range_onto_minus_one_to_one() -> None:
    for dtype, full in ((np.uint8, 255), (np.uint16, 65535)):
        image = np.zeros((40, 60), dtype)
        image[:, 30:] = full
        x = preprocess(image, SPEC, Preprocessing())
        assert x.shape == (1, 40, 60) and x.dtype == np.float32
        assert x[0, :, :30].max() == -1.0 and x[0, :, 30:].min() == 1.0


def test_colour_and_size_are_brought_to_the_input_spec() -> None:
    bgr = np.dstack([_surface()] * 3)
    gray = preprocess(_surface(), SPEC, Preprocessing())
    np.testing.assert_allclose(preprocess(bgr, SPEC, Preprocessing()), gray, atol=1 / 255)
    with pytest.raises(ValueError, match="unsupported image shape"):
        preprocess(np.zeros((4, 4, 2), np.uint8), SPEC, Preprocessing())


@pytest.mark.parametrize("dtype, full", [(np.uint8, 255), (np.uint16, 65535)])
def test_image_mean_normalisation_removes_the_lighting_level_not_the_texture(dtype: type, full: int) -> None:
    prep = Preprocessing(normalise="image_mean")
    plain = preprocess(_surface(0, dtype, full), SPEC, Preprocessing())
    dark = preprocess(_surface(0, dtype, full), SPEC, prep)
    bright = preprocess(_surface(40, dtype, full), SPEC, prep)  # the same part under brighter light
    assert abs(float(dark.mean())) < 1e-5 and abs(float(bright.mean())) < 1e-5
    np.testing.assert_allclose(dark, bright, atol=1e-5)
    np.testing.assert_allclose(dark, plain - plain.mean(), atol=1e-5)  # contrast kept, level removed
    assert Preprocessing().normalise == "none"  # bundles written before the field keep their meaning

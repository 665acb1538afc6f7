"""Camera image → model input, exactly as the bundle's ``Preprocessing`` says.

The trainer imports these functions too (fit, evaluate), so the daemon and the trainer cannot drift apart.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from linewatch.bundle.manifest import InputSpec, Preprocessing

_INTERPOLATION = {"area": cv2.INTER_AREA, "linear": cv2.INTER_LINEAR}


def to_grayscale(image: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """2-D grayscale of the same dtype. Accepts H×W, H×W×1, H×W×3 (BGR) and H×W×4 (BGRA)."""
    if image.ndim == 2:
        return image
    if image.ndim == 3 and image.shape[2] == 1:
        return image[:, :, 0]
    if image.ndim == 3 and image.shape[2] == 3:
        return cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    if image.ndim == 3 and image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2GRAY)
    raise ValueError(f"unsupported image shape {image.shape}: expected H×W or H×W×{{1,3,4}}")


def full_scale(dtype: np.dtype[Any]) -> float:
    """The value that maps to the top of the model's range: the dtype maximum (uint8 255, uint16 65535)."""
    if np.issubdtype(dtype, np.integer):
        return float(np.iinfo(dtype).max)
    return 1.0  # float images are taken as already in [0, 1]


def scale_image(
    image: npt.NDArray[Any], spec: InputSpec, prep: Preprocessing
) -> npt.NDArray[np.float32]:
    """One image → H×W float32, gray, at the input size, values mapped onto ``prep.value_range`` (everything
    but ``normalise``: the daemon checks a frame's exposure here, where the level is still there)."""
    gray = to_grayscale(image)
    if gray.shape != (spec.height, spec.width):
        gray = cv2.resize(gray, (spec.width, spec.height), interpolation=_INTERPOLATION[prep.interpolation])
    low, high = prep.value_range
    scale = (high - low) / full_scale(gray.dtype)
    return gray.astype(np.float32) * np.float32(scale) + np.float32(low)


def normalise_image(
    scaled: npt.NDArray[np.float32], prep: Preprocessing, mean: float | None = None
) -> npt.NDArray[np.float32]:
    """``scale_image``'s output → the model input 1×H×W (``normalise="image_mean"``: the image's own mean
    subtracted, so values can reach twice the range around 0; ``mean`` when the caller has it already)."""
    if prep.normalise == "image_mean":
        level = float(cv2.mean(scaled)[0]) if mean is None else mean
        scaled = scaled - np.float32(level)
    return scaled[np.newaxis, :, :]


def exposure_of(scaled: npt.NDArray[np.float32]) -> tuple[float, float]:
    """(mean, standard deviation) of a ``scale_image`` output: what ``Exposure`` ranges are made of. One
    OpenCV pass (double accumulators): this runs on the inference thread for every frame."""
    mean, std = cv2.meanStdDev(scaled)
    return float(mean[0, 0]), float(std[0, 0])


def preprocess(
    image: npt.NDArray[Any], spec: InputSpec, prep: Preprocessing
) -> npt.NDArray[np.float32]:
    """One image → 1×H×W float32 model input, exactly as the bundle says. Batch by stacking along a new
    first axis."""
    return normalise_image(scale_image(image, spec, prep), prep)


def heatmap_to_image_xy(
    row: int, col: int, image_shape: tuple[int, int], spec: InputSpec, stride: int, receptive_field: int
) -> tuple[int, int]:
    """Heatmap cell → (x, y) of the centre of its receptive field in the original image's pixels."""
    y_in = row * stride + receptive_field / 2.0
    x_in = col * stride + receptive_field / 2.0
    height, width = image_shape
    return round(x_in * width / spec.width), round(y_in * height / spec.height)

"""Heatmap rendering: the distance map as a colour map over the camera image, encoded as PNG.

Called by the scoring stage only for frames whose heatmap is going to be published, never on the
inference thread (rendering and PNG encoding cost more than a millisecond per frame).
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from linewatch.bundle.manifest import BundleManifest
from linewatch.inference.preprocessing import full_scale, to_grayscale
from linewatch.png import encode_png

# Colour scale: 0 → dark blue, the threshold → the middle of the map, 2 × threshold and above → dark red,
# so the same colour means the same thing on every heatmap of a product.
THRESHOLD_FRACTION = 0.5
OVERLAY_WEIGHT = 0.5


def heatmap_in_input_pixels(
    heatmap: npt.NDArray[np.float32], manifest: BundleManifest
) -> npt.NDArray[np.float32]:
    """The H'×W' distance map placed on the model's input grid (height×width).

    Cell (r, c) describes the 32×32 neighbourhood whose centre is at (r·stride + rf/2, c·stride + rf/2);
    the border the network cannot see (half a receptive field) is filled with the map's minimum.
    """
    spec, scoring = manifest.input, manifest.scoring
    if heatmap.ndim != 2:
        raise ValueError(f"heatmap must be 2-D, got shape {heatmap.shape}")
    stride = scoring.stride
    rows, cols = heatmap.shape
    up = cv2.resize(
        np.ascontiguousarray(heatmap, dtype=np.float32),
        (cols * stride, rows * stride),
        interpolation=cv2.INTER_LINEAR,
    )
    canvas = np.full((spec.height, spec.width), float(np.min(heatmap)), dtype=np.float32)
    offset = scoring.receptive_field // 2 - stride // 2
    h = min(up.shape[0], spec.height - offset)
    w = min(up.shape[1], spec.width - offset)
    canvas[offset : offset + h, offset : offset + w] = up[:h, :w]
    return canvas


def render_heatmap(
    image: npt.NDArray[Any],
    heatmap: npt.NDArray[np.float32],
    manifest: BundleManifest,
    threshold: float,
    max_side: int = 512,
) -> npt.NDArray[np.uint8]:
    """BGR uint8 overlay of the colour-mapped distance map on the (grayscale) image.

    The output has the image's aspect ratio and at most ``max_side`` pixels on its longer side.
    """
    gray = to_grayscale(image)
    height, width = gray.shape
    factor = min(1.0, max_side / max(height, width))
    out_w, out_h = max(1, round(width * factor)), max(1, round(height * factor))
    gray8 = np.clip(gray.astype(np.float32) * (255.0 / full_scale(gray.dtype)), 0, 255).astype(np.uint8)
    base = cv2.resize(gray8, (out_w, out_h), interpolation=cv2.INTER_AREA)
    dist = cv2.resize(
        heatmap_in_input_pixels(heatmap, manifest), (out_w, out_h), interpolation=cv2.INTER_LINEAR
    )
    top = threshold / THRESHOLD_FRACTION if threshold > 0 else float(np.max(dist)) or 1.0
    levels = np.clip(dist / top * 255.0, 0, 255).astype(np.uint8)
    colour = cv2.applyColorMap(levels, cv2.COLORMAP_JET)
    base_bgr = cv2.cvtColor(base, cv2.COLOR_GRAY2BGR)
    blended = cv2.addWeighted(base_bgr, 1.0 - OVERLAY_WEIGHT, colour, OVERLAY_WEIGHT, 0)
    return np.asarray(blended, dtype=np.uint8)


def heatmap_png(
    image: npt.NDArray[Any],
    heatmap: npt.NDArray[np.float32],
    manifest: BundleManifest,
    threshold: float,
    max_side: int = 512,
) -> bytes:
    """``render_heatmap`` + ``encode_png`` in one call."""
    return encode_png(render_heatmap(image, heatmap, manifest, threshold, max_side))

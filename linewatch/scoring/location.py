"""Defect location: the heatmap maximum's cell mapped back to the camera image's pixels."""

from __future__ import annotations

from linewatch.bundle.manifest import BundleManifest
from linewatch.frames import DefectLocation
from linewatch.inference.preprocessing import heatmap_to_image_xy


def defect_location(
    argmax_rc: tuple[int, int], image_shape: tuple[int, int], manifest: BundleManifest
) -> DefectLocation:
    """Centre of the 32×32 neighbourhood at heatmap cell ``argmax_rc``, in pixels of an image of
    ``image_shape`` (height, width), clamped inside the image."""
    row, col = argmax_rc
    x, y = heatmap_to_image_xy(
        row,
        col,
        image_shape,
        manifest.input,
        manifest.scoring.stride,
        manifest.scoring.receptive_field,
    )
    height, width = image_shape
    return DefectLocation(x=min(max(x, 0), width - 1), y=min(max(y, 0), height - 1))

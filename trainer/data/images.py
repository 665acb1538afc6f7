"""Reading images for training: any size, 8 or 16 bit, grayscale; unreadable files are skipped by name.

A data set of thousands of files always has a few bad ones (truncated copies, a stray text file with an
image suffix). One bad file must not end an hour of training: ``ImageLoader`` logs it by name, records
it in ``skipped`` (the provenance of a pretrained backbone lists them) and carries on.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from linewatch.errors import LinewatchError
from linewatch.inference.preprocessing import full_scale, to_grayscale

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".pgm", ".ppm", ".webp"})
_DTYPES = (np.uint8, np.uint16, np.float32)


class DatasetError(LinewatchError):
    """A data set cannot be used (missing folder, no images, unreadable label file); names the path."""


class ImageReadError(DatasetError):
    """One image file cannot be read or decoded."""


def read_image(path: Path) -> npt.NDArray[Any]:
    """The image at ``path`` as a 2-D grayscale array, in its own depth (uint8, uint16 or float32)."""
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        raise ImageReadError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    if data.size == 0:
        raise ImageReadError(f"{path}: empty file")
    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ImageReadError(f"{path}: not a decodable image (corrupt or unsupported format)")
    if image.dtype not in _DTYPES:
        raise ImageReadError(f"{path}: unsupported pixel type {image.dtype} (use 8 or 16 bit)")
    try:
        gray = to_grayscale(image)
    except ValueError as exc:
        raise ImageReadError(f"{path}: {exc}") from exc
    if min(gray.shape) < 1:
        raise ImageReadError(f"{path}: image has no pixels")
    return gray


def list_images(folder: Path, recursive: bool = False) -> list[Path]:
    """Image files in ``folder`` (by suffix, any case), sorted by name."""
    if not folder.is_dir():
        raise DatasetError(f"{folder}: not a directory")
    pattern = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in pattern if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


@dataclass(frozen=True)
class SkippedImage:
    path: Path
    reason: str


@dataclass
class ImageLoader:
    """Reads images, skipping (and recording) the ones that cannot be read."""

    skipped: list[SkippedImage] = field(default_factory=list)

    def read(self, path: Path) -> npt.NDArray[Any] | None:
        try:
            return read_image(path)
        except ImageReadError as exc:
            log.warning("skipping image %s", exc)
            self.skipped.append(SkippedImage(path, str(exc)))
            return None

    def read_all(self, paths: Iterable[Path]) -> list[tuple[Path, npt.NDArray[Any]]]:
        out = []
        for path in paths:
            image = self.read(path)
            if image is not None:
                out.append((path, image))
        return out


def to_unit(image: npt.NDArray[Any]) -> npt.NDArray[np.float32]:
    """Grayscale of any depth → float32 in [0, 1] (by the dtype's full scale, as the daemon does)."""
    return np.asarray(image, dtype=np.float32) / np.float32(full_scale(image.dtype))


def to_uint8(image: npt.NDArray[Any]) -> npt.NDArray[np.uint8]:
    """Grayscale of any depth → uint8 by the dtype's full scale (16 bit: the top 8 bits, rounded)."""
    if image.dtype == np.uint8:
        return np.asarray(image, dtype=np.uint8)
    unit = np.clip(to_unit(image), 0.0, 1.0)
    return np.asarray(np.round(unit * np.float32(255.0)), dtype=np.uint8)

"""The MVTec-AD layout (DESIGN 3.1a): one product per root.

    <root>/train/good/*.png
    <root>/test/good/*.png
    <root>/test/<defect>/*.png
    <root>/ground_truth/<defect>/<name>_mask.png

Several products side by side (the MVTec-AD root itself) are found with ``find_mvtec_roots``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from trainer.data.images import DatasetError, list_images, read_image

GOOD = "good"


@dataclass(frozen=True)
class MvtecSample:
    path: Path
    defect: str  # "good" or the defect type (the test/ sub-folder)
    mask_path: Path | None  # None for good images, and for a defect image without a mask file

    @property
    def is_defective(self) -> bool:
        return self.defect != GOOD


def is_mvtec_root(path: Path) -> bool:
    return (path / "train" / GOOD).is_dir()


def find_mvtec_roots(path: Path) -> list[Path]:
    """``path`` itself if it is an MVTec-layout product, else its sub-folders that are (an MVTec-AD root)."""
    if is_mvtec_root(path):
        return [path]
    if not path.is_dir():
        raise DatasetError(f"{path}: not a directory")
    roots = sorted(p for p in path.iterdir() if p.is_dir() and is_mvtec_root(p))
    if not roots:
        raise DatasetError(f"{path}: no train/good/ here or in any sub-folder (MVTec-AD layout expected)")
    return roots


class MvtecDataset:
    """One product in MVTec-AD layout."""

    def __init__(self, root: Path) -> None:
        if not is_mvtec_root(root):
            raise DatasetError(f"{root}: missing train/good/ (MVTec-AD layout expected)")
        self.root = root
        self.name = root.name

    def train_good(self) -> list[Path]:
        return list_images(self.root / "train" / GOOD)

    def test_good(self) -> list[Path]:
        folder = self.root / "test" / GOOD
        return list_images(folder) if folder.is_dir() else []

    def defect_types(self) -> list[str]:
        test = self.root / "test"
        if not test.is_dir():
            return []
        return sorted(p.name for p in test.iterdir() if p.is_dir() and p.name != GOOD)

    def mask_path(self, defect: str, image: Path) -> Path | None:
        folder = self.root / "ground_truth" / defect
        for candidate in (folder / f"{image.stem}_mask.png", folder / f"{image.stem}.png"):
            if candidate.is_file():
                return candidate
        return None

    def test_samples(self) -> list[MvtecSample]:
        """Every test image, good first, then each defect type in name order."""
        samples = [MvtecSample(p, GOOD, None) for p in self.test_good()]
        for defect in self.defect_types():
            for path in list_images(self.root / "test" / defect):
                samples.append(MvtecSample(path, defect, self.mask_path(defect, path)))
        return samples


def read_mask(sample: MvtecSample, shape: tuple[int, int]) -> npt.NDArray[np.uint8] | None:
    """The sample's mask as uint8 0/255 of ``shape`` (resized nearest if it differs); zeros for a good
    image; None for a defect image without a mask file."""
    if not sample.is_defective:
        return np.zeros(shape, np.uint8)
    if sample.mask_path is None:
        return None
    return binary_mask(read_image(sample.mask_path), shape, sample.mask_path)


# A mask at another resolution of its image is usable; one of another shape belongs to another image.
_MASK_ASPECT_TOLERANCE = 0.02


def binary_mask(mask: npt.NDArray[Any], shape: tuple[int, int], source: Path) -> npt.NDArray[np.uint8]:
    """Any nonzero pixel is defect; resized with nearest neighbour to ``shape`` if it is the image at another
    resolution. A mask of another aspect ratio is refused (``source`` names it): stretched, it would score
    pixels of the wrong places."""
    binary = np.where(mask > 0, 255, 0).astype(np.uint8)
    if binary.shape != shape:
        aspect, wanted = binary.shape[1] / binary.shape[0], shape[1] / shape[0]
        if abs(aspect / wanted - 1.0) > _MASK_ASPECT_TOLERANCE:
            raise DatasetError(f"{source}: mask is {binary.shape[1]}x{binary.shape[0]} (width x height), its "
                               f"image {shape[1]}x{shape[0]}: not the same image")
        binary = np.asarray(
            cv2.resize(binary, (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST), dtype=np.uint8
        )
    return binary

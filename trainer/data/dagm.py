"""The DAGM 2007 layout as published on Kaggle (DESIGN 3.1b).

    <root>/ClassN/{Train,Test}/NNNN.PNG
    <root>/ClassN/{Train,Test}/Label/Labels.txt
    <root>/ClassN/{Train,Test}/Label/NNNN_label.PNG      (ellipse masks of the defects)

``Labels.txt`` starts with a header line (a count such as ``1``), then one tab-separated row per image:
``id  defective(0/1)  image  0  label-file-or-0`` (trailing tabs occur). A defective image may have no
label file (``0``): it keeps its label, without a mask. Rows whose image is missing on disk are skipped
(subsets of DAGM keep the original Labels.txt) and counted.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from trainer.data.images import DatasetError, read_image
from trainer.data.mvtec import binary_mask

log = logging.getLogger(__name__)

SPLITS = ("Train", "Test")
_CLASS_DIR = re.compile(r"^Class(\d+)$")


@dataclass(frozen=True)
class DagmLabel:
    image_id: str
    defective: bool
    image_name: str
    label_name: str | None  # None where the row says 0


@dataclass(frozen=True)
class DagmSample:
    class_name: str
    split: str
    path: Path
    defective: bool
    mask_path: Path | None


def parse_labels(path: Path) -> list[DagmLabel]:
    """Rows of a ``Labels.txt``. Malformed rows are logged with their line number and skipped."""
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    labels = []
    for number, line in enumerate(lines, start=1):
        fields = line.split()
        if not fields or (number == 1 and len(fields) == 1):  # blank line, or the header count
            continue
        if len(fields) < 4 or fields[1] not in ("0", "1"):
            log.warning("%s:%d: skipping malformed row %r", path, number, line)
            continue
        label = fields[4] if len(fields) >= 5 and fields[4] != "0" else None
        labels.append(DagmLabel(fields[0], fields[1] == "1", fields[2], label))
    return labels


class DagmDataset:
    """A DAGM 2007 root with ``ClassN`` folders."""

    def __init__(self, root: Path) -> None:
        if not root.is_dir():
            raise DatasetError(f"{root}: not a directory")
        classes = [p for p in root.iterdir() if p.is_dir() and _CLASS_DIR.match(p.name)]
        if not classes:
            raise DatasetError(f"{root}: no ClassN folders (DAGM 2007 layout expected)")
        self.root = root
        self._classes = sorted(classes, key=lambda p: int(_CLASS_DIR.match(p.name).group(1)))  # type: ignore[union-attr]
        self.missing_rows = 0  # label rows whose image is not on disk

    def classes(self) -> list[str]:
        """Class folder names in numeric order (Class1, Class2, …, Class10)."""
        return [p.name for p in self._classes]

    def samples(self, class_name: str, split: str) -> list[DagmSample]:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        folder = self.root / class_name / split
        if not folder.is_dir():
            return []  # a subset may lack a split
        labels_file = folder / "Label" / "Labels.txt"
        if not labels_file.is_file():
            raise DatasetError(f"{labels_file}: missing (DAGM 2007 layout expected)")
        out = []
        for label in parse_labels(labels_file):
            path = folder / label.image_name
            if not path.is_file():
                self.missing_rows += 1
                continue
            mask = folder / "Label" / label.label_name if label.label_name else None
            if mask is not None and not mask.is_file():
                log.warning("%s: label file %s is missing; keeping the image without a mask", path, mask.name)
                mask = None
            out.append(DagmSample(class_name, split, path, label.defective, mask))
        return out

    def good_train(self, class_name: str) -> list[Path]:
        """The defect-free training images of a class (the paper's prototype and training data)."""
        return [s.path for s in self.samples(class_name, "Train") if not s.defective]


def read_mask(sample: DagmSample, shape: tuple[int, int]) -> npt.NDArray[np.uint8] | None:
    """uint8 0/255 mask of ``shape``: zeros for a good image, None for a defective one without a mask."""
    if not sample.defective:
        return np.zeros(shape, np.uint8)
    if sample.mask_path is None:
        return None
    mask: npt.NDArray[Any] = read_image(sample.mask_path)
    return binary_mask(mask, shape, sample.mask_path)

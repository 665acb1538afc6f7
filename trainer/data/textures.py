"""A folder of texture classes (DESIGN 3.1c), e.g. Kylberg: one sub-folder per class, images inside
(searched recursively, so ``<class>/<sample>/*.png`` works too)."""

from __future__ import annotations

from pathlib import Path

from trainer.data.images import DatasetError, list_images


def texture_classes(root: Path) -> dict[str, list[Path]]:
    """Class name (sub-folder name) → its image files, for every sub-folder that holds images."""
    if not root.is_dir():
        raise DatasetError(f"{root}: not a directory")
    classes = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        images = list_images(folder, recursive=True)
        if images:
            classes[folder.name] = images
    if not classes:
        raise DatasetError(f"{root}: no sub-folder with images (one sub-folder per texture class expected)")
    return classes

"""Training classes for the pretraining experiments, all available offline.

- ``synth``: linewatch.surfaces families; one class per (family, style seed), several parts each.
- ``photos``: extra scikit-image photographs with texture (beyond brick/grass/gravel, which the
  surfaces already render), one class each, as random square crops.
- ``ksdd``: KolektorSDD ``train/good`` only (never ``test/``), as square tiles cut at native resolution
  (the parts are 500×~1260; squashing them to a square would distort the texture the fit later sees).

Spec strings (comma-separated): ``synth:FAMILIESxSTYLESxPARTS@SIZE`` (FAMILIES = 'all' or a '+'-list),
``photos:N@SIZE`` (N crops per photograph), ``ksdd:TILE`` (square tile side in px),
``ksddhard:SIDExN`` (N unusual-spot crops and N random crops of SIDE px per train/good image).
"""

from __future__ import annotations

import numpy as np

from trainer.triplets import ImageClass

PHOTOS = ("camera", "moon", "coins", "page", "text", "rocket", "astronaut", "coffee", "chelsea", "hubble_deep_field")


def synth_classes(families: list[str], styles: int, parts: int, size: int, seed: int) -> list[ImageClass]:
    from linewatch.surfaces import FAMILIES, render_surface

    fams = list(FAMILIES) if families == ["all"] else families
    out = []
    for f in fams:
        for s in range(styles):
            style_seed = 10_000 + 97 * s  # disjoint from the styles `trainer synth` evaluates (seed 0)
            rng = np.random.default_rng([seed, FAMILIES.index(f), s])
            out.append(ImageClass(f"{f}/{style_seed}", [render_surface(f, size, size, rng, style_seed) for _ in range(parts)]))
    return out


def photo_classes(n: int, size: int, seed: int) -> list[ImageClass]:
    import cv2
    import skimage.data

    rng = np.random.default_rng(seed)
    out = []
    for name in PHOTOS:
        try:
            img = np.asarray(getattr(skimage.data, name)())
        except Exception:  # a photograph missing from this scikit-image (or its data files)
            continue
        if img.ndim == 3:
            img = cv2.cvtColor(img[..., :3], cv2.COLOR_RGB2GRAY)
        img = img.astype(np.uint8)
        side = min(img.shape[:2])
        crop = min(side, size)
        crops = []
        for _ in range(n):
            y = int(rng.integers(0, img.shape[0] - crop + 1))
            x = int(rng.integers(0, img.shape[1] - crop + 1))
            crops.append(img[y : y + crop, x : x + crop])
        out.append(ImageClass(f"photo/{name}", crops))
    return out


def ksdd_classes(tile: int) -> list[ImageClass]:
    """train/good parts cut into square tiles at native resolution (top, middle, bottom of the part)."""
    from common import KSDD, _read_gray

    tiles = []
    for p in sorted((KSDD / "train" / "good").glob("*")):
        img = _read_gray(str(p))
        h, w = img.shape
        side = min(tile, w, h)
        n = max(1, int(np.ceil(h / side)))
        for y in np.linspace(0, h - side, n).round().astype(int):
            for x in np.linspace(0, w - side, max(1, int(np.ceil(w / side)))).round().astype(int):
                tiles.append(img[y : y + side, x : x + side])
    return [ImageClass("ksdd/train-good", tiles)]


def ksdd_hard_crops(side: int, per_image: int, seed: int) -> list[ImageClass]:
    """train/good crops (native resolution): half centred on the image's most unusual spots (largest local
    deviation of a 4-px-smoothed image from its median: dark pits, edge notches, bright strips), half at
    random. Rare normal structures become frequent anchors, so the features learn that they are normal."""
    import cv2
    from common import KSDD, _read_gray

    rng = np.random.default_rng(seed)
    crops = []
    for p in sorted((KSDD / "train" / "good").glob("*")):
        img = _read_gray(str(p))
        h, w = img.shape
        dev = np.abs(cv2.GaussianBlur(img.astype(np.float32), (0, 0), 4) - np.median(img))
        dev[: side // 2], dev[h - side // 2 :], dev[:, : side // 2], dev[:, w - side // 2 :] = 0, 0, 0, 0
        for _ in range(per_image):
            y, x = np.unravel_index(int(np.argmax(dev)), dev.shape)
            dev[max(0, y - 24) : y + 24, max(0, x - 24) : x + 24] = 0  # next spot elsewhere
            y = int(np.clip(y + rng.integers(-side // 4, side // 4 + 1) - side // 2, 0, h - side))
            x = int(np.clip(x + rng.integers(-side // 4, side // 4 + 1) - side // 2, 0, w - side))
            crops.append(img[y : y + side, x : x + side])
            ry, rx = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
            crops.append(img[ry : ry + side, rx : rx + side])
    return [ImageClass("ksdd/hard-crops", crops)]


def build(spec: str, seed: int) -> list[ImageClass]:
    classes: list[ImageClass] = []
    for part in spec.split(","):
        kind, _, arg = part.partition(":")
        if kind == "synth":
            body, _, size = arg.partition("@")
            fams, styles, parts = body.split("x")
            classes += synth_classes(fams.split("+"), int(styles), int(parts), int(size or 512), seed)
        elif kind == "photos":
            n, _, size = arg.partition("@")
            classes += photo_classes(int(n), int(size or 512), seed)
        elif kind == "ksdd":
            classes += ksdd_classes(int(arg or 500))
        elif kind == "ksddhard":
            side, _, per = arg.partition("x")
            classes += ksdd_hard_crops(int(side or 64), int(per or 20), seed)
        elif kind.startswith("weight="):
            continue
        else:
            raise SystemExit(f"unknown data spec {part!r}")
    return classes

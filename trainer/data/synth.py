"""``trainer synth``: synthetic textured surfaces with defects and masks, in MVTec-AD layout.

One product per family (a fixed style drawn from ``--seed``); with several families each product gets
its own sub-folder ``OUT/<family>/``, with one family ``OUT`` is the product itself:

    train/good/000.png  test/good/000.png  test/<defect>/000.png  ground_truth/<defect>/000_mask.png

plus ``synth.json`` (family, style seed, counts, seed) so the set can be regenerated exactly.
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

from linewatch.surfaces import DEFECT_KINDS, FAMILIES, inject_defect, render_surface

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SynthProduct:
    family: str
    style_seed: int
    size: int
    n_train: int
    n_test_good: int
    n_test_defect: int  # per defect kind
    defects: tuple[str, ...]
    seed: int


def _write_png(path: Path, image: npt.NDArray[np.uint8]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), image):
        raise OSError(f"could not write {path}")


# The random streams of a product's parts: split 0 train, 1 good test parts, 2 the clean part under a defect,
# 3 the defect drawn on it (research scripts re-draw a test part's defect from these: spot_templates.py).
TRAIN, TEST_GOOD, TEST_CLEAN, TEST_DEFECT = 0, 1, 2, 3


def part_rng(product: SynthProduct, split: int, index: int) -> np.random.Generator:
    return np.random.default_rng([product.seed, FAMILIES.index(product.family), split, index])


def render_part(product: SynthProduct, split: int, index: int) -> npt.NDArray[np.uint8]:
    """Part ``index`` of ``split`` (the defective parts' clean surfaces are split TEST_CLEAN)."""
    rng = part_rng(product, split, index)
    return render_surface(product.family, product.size, product.size, rng, product.style_seed)


def defect_index(kind_position: int, i: int) -> int:
    """The part index of the ``i``-th test part of the defect kind at ``kind_position`` in ``defects``."""
    return 1000 * (kind_position + 1) + i


def write_product(product: SynthProduct, root: Path) -> int:
    """Render one product into ``root``; returns the number of images written (masks not counted)."""
    count = 0
    for i in range(product.n_train):
        _write_png(root / "train" / "good" / f"{i:03d}.png", render_part(product, TRAIN, i))
        count += 1
    for i in range(product.n_test_good):
        _write_png(root / "test" / "good" / f"{i:03d}.png", render_part(product, TEST_GOOD, i))
        count += 1
    for k, kind in enumerate(product.defects):
        for i in range(product.n_test_defect):
            index = defect_index(k, i)
            defective, mask = inject_defect(render_part(product, TEST_CLEAN, index), kind,
                                            part_rng(product, TEST_DEFECT, index))
            _write_png(root / "test" / kind / f"{i:03d}.png", defective)
            _write_png(root / "ground_truth" / kind / f"{i:03d}_mask.png", mask)
            count += 1
    (root / "synth.json").write_text(json.dumps(asdict(product), indent=2) + "\n")
    return count


def style_seed_for(seed: int, family: str) -> int:
    """The product style of ``family`` under run seed ``seed`` (stable across runs and family lists)."""
    return seed * 1000 + FAMILIES.index(family)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True, help="output directory (created)")
    parser.add_argument(
        "--families",
        nargs="+",
        choices=FAMILIES,
        default=list(FAMILIES),
        metavar="FAMILY",
        help=f"texture families, one product each (default: all of {', '.join(FAMILIES)})",
    )
    parser.add_argument(
        "--defects",
        nargs="+",
        choices=DEFECT_KINDS,
        default=list(DEFECT_KINDS),
        metavar="KIND",
        help=f"defect kinds in test/ (default: all of {', '.join(DEFECT_KINDS)})",
    )
    parser.add_argument("--n-train", type=int, default=40, help="good training images per product")
    parser.add_argument("--n-test-good", type=int, default=20, help="good test images per product")
    parser.add_argument(
        "--n-test-defect", type=int, default=5, help="defective test images per product and defect kind"
    )
    parser.add_argument("--size", type=int, default=256, help="image side length in pixels")
    parser.add_argument("--seed", type=int, default=0, help="run seed: fixes every product's style and part")


def run(args: argparse.Namespace) -> int:
    counts = (args.n_train, args.n_test_good, args.n_test_defect)
    if min(counts) < 0 or args.size < 32:
        log.error("counts must be >= 0 and --size >= 32 (got counts %s, size %d)", counts, args.size)
        return 2
    families = list(dict.fromkeys(args.families))  # keep order, drop repeats
    for family in families:
        product = SynthProduct(
            family=family,
            style_seed=style_seed_for(args.seed, family),
            size=args.size,
            n_train=args.n_train,
            n_test_good=args.n_test_good,
            n_test_defect=args.n_test_defect,
            defects=tuple(dict.fromkeys(args.defects)),
            seed=args.seed,
        )
        root = args.out / family if len(families) > 1 else args.out
        written = write_product(product, root)
        log.info("%s: %d images in %s", family, written, root)
    return 0

"""How dark the darkest path of L pixels stays all along (a grey-level path closing, Talbot and Appleton's path
openings on the inverted image) as a detector of long thin cracks (RESULTS.md §20).

``solo`` scores an MVTec-layout set's test parts by one statistic each, the image's best path, and prints image
AUROC per defect kind, per path length: darkness (mean − x) of the product's preprocessed image (its own input
size and interpolation), optionally on the image of each p×p block's darkest pixel, paths advancing one block
per step within 90° cones (``--cones 2``: down and right; 4: also the two diagonal ones). L = 1 is the darkest
pixel, the extremes member's dark path before this.

``join`` adds that score as one more alone path to a product fitted by ``path_tails.py fit`` (its cache of
out-of-fold calibration path scores and test path scores) and joins the paths as the product does
(``trainer.calibration.join_paths``): ``+dark L`` beside the darkest pixel, ``dark -> L`` instead of it. The
calibration images are the fit's, in its fold order, so the statistic is out of fold by construction (it has
nothing to fit; the spread only scales it, and the join is scale-free).

    .venv/bin/python benchmarks/experiments/dark_paths.py solo --data ../shared/data/kolektorsdd --size 408x1024 \
        --lengths 1,8,16,32 --block 4
    .venv/bin/python benchmarks/experiments/dark_paths.py join --data DATA/grass --cache DIR/grass.npz \
        --bundle DIR/products/synth-grass --lengths 9 --block 4
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from linewatch.bundle.manifest import InputSpec, Preprocessing
from linewatch.bundle.registry import load_bundle
from trainer.calibration import join_paths
from trainer.data.images import ImageLoader, list_images
from trainer.evaluate import mvtec_test_set
from trainer.fit import FitOptions, choose_input_size, preprocessed_batches, split_folds
from trainer.metrics import auroc

OUTSIDE = -1e9
# (forward steps) per cone: advancing down with a sideways move of up to one block, advancing right, and the
# two diagonal cones
CONES = (((1, -1), (1, 0), (1, 1)), ((-1, 1), (0, 1), (1, 1)), ((1, 0), (1, 1), (0, 1)), ((1, 0), (1, -1), (0, -1)))


def _moved(f: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """f moved by (dy, dx): out[y, x] = f[y − dy, x − dx], OUTSIDE where that lies beyond the image."""
    out = np.full_like(f, OUTSIDE)
    h, w = f.shape
    out[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = f[max(-dy, 0):h - max(dy, 0),
                                                                  max(-dx, 0):w - max(dx, 0)]
    return out


def best_path(darkness: np.ndarray, length: int, cones: int) -> float:
    """The largest, over paths of ``length`` blocks within one cone, of the path's least darkness."""
    best = OUTSIDE
    for cone in CONES[:cones]:
        f = darkness
        for _ in range(length - 1):
            f = np.minimum(darkness, np.max([_moved(f, dy, dx) for dy, dx in cone], axis=0))
        best = max(best, float(f.max()))
    return best


def darkest_blocks(image: np.ndarray, block: int) -> np.ndarray:
    """The darkness (mean − x) of each block×block block's darkest pixel (its lightest is not kept)."""
    darkness = image.mean() - image
    if block == 1:
        return darkness
    h, w = darkness.shape[0] // block * block, darkness.shape[1] // block * block
    return darkness[:h, :w].reshape(h // block, block, w // block, block).max(axis=(1, 3))


def scores(paths: Sequence[Path], spec: InputSpec, lengths: Sequence[int], block: int,
           cones: int) -> dict[int, np.ndarray]:
    out: dict[int, list[float]] = {n: [] for n in lengths}
    prep = Preprocessing(interpolation="area", normalise="image_mean")
    for batch in preprocessed_batches(list(paths), spec, prep, 4):
        for image in batch[:, 0]:
            d = darkest_blocks(image.astype(np.float64), block)
            for n in lengths:
                out[n].append(best_path(d, n, cones))
    return {n: np.asarray(v) for n, v in out.items()}


def per_kind(score: np.ndarray, kinds: np.ndarray) -> str:
    good = kinds == ""
    return " ".join(f"{k} {auroc(score[good | (kinds == k)], ~good[good | (kinds == k)]):.3f}"
                    for k in sorted(set(kinds) - {""}))


def solo(args: argparse.Namespace) -> None:
    items = mvtec_test_set(args.data)
    if args.size:
        height, width = (int(v) for v in args.size.split("x"))
    else:
        loader = ImageLoader()
        sizes = [im.shape[:2] for p in list_images(args.data / "train" / "good")[:20]
                 if (im := loader.read(p)) is not None]
        height, width = choose_input_size([(int(h), int(w)) for h, w in sizes])
    kinds = np.asarray([i.defect or "" for i in items])
    lengths = [int(v) for v in args.lengths.split(",")]
    got = scores([i.path for i in items], InputSpec(height=height, width=width), lengths, args.block, args.cones)
    for n in lengths:
        print(f"{args.data.name} {height}x{width} block {args.block} cones {args.cones} L {n:3d}: "
              f"all {auroc(got[n], kinds != ''):.3f} | {per_kind(got[n], kinds)}", flush=True)


def join(args: argparse.Namespace) -> None:
    manifest = load_bundle(args.bundle).manifest
    opts = FitOptions(seed=args.seed)
    cal_paths = [p for fold in split_folds(list_images(args.data / "train" / "good"), opts.folds, opts.seed)
                 for p in fold]
    items = mvtec_test_set(args.data)
    lengths = [int(v) for v in args.lengths.split(",")]
    cal_dark = scores(cal_paths, manifest.input, lengths, args.block, args.cones)
    test_dark = scores([i.path for i in items], manifest.input, lengths, args.block, args.cones)
    z = np.load(args.cache)
    cal, test = z["cal"], z["test"] / z["gains"]  # the paths before the product's weights
    if len(cal) != len(cal_paths) or len(test) != len(items):
        raise SystemExit(f"{args.cache}: {len(cal)} / {len(test)} scores for {len(cal_paths)} calibration and "
                         f"{len(items)} test images: not this data set's fit")
    kinds = np.asarray([i.defect or "" for i in items])
    good = kinds == ""

    def row(name: str, c: np.ndarray, t: np.ndarray) -> None:
        j = join_paths(c, 0.005)
        s, threshold = j.joined(t), j.calibration.threshold
        print(f"{args.data.name} {name:10s} auc {auroc(s, ~good):.3f} FR {int(np.sum(s[good] > threshold))} "
              f"miss {int(np.sum(s[~good] <= threshold))} ({j.calibration.method}) | {per_kind(s, kinds)}",
              flush=True)

    row("product", cal, test)
    for n in lengths:
        print(f"   L {n}: alone {auroc(test_dark[n], ~good):.3f}")
        row(f"+dark {n}", np.column_stack([cal, cal_dark[n]]), np.column_stack([test, test_dark[n]]))
        if cal.shape[1] == 2:
            row(f"dark -> {n}", np.column_stack([cal[:, 0], cal_dark[n]]),
                np.column_stack([test[:, 0], test_dark[n]]))


def main() -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("solo", "join"):
        p = sub.add_parser(name)
        p.add_argument("--data", type=Path, required=True, help="an MVTec-layout set")
        p.add_argument("--lengths", default="1,8,16,32", help="path lengths in blocks")
        p.add_argument("--block", type=int, default=4, help="side of the darkest-pixel blocks (1: pixels)")
        p.add_argument("--cones", type=int, choices=(2, 4), default=2)
    sub.choices["solo"].add_argument("--size", help="HxW input (default: as trainer fit chooses)")
    sub.choices["join"].add_argument("--cache", type=Path, required=True, help="path_tails.py fit's npz")
    sub.choices["join"].add_argument("--bundle", type=Path, required=True, help="the fit's bundle")
    sub.choices["join"].add_argument("--seed", type=int, default=0, help="the fit's seed (its folds)")
    args = ap.parse_args()
    solo(args) if args.cmd == "solo" else join(args)


if __name__ == "__main__":
    main()

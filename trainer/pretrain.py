"""``trainer pretrain``: train the general texture feature network from any mix of data sets.

Every class of every source becomes one triplet class (the network learns what makes two patches of one
surface alike and a patch of another surface, or a locally damaged one, different):

    --mvtec DIR       each MVTec-layout product under DIR (train/good only; never test/)
    --dagm ROOT       each DAGM ClassN (defect-free Train images; --dagm-classes picks classes)
    --textures DIR    each sub-folder of DIR (e.g. Kylberg)
    --cifar PICKLE    each CIFAR-100 fine class, whole 32×32 images, no augmentation (paper 2.3)
    --synthetic N     N synthetic surface products (linewatch.surfaces families, one style each)

``--mvtec-weight`` makes each MVTec class that many times as likely an anchor as any other class (one
product among many synthetic ones still gets a real share of the triplets); ``--tile`` cuts read images
into square tiles at native resolution, since the sampler otherwise squashes each image to a square
(a 500×1250 KolektorSDD part would have its texture compressed 2.5× along its length).

The checkpoint (``--out``) records the data (sources, classes, image counts, skipped files), the seed,
the full configuration, the command line and the code version (git revision where available).
"""

from __future__ import annotations

import argparse
import logging
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from linewatch.surfaces import FAMILIES, render_surface
from trainer.data.cifar import read_cifar
from trainer.data.dagm import DagmDataset
from trainer.data.images import DatasetError, ImageLoader
from trainer.data.mvtec import MvtecDataset, find_mvtec_roots
from trainer.data.textures import texture_classes
from trainer.train import LOSSES, TrainConfig, train
from trainer.triplets import LOCAL_CONTRASTS, LOCAL_KINDS, ImageClass, TripletConfig

log = logging.getLogger(__name__)


@dataclass
class DataMix:
    """The classes gathered from all sources, and what was read (the checkpoint's data provenance)."""

    classes: list[ImageClass] = field(default_factory=list)
    sources: list[dict[str, Any]] = field(default_factory=list)
    loader: ImageLoader = field(default_factory=ImageLoader)

    def add(self, kind: str, where: str, classes: list[ImageClass]) -> None:
        classes = [c for c in classes if len(c.images) > 0]
        self.classes.extend(classes)
        self.sources.append(
            {
                "kind": kind,
                "path": where,
                "classes": {c.name: len(c.images) for c in classes},
                "images": sum(len(c.images) for c in classes),
            }
        )
        log.info("%s %s: %d classes, %d images", kind, where, len(classes), self.sources[-1]["images"])

    def provenance(self) -> dict[str, Any]:
        return {
            "sources": self.sources,
            "skipped": [{"path": str(s.path), "reason": s.reason} for s in self.loader.skipped],
        }


def _subset(paths: list[Path], limit: int, rng: np.random.Generator) -> list[Path]:
    if limit <= 0 or len(paths) <= limit:
        return paths
    return sorted(paths[i] for i in rng.choice(len(paths), size=limit, replace=False))


def square_tiles(image: npt.NDArray[Any], tile: int) -> list[npt.NDArray[Any]]:
    """Square tiles of side min(tile, height, width) at native resolution that cover ``image``: as few as
    cover each axis, the first and last flush with its edges, the others evenly between (so they overlap
    a little rather than leave a strip out)."""
    height, width = image.shape[:2]
    side = min(tile, height, width)

    def starts(length: int) -> npt.NDArray[np.int64]:
        return np.linspace(0, length - side, math.ceil(length / side)).round().astype(np.int64)

    return [image[y : y + side, x : x + side] for y in starts(height) for x in starts(width)]


def gather(args: argparse.Namespace) -> DataMix:
    """Read every requested source into triplet classes (deterministic subsets under ``--seed``)."""
    mix = DataMix()
    rng = np.random.default_rng([args.seed, 0xDA7A])
    limit = args.max_images_per_class

    def image_class(name: str, paths: list[Path], weight: float = 1.0) -> ImageClass:
        images = [img for _, img in mix.loader.read_all(_subset(paths, limit, rng))]
        if args.tile:
            images = [t for img in images for t in square_tiles(img, args.tile)]
        return ImageClass(name, images, weight=weight)

    for root in args.mvtec or []:
        products = [MvtecDataset(p) for p in find_mvtec_roots(root)]
        mix.add(
            "mvtec",
            str(root),
            [image_class(f"mvtec:{d.name}", d.train_good(), args.mvtec_weight) for d in products],
        )
    for root in args.dagm or []:
        dagm = DagmDataset(root)
        wanted = dagm.classes() if not args.dagm_classes else [f"Class{n}" for n in args.dagm_classes]
        missing = sorted(set(wanted) - set(dagm.classes()))
        if missing:
            raise DatasetError(f"{root}: no {', '.join(missing)}")
        mix.add("dagm", str(root), [image_class(f"dagm:{c}", dagm.good_train(c)) for c in wanted])
    for root in args.textures or []:
        found = texture_classes(root)
        mix.add(
            "textures", str(root), [image_class(f"textures:{name}", paths) for name, paths in found.items()]
        )
    if args.cifar:
        cifar = read_cifar(args.cifar, max_per_class=args.cifar_max_per_class)
        plain = [ImageClass(f"cifar:{name}", list(images), augment=False) for name, images in cifar.items()]
        others = len(mix.classes) + args.synthetic
        if others and plain:
            # --cifar-share of the anchors come from CIFAR, however many classes each side has.
            weight = args.cifar_share / (1.0 - args.cifar_share) * others / len(plain)
            plain = [ImageClass(c.name, c.images, augment=False, weight=weight) for c in plain]
        mix.add("cifar", str(args.cifar), plain)
    if args.synthetic:
        size = args.synthetic_size
        synthetic = []
        first_style = args.seed * 1000 if args.synthetic_style_base is None else args.synthetic_style_base
        for k in range(args.synthetic):
            family = FAMILIES[k % len(FAMILIES)]
            style = first_style + k
            images = [
                render_surface(family, size, size, np.random.default_rng([args.seed, k, i]), style_seed=style)
                for i in range(args.synthetic_images)
            ]
            synthetic.append(ImageClass(f"synthetic:{family}-{style}", images))
        mix.add("synthetic", f"linewatch.surfaces families={','.join(FAMILIES)}", synthetic)
    return mix


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(
        h=args.h,
        rounds=args.rounds,
        epochs=args.epochs,
        triplets_per_round=args.triplets_per_round,
        batch_size=args.batch_size,
        lr=args.lr,
        loss=args.loss,
        margin=args.margin,
        seed=args.seed,
        val_triplets=args.val_triplets,
        val_fraction=args.val_fraction,
        threads=args.threads,
        triplets=TripletConfig(
            scales=tuple(args.scales),
            p_noise=args.p_noise,
            p_local=args.p_local,
            local_kinds=tuple(args.local_kinds),
            noise_size_px=tuple(args.noise_size_px),
            noise_sigma=tuple(args.noise_sigma),
            local_amplitude=tuple(args.local_amplitude),
            local_contrast=args.local_contrast,
            centre_images=args.centre_images,
        ),
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = TrainConfig()
    trip = defaults.triplets
    data = parser.add_argument_group("data (any mix; at least one)")
    data.add_argument(
        "--mvtec", type=Path, action="append", metavar="DIR", help="MVTec-layout product(s): train/good"
    )
    data.add_argument(
        "--dagm", type=Path, action="append", metavar="ROOT", help="DAGM 2007 root: good Train images"
    )
    data.add_argument(
        "--dagm-classes", type=int, nargs="+", metavar="N", help="DAGM class numbers (default: all)"
    )
    data.add_argument(
        "--textures", type=Path, action="append", metavar="DIR", help="texture classes, one per sub-folder"
    )
    data.add_argument(
        "--cifar", type=Path, metavar="PICKLE", help="CIFAR-100 python pickle (e.g. cifar-100-python/train)"
    )
    data.add_argument(
        "--cifar-max-per-class", type=int, default=100, help="CIFAR images per class (default: 100)"
    )
    data.add_argument(
        "--cifar-share",
        type=float,
        default=0.25,
        help="share of triplets from CIFAR when mixed (default: 0.25)",
    )
    data.add_argument(
        "--synthetic", type=int, default=0, metavar="N_CLASSES", help="synthetic surface classes"
    )
    data.add_argument(
        "--synthetic-images", type=int, default=20, help="images per synthetic class (default: 20)"
    )
    data.add_argument(
        "--synthetic-size", type=int, default=512, help="synthetic image side in px (default: 512)"
    )
    data.add_argument(
        "--synthetic-style-base",
        type=int,
        metavar="STYLE",
        help="style seed of the first synthetic class, the others follow (default: seed × 1000, which are "
        "the styles `trainer synth --seed SEED` renders; e.g. 10000 keeps training and those apart)",
    )
    data.add_argument(
        "--mvtec-weight",
        type=float,
        default=1.0,
        help="anchor weight of each --mvtec class relative to every other class (default: 1)",
    )
    data.add_argument(
        "--tile",
        type=int,
        default=0,
        metavar="PX",
        help="cut --mvtec/--dagm/--textures images into square tiles of PX px (at most their short side) "
        "at native resolution instead of squashing them to a square (default: 0, off)",
    )
    data.add_argument(
        "--max-images-per-class", type=int, default=60, help="random subset per class, bounds memory (0: all)"
    )

    out = parser.add_argument_group("output")
    out.add_argument(
        "--out", type=Path, required=True, help="backbone checkpoint to write (e.g. backbone_h16.pt)"
    )
    out.add_argument("--workdir", type=Path, help="log.csv and resumable last.pt (default: <out>.run/)")
    out.add_argument("--resume", action="store_true", help="continue from <workdir>/last.pt")
    out.add_argument("--no-progress", action="store_true", help="no progress bar")

    t = parser.add_argument_group("training")
    t.add_argument("--h", type=int, default=defaults.h, help=f"feature width (default: {defaults.h})")
    t.add_argument(
        "--rounds", type=int, default=defaults.rounds, help=f"fresh triplet sets (default: {defaults.rounds})"
    )
    t.add_argument(
        "--epochs", type=int, default=defaults.epochs, help=f"epochs per round (default: {defaults.epochs})"
    )
    t.add_argument(
        "--triplets-per-round", type=int, default=defaults.triplets_per_round, help="triplets per round"
    )
    t.add_argument(
        "--batch-size", type=int, default=defaults.batch_size, help="triplets per step (default: 256)"
    )
    t.add_argument("--lr", type=float, default=defaults.lr, help="Adam learning rate (default: 1e-4)")
    t.add_argument("--loss", choices=LOSSES, default=defaults.loss, help="paper's softmax MAE, or margin")
    t.add_argument("--margin", type=float, default=defaults.margin, help="margin for --loss margin")
    t.add_argument(
        "--seed", type=int, default=defaults.seed, help="fixes data subsets, triplets, initialisation"
    )
    t.add_argument(
        "--val-triplets", type=int, default=defaults.val_triplets, help="held-back validation triplets"
    )
    t.add_argument(
        "--val-fraction", type=float, default=defaults.val_fraction, help="images held back per class"
    )
    t.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")

    s = parser.add_argument_group("triplet sampling")
    s.add_argument(
        "--scales", type=int, nargs="+", default=list(trip.scales), help="source rescale sizes in px"
    )
    s.add_argument(
        "--p-noise", type=float, default=trip.p_noise, help="share of Gaussian-noise-patch negatives"
    )
    s.add_argument(
        "--p-local", type=float, default=trip.p_local, help="share of realistic local-defect negatives"
    )
    s.add_argument(
        "--local-kinds", nargs="+", choices=LOCAL_KINDS, default=list(trip.local_kinds), help="local kinds"
    )
    s.add_argument(
        "--noise-size-px", type=int, nargs=2, default=list(trip.noise_size_px), help="noise rectangle side"
    )
    s.add_argument(
        "--noise-sigma", type=float, nargs=2, default=list(trip.noise_sigma), help="noise std range"
    )
    s.add_argument(
        "--local-amplitude", type=float, nargs=2, default=list(trip.local_amplitude), help="blob/curve amp"
    )
    s.add_argument(
        "--centre-images", action="store_true",
        help="shift every source image's mean to mid-grey, as trainer fit's default --normalise image_mean "
        "shows images to the network",
    )
    s.add_argument(
        "--local-contrast",
        choices=LOCAL_CONTRASTS,
        default=trip.local_contrast,
        help="blob/curve strength: 'absolute' (--local-amplitude in input units) or 'relative' (1-4x the "
        "patch's own spread, mostly dark; curves cross the patch, 0.5-2.5 px wide) "
        f"(default: {trip.local_contrast})",
    )


def _plain_arguments(args: argparse.Namespace) -> dict[str, Any]:
    """The parsed command line in plain types (a checkpoint holds no Path objects)."""

    def plain(value: Any) -> Any:
        if isinstance(value, Path):
            return str(value)
        if isinstance(value, list | tuple):
            return [plain(v) for v in value]
        return value

    return {k: plain(v) for k, v in sorted(vars(args).items()) if not k.startswith("_")}


def run(args: argparse.Namespace) -> int:
    try:
        config = config_from_args(args)
    except ValueError as exc:
        log.error("invalid training options: %s", exc)
        return 2
    if not (args.mvtec or args.dagm or args.textures or args.cifar or args.synthetic):
        log.error("no data: give at least one of --mvtec, --dagm, --textures, --cifar, --synthetic")
        return 2
    if args.mvtec_weight <= 0 or args.tile < 0:
        log.error("--mvtec-weight must be > 0 and --tile >= 0, got %s and %s", args.mvtec_weight, args.tile)
        return 2
    if args.cifar and not 0.0 < args.cifar_share < 1.0:
        log.error("--cifar-share must be between 0 and 1, got %s", args.cifar_share)
        return 2
    try:
        mix = gather(args)
    except DatasetError as exc:
        log.error("%s", exc)
        return 2
    if mix.loader.skipped:
        log.warning(
            "%d unreadable images skipped (listed in the checkpoint's provenance)", len(mix.loader.skipped)
        )
    provenance = {**mix.provenance(), "arguments": _plain_arguments(args)}
    workdir = args.workdir or args.out.with_name(args.out.name + ".run")
    try:
        result = train(
            config,
            mix.classes,
            workdir,
            resume=args.resume,
            provenance=provenance,
            progress=not args.no_progress,
        )
    except ValueError as exc:
        log.error("%s", exc)
        return 2
    assert result.checkpoint is not None
    args.out.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(result.checkpoint, args.out)
    summary = result.summary()
    print(
        f"backbone {args.out}: h={config.h}, {len(mix.classes)} classes, loss {summary['train_loss']:.4f}, "
        f"validation triplet accuracy {summary['val_accuracy']:.4f}, {summary['elapsed_s']:.0f} s"
    )
    return 0

"""``trainer fit``: a product bundle from good images only (DESIGN 2.4, 2.5, 3.3).

1. List the good images. Cross-fitted calibration (default): split them (seeded) into ``folds`` folds;
   holdout: into a prototype set and a calibration set.
2. Choose the model input size from the images (median size, long side capped) unless given; every image
   goes through ``linewatch.inference.preprocessing`` with the bundle's own ``InputSpec`` and
   ``Preprocessing``, so the daemon sees exactly what the fit saw.
3. Prototype: feature maps of the prototype set (ONNX Runtime, streamed in batches) → ``trainer.prototype``.
   Cross-fitted, every image is in the bundle's prototype, and each fold also gets a prototype of the
   other folds' images (merged running statistics: no second pass over the images). The same pass records
   each image's brightness and contrast: the bundle's ``Exposure`` range, against which the daemon checks
   every frame before scoring it.
4. Export ``model.onnx`` (backbone + scoring head) and score the calibration images through ONNX Runtime
   with that very file: holdout, the held-out images against the bundle's prototype; cross-fitted, every
   image against the prototype of the folds it is not in. Threshold for the target false-reject rate
   (``trainer.calibration``; with members that reject alone, each path's tail fitted on its own, each alone
   path put on the averaged path's tail by a weight in the prototype's scale and a power in the graph's
   head, which is then exported again, and the threshold set on their maximum). Cross-fitting fits the tail
   on all N good images instead of 20 % of them, and no image is left out of the prototype; its threshold is
   a little conservative, since the bundle's prototype (all folds) is nearer to new good parts than each
   fold's was.
5. Write the bundle into a staging directory next to the target, verify it with the daemon's own loader,
   then move it into place (an existing bundle of the product is swapped out only once the new one is
   complete).
"""

from __future__ import annotations

import argparse
import ctypes
import datetime as dt
import hashlib
import logging
import math
import os
import shutil
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt
import torch
from pydantic import ValidationError

import trainer
from linewatch.bundle.manifest import (
    DARK_PATH_BLOCK,
    MODEL_NAME,
    PROTOTYPE_NAME,
    SCHEMA_VERSION,
    BundleManifest,
    Calibration,
    ContextSpec,
    Exposure,
    ExtremesSpec,
    InputSpec,
    LineBankSpec,
    Preprocessing,
    Provenance,
    ScoringSpec,
    WhitenedSpec,
)
from linewatch.bundle.registry import (
    bundle_path,
    hash_files,
    load_bundle,
    validate_product_id,
    write_manifest,
)
from linewatch.errors import LinewatchError
from linewatch.inference.preprocessing import exposure_of, normalise_image, scale_image
from trainer import context, extremes, whitened
from trainer.calibration import PathJoin, join_paths
from trainer.context import ContextMember
from trainer.data.images import IMAGE_SUFFIXES, ImageLoader, list_images, read_image
from trainer.export import export_for_scoring
from trainer.extremes import ExtremesMember
from trainer.model import RECEPTIVE_FIELD, STRIDE, Backbone, FeatureNet, feature_map_size
from trainer.prototype import (
    DEFAULT_CLUSTERS,
    DEFAULT_SCALE_FLOOR,
    Prototype,
    PrototypeAccumulator,
    PrototypeMode,
)
from trainer.scorer import OnnxruntimeFeatures, OnnxruntimeScorer
from trainer.whitened import WhitenedMember

log = logging.getLogger(__name__)

# Long side of the chosen input size. Thin defects vanish when a 1250-px part is squashed to 256 px (issue
# 3), and the network is cheap (KolektorSDD at 1024×408: ~0.1 s per image on two CPU cores).
DEFAULT_MAX_SIDE = 1024
MIN_SIDE = RECEPTIVE_FIELD  # one feature needs one 32×32 neighbourhood
# An explicit input side beyond this is a typo, not a camera: 16384² would need ~30 GB per member's map.
MAX_INPUT_SIDE = 8192
# One image per ONNX Runtime call: the same time as four on KolektorSDD (fit 75.7 against 78.9 s wall) at a
# third of the peak memory (0.88 against 2.45 GB: the nearest-centre search of three members over four
# 1024×406 maps is the largest tensor of a fit; evaluate 0.57 against 1.30 GB, 15.4 against 14.2 s).
DEFAULT_BATCH = 1


class FitError(LinewatchError):
    """A bundle cannot be fitted from these images or options; the message says why."""


@dataclass(frozen=True, slots=True)
class FitOptions:
    """Everything that shapes a fit besides the images, the product id and the backbone."""

    input_size: tuple[int, int] | None = None  # (height, width); None: chosen from the images
    max_side: int = DEFAULT_MAX_SIDE
    # Defaults chosen by measured AUROC (benchmarks/accuracy.py, shipped backbone; README "Accuracy"):
    # nearest of 64 standardised centres, map smoothed σ = 1 cell, beat the paper's global L2 mean on the
    # synthetic surfaces (0.853 -> 0.903 image AUROC) and on KolektorSDD (0.583 / 0.781 -> 0.743 / 0.910);
    # with the default backbone pair 256 centres beat 64 on the synthetic surfaces (0.934 -> 0.950; unseen
    # styles 0.898 -> 0.910) at equal KolektorSDD (0.843 / 0.952 vs 0.843 / 0.951).
    prototype: PrototypeMode = "clusters"
    clusters: int = DEFAULT_CLUSTERS  # K centres of a "clusters" prototype (ignored by the other modes)
    distance: Literal["l2", "l1"] = "l2"
    standardise: bool = True
    pooling: int = 1
    smoothing: float = 1.0  # σ (heatmap cells) of the Gaussian smoothing of the distance map
    scale_floor: float = DEFAULT_SCALE_FLOOR
    target_frr: float = 0.005
    calibration: Literal["crossfit", "holdout"] = "crossfit"
    folds: int = 5  # cross-fitted calibration
    calibration_fraction: float = 0.2  # holdout calibration
    seed: int = 0
    batch_size: int = DEFAULT_BATCH
    threads: int | None = None  # ONNX Runtime intra-op threads (None: one per core)
    interpolation: Literal["area", "linear"] = "area"
    # Each image's own mean removed (Preprocessing.normalise): the part-to-part lighting level is not a
    # defect. KolektorSDD image / pixel AUROC 0.739 / 0.880 -> 0.802 / 0.917, synthetic 0.891 -> 0.899
    # (benchmarks/experiments/normalise.py, nearest of 64 centres).
    normalise: Literal["none", "image_mean"] = "image_mean"
    exposure_check: bool = True  # record the good brightness / contrast range; the daemon checks frames
    finetune_steps: int = 0  # >0: tune a copy of the backbone on the prototype images first
    finetune_lr: float = 1e-4
    context_steps: int = context.STEPS  # training steps of each context member (a backbone with one)
    # The whitened member (a backbone with one) is kept where the whitened good images' excess kurtosis is
    # below this (inf: always kept), the extremes member where it is not; trainer.whitened.MAX_KURTOSIS.
    whitened_max_kurtosis: float = whitened.MAX_KURTOSIS
    # The whitened member's map (where kept) and the extremes member's dark excursions (where kept) also
    # reject alone (WhitenedSpec.alone, ExtremesSpec.alone), not only averaged with the others: seed-7
    # grass 0.881 -> 0.907, random_phase 0.909 -> 0.948, stripes 0.980 -> 0.994 image AUROC in
    # benchmarks/experiments/alone.py (RESULTS.md §16).
    alone_members: bool = True
    # The extremes member's dark path (ExtremesSpec.dark_path, with alone_members), in input pixels: None
    # chooses an eighth of the input's longer side (dark_path_length), 0 leaves it out. KolektorSDD image
    # AUROC 0.902 -> 0.943 (mean of fit seeds 0 / 1 / 2), the 11 synthetic extremes products 0.9529 -> 0.9508
    # (RESULTS.md §20).
    dark_path: int | None = None
    # The extremes member's bright excursions also reject alone (ExtremesSpec.bright, with alone_members): for
    # defects that catch the light. Off by default: the 11 synthetic extremes products 0.951 -> 0.957 image
    # AUROC, but KolektorSDD 0.943 -> 0.940 and pixel 0.962 -> 0.945, its glints (RESULTS.md §21).
    bright_alone: bool = False


# The paper's fit (DESIGN 2.3, 2.4): 512×512 input, one global mean feature, L2, not standardised, no
# smoothing, single-pixel maximum. The DAGM protocol's default, and the reference row of every accuracy table.
PAPER_OPTIONS = FitOptions(input_size=(512, 512), prototype="global", distance="l2", standardise=False,
                           smoothing=0.0, pooling=1, normalise="none")


@dataclass(frozen=True, slots=True)
class FitResult:
    path: Path
    manifest: BundleManifest
    calibration_scores: npt.NDArray[np.float32]
    prototype_images: list[Path]
    calibration_images: list[Path]
    timings_s: dict[str, float] = field(default_factory=dict)
    backbone: Backbone | None = None  # what model.onnx was exported from (its per-product members fitted)


# ---------------------------------------------------------------------------------------------- images


def choose_input_size(sizes: Sequence[tuple[int, int]], max_side: int = DEFAULT_MAX_SIDE) -> tuple[int, int]:
    """(height, width) for images of these sizes: their median, scaled down so the long side is at most
    ``max_side`` (aspect ratio kept), each side even (the 2×2 pool) and at least 32."""
    if not sizes:
        raise FitError("no images to choose an input size from")
    if max_side < MIN_SIDE:
        raise FitError(f"max side {max_side} is below the {MIN_SIDE}-px receptive field")
    height = float(np.median([s[0] for s in sizes]))
    width = float(np.median([s[1] for s in sizes]))
    factor = min(1.0, max_side / max(height, width))

    def side(x: float) -> int:
        return max(MIN_SIDE, 2 * math.floor(x * factor / 2))

    return side(height), side(width)


def preprocessed_batches(
    paths: Sequence[Path],
    spec: InputSpec,
    prep: Preprocessing,
    batch_size: int,
    exposures: list[tuple[float, float]] | None = None,
) -> Iterator[npt.NDArray[np.float32]]:
    """N×1×H×W float32 batches, each image through the daemon's preprocessing; ``exposures`` (when given)
    collects each image's (mean, standard deviation) before normalisation, as the daemon checks frames."""
    for start in range(0, len(paths), batch_size):
        batch = []
        for path in paths[start : start + batch_size]:
            scaled = scale_image(read_image(path), spec, prep)
            level, contrast = exposure_of(scaled)
            if exposures is not None:
                exposures.append((level, contrast))
            batch.append(normalise_image(scaled, prep, level))
        yield np.stack(batch)


# A frame's mean may stray from the good parts' range by half that range, at least 10 % of the value range
# (lighting flicker, part-to-part variation the fit did not see, a large defect); its contrast may fall to
# half the lowest good contrast (more contrast is left to the score: that is what defects do).
EXPOSURE_LEVEL_MARGIN = (0.5, 0.1)
EXPOSURE_CONTRAST_FACTOR = 2.0


def exposure_range(exposures: Sequence[tuple[float, float]], prep: Preprocessing) -> Exposure:
    """The ``Exposure`` check of a bundle from its good images' (mean, standard deviation)."""
    levels = [e[0] for e in exposures]
    contrasts = [e[1] for e in exposures]
    low, high = prep.value_range
    spread, floor = EXPOSURE_LEVEL_MARGIN
    margin = max(spread * (max(levels) - min(levels)), floor * (high - low))
    return Exposure(level_min=min(levels), level_max=max(levels), contrast_min=min(contrasts),
                    contrast_max=max(contrasts), level_margin=margin,
                    contrast_factor=EXPOSURE_CONTRAST_FACTOR, n_images=len(exposures))


# -------------------------------------------------------------------------------------------- backbone


def backbone_sha256(backbone: FeatureNet | Backbone) -> str:
    """sha256 over the weights (names and float32 bytes, sorted), whatever file they came from; a Backbone
    without a line bank and a context member hashes as its networks alone, as bundles recorded it before
    either existed (a context member's fitted weights are part of the hash)."""
    if isinstance(backbone, Backbone) and backbone.networks_only:
        backbone = backbone.nets
    digest = hashlib.sha256()
    for name, tensor in sorted(backbone.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().float().contiguous().numpy().tobytes())
    return digest.hexdigest()


def resolve_backbone(backbone: FeatureNet | Backbone | str | Path) -> tuple[Backbone, str]:
    """(backbone, name for the provenance). ``"default"`` or a checkpoint path goes through
    ``trainer.backbone`` (the owner of shipped and trained backbones)."""
    if isinstance(backbone, (FeatureNet, Backbone)):
        return Backbone.of(backbone), f"in-memory {type(backbone).__name__}"
    from trainer.backbone import read_backbone

    net, meta = read_backbone(str(backbone))
    name = str(backbone)
    return Backbone.of(net), name if name == meta["path"] else f"{name} ({meta['path']})"


# -------------------------------------------------------------------------------------------- the fit


def _need_two(paths: Sequence[Path]) -> None:
    if len(paths) < 2:
        raise FitError(
            f"{len(paths)} good image(s): a fit needs at least 2 (one for the prototype, one to calibrate)"
        )


def split_images(
    paths: Sequence[Path], calibration_fraction: float, seed: int
) -> tuple[list[Path], list[Path]]:
    """(prototype set, calibration set), seeded; each keeps the original order."""
    if not 0.0 < calibration_fraction < 1.0:
        raise FitError(f"calibration fraction must lie in (0, 1), got {calibration_fraction}")
    _need_two(paths)
    n_cal = min(len(paths) - 1, max(1, round(calibration_fraction * len(paths))))
    order = np.random.default_rng(seed).permutation(len(paths))
    cal = set(order[:n_cal].tolist())
    return (
        [p for i, p in enumerate(paths) if i not in cal],
        [p for i, p in enumerate(paths) if i in cal],
    )


def split_folds(paths: Sequence[Path], folds: int, seed: int) -> list[list[Path]]:
    """``folds`` seeded folds of about equal size (fewer when there are fewer images); each keeps the
    original order."""
    if folds < 2:
        raise FitError(f"cross-fitted calibration needs at least 2 folds, got {folds}")
    _need_two(paths)
    order = np.random.default_rng(seed).permutation(len(paths))
    n = min(folds, len(paths))
    return [[paths[i] for i in sorted(order[j::n].tolist())] for j in range(n)]


def build_prototype(
    backbone: FeatureNet | Backbone,
    paths: Sequence[Path],
    spec: InputSpec,
    prep: Preprocessing,
    opts: FitOptions,
) -> Prototype:
    """Prototype of ``paths`` as ``opts`` says (feature maps through ONNX Runtime, statistics streamed in
    float64)."""
    prototype, _ = build_fold_prototypes(backbone, [list(paths)], spec, prep, opts)
    return prototype


def build_fold_prototypes(
    backbone: FeatureNet | Backbone,
    folds: Sequence[Sequence[Path]],
    spec: InputSpec,
    prep: Preprocessing,
    opts: FitOptions,
    exposures: list[tuple[float, float]] | None = None,
) -> tuple[Prototype, list[Prototype]]:
    """(prototype of every image, [prototype of all folds but fold i]) from one pass over the images; the
    second list is empty for a single fold. ``exposures`` collects each image's (mean, spread)."""
    backbone = Backbone.of(backbone)
    features = OnnxruntimeFeatures(backbone, spec.height, spec.width, opts.threads)
    mode = opts.prototype
    parts = []
    for i, fold in enumerate(folds):
        acc = PrototypeAccumulator(mode, clusters=opts.clusters, seed=opts.seed + i,
                                   member_dims=backbone.member_dims, fixed_members=backbone.fixed_members)
        for batch in preprocessed_batches(fold, spec, prep, opts.batch_size, exposures):
            acc.add(features.run(batch))
        parts.append(acc)

    def finish(which: list[PrototypeAccumulator], what: str) -> Prototype:
        try:
            return PrototypeAccumulator.merged(which, opts.seed).finish(opts.standardise, opts.scale_floor)
        except ValueError as exc:
            n = sum(a.n_images for a in which)
            hint = ("; blank or identical images give few distinct vectors, small images few cells: fewer "
                    "--clusters or more (or larger) good images would do") if mode == "clusters" else ""
            raise FitError(f"{mode} prototype from {n} good images{what}: {exc}{hint}") from exc

    everything = finish(parts, "")
    if len(parts) < 2:
        return everything, []
    return everything, [finish(parts[:i] + parts[i + 1 :], f" (all folds but {i + 1})")
                        for i in range(len(parts))]


@dataclass(frozen=True)
class FittedMembers:
    """A backbone's per-product members fitted on a product's good images: the backbone with them, one per
    fold with members that did not see the fold's images (for levels and calibration), and what the fit
    notes about them."""

    backbone: Backbone
    fold_backbones: list[Backbone]
    notes: dict[str, str]


def fit_product_members(
    backbone: Backbone,
    paths: Sequence[Path],
    folds: Sequence[Sequence[Path]],
    spec: InputSpec,
    prep: Preprocessing,
    opts: FitOptions,
) -> FittedMembers:
    """Fit ``backbone``'s whitened, extremes and context members (where it has them) on ``paths``, and once
    per fold on all folds but that one. The whitened member is kept where the good images are Gaussian enough
    for it (``trainer.whitened``), the extremes member where they are not; the notes say which and why."""
    notes: dict[str, str] = {}
    n_folds = len(folds)
    per_fold = " (and one member per fold without it for levels and calibration)" if folds else ""
    fold_of = {p: i for i, fold in enumerate(folds) for p in fold}
    groups = [fold_of.get(p, 0) for p in paths]
    white: WhitenedMember | None = None
    white_folds: list[WhitenedMember | None] = [None] * n_folds
    kurtosis = math.nan
    if backbone.whitened is not None or backbone.extremes is not None:
        # The extremes member's choice is the whitened one's number: the whitened fit runs for it either way.
        shape_w = (backbone.whitened or WhitenedMember()).spec()
        template = WhitenedMember.from_spec(shape_w.model_copy(update={"alone": opts.alone_members}))
        passes = (preprocessed_batches(paths, spec, prep, opts.batch_size) for _ in range(2))
        fitted = whitened.fit_whitened_members(template, passes, groups, n_folds, opts.whitened_max_kurtosis)
        kurtosis = fitted.kurtosis
        if backbone.whitened is not None:
            white = fitted.member
            if fitted.kept:
                white_folds = list(fitted.fold_members) if folds else []
            side = shape_w.kernel_size
            notes["whitened_member"] = fitted.note() + (
                f"; fitted on {len(paths)} good images{per_fold}: {whitened.describe_templates(shape_w)}; "
                f"{shape_w.filters}"
                f" kernels of {side}x{side} on the 2x2-pooled image"
                + ("; its map also rejects alone" if opts.alone_members else "") if fitted.kept else "")
    grey: ExtremesMember | None = None
    grey_folds: list[ExtremesMember | None] = [None] * n_folds
    if backbone.extremes is not None:
        shape_x = backbone.extremes.spec()
        fitted_x = extremes.fit_extremes_members(
            ExtremesMember.from_spec(shape_x.model_copy(update={
                "alone": opts.alone_members,
                "dark_path": dark_path_length(spec, opts) if opts.alone_members else 0,
                "bright": opts.bright_alone})),  # refused without alone_members (_check_options)
            preprocessed_batches(paths, spec, prep, opts.batch_size), groups, n_folds, kurtosis,
            opts.whitened_max_kurtosis)
        grey = fitted_x.member
        notes["extremes_member"] = fitted_x.note()
        if grey is not None:
            grey_folds = list(fitted_x.fold_members) if folds else []
            window = grey.spec().window
            notes["extremes_member"] += (
                f"; fitted on {len(paths)} good images{per_fold}: grey-level spread "
                f"{1.0 / float(grey.inverse_spread):.4g} (median of the images'), {window}x{window} px"
                + ("; its dark excursions also reject alone" if grey.spec().alone else "")
                + (f"; and how dark a path of {grey.spec().dark_path} px stays all along (the darkest pixel "
                   f"of each {DARK_PATH_BLOCK}x{DARK_PATH_BLOCK} block)" if grey.spec().dark_path
                   else "")
                + ("; its bright excursions also reject alone" if grey.spec().bright else ""))
    ctx: ContextMember | None = None
    ctx_folds: list[ContextMember | None] = [None] * n_folds
    if backbone.context is not None:
        shape_c = backbone.context.spec()
        index = {p: i for i, p in enumerate(paths)}
        batches = preprocessed_batches(paths, spec, prep, opts.batch_size)
        samples = context.collect_samples(backbone.context, batches, len(paths), seed=opts.seed)

        def member(keep: list[int]) -> ContextMember:
            return context.train_member(samples, keep, shape_c.radii, shape_c.angles, shape_c.hidden,
                                        seed=opts.seed, steps=opts.context_steps)

        ctx = member(list(range(len(paths))))
        ctx_folds = []
        for fold in folds:
            left_out = {index[p] for p in fold}
            ctx_folds.append(member([i for i in range(len(paths)) if i not in left_out]))
        notes["context_member"] = (f"fitted on {len(paths)} good images{per_fold}: radii "
                                   f"{', '.join(f'{r:g}' for r in shape_c.radii)} px, {opts.context_steps} "
                                   f"steps of {context.BATCH} from <= {context.MAX_SAMPLES} samples per "
                                   f"radius, seed {opts.seed}")
    return FittedMembers(backbone.with_fitted(white, grey, ctx),
                         [backbone.with_fitted(w, g, c)
                          for w, g, c in zip(white_folds, grey_folds, ctx_folds, strict=True)],
                         notes)


def dark_path_length(spec: InputSpec, opts: FitOptions) -> int:
    """The extremes member's dark path in input pixels: ``opts.dark_path``, or an eighth of the input's longer
    side (a crack an eighth of the part long), a whole number of block pairs (8 px) and at least one."""
    if opts.dark_path is not None:
        return opts.dark_path
    pair = 2 * DARK_PATH_BLOCK  # one step of the path each way
    return max(pair, max(spec.height, spec.width) // (8 * pair) * pair)


def _sessions(nets: Sequence[Backbone], make: Callable[[Backbone], OnnxruntimeScorer]
              ) -> Iterator[OnnxruntimeScorer]:
    """A scorer per entry of ``nets``, built only when the backbone changes (a context member is fitted per
    fold; without one every fold shares one graph and swaps prototype tensors). The previous session is let go
    before the next is built, so their memory arenas never add up, when the caller drops its reference to each
    scorer before asking for the next (next() in the loop body and ``del``: two live sessions of a 1024×406
    four-member graph took a KolektorSDD fit from 1.2 to 2.3 GB)."""
    scorer: OnnxruntimeScorer | None = None
    last: Backbone | None = None
    for net in nets:
        if scorer is None or net is not last:
            scorer = None
            scorer, last = make(net), net
        yield scorer


def score_images(
    scorer: OnnxruntimeScorer,
    paths: Sequence[Path],
    spec: InputSpec,
    prep: Preprocessing,
    batch_size: int,
    exposures: list[tuple[float, float]] | None = None,
    paths_graph: bool = False,
) -> npt.NDArray[np.float32]:
    """Each image's score (N), or its path scores (N×P) from a graph exported with ``path_scores``."""
    batches = preprocessed_batches(paths, spec, prep, batch_size, exposures)
    scores = [scorer.path_scores(batch) if paths_graph else scorer.run(batch)[1] for batch in batches]
    return np.concatenate(scores) if scores else np.zeros(0, np.float32)


def alone_note(alone: Sequence[int], join: PathJoin) -> str:
    """The provenance note on how the members that reject alone are weighed against the averaged map."""
    members = ", ".join(map(str, alone))
    gains = ", ".join(f"{g:.4g}" for g in join.gains)
    if join.exponents:
        return (f"members {members} reject alone, weighed {gains} and raised to "
                f"{', '.join(f'{a:.4g}' for a in join.exponents)} after their levels (each path's Fréchet "
                "tail, fitted on good images it did not see, put on the averaged map's)")
    return (f"members {members} reject alone, weighed {gains} after their levels (the averaged map's median "
            "score on good images they did not see over theirs)")


def fit_product(
    good: Path | Sequence[Path],
    product_id: str,
    products_dir: Path,
    backbone: FeatureNet | Backbone | str | Path = "default",
    options: FitOptions | None = None,
) -> FitResult:
    """Fit, calibrate and write the bundle ``products_dir/product_id``; see the module docstring."""
    opts = options or FitOptions()
    started = time.perf_counter()
    timings: dict[str, float] = {}
    target = bundle_path(products_dir, product_id)  # validates the id before any work
    _check_output(target)
    _check_options(opts)
    # The backbone first: a backbone that cannot be used is refused before any image is read.
    net, backbone_name = resolve_backbone(backbone)
    net.eval()
    if opts.finetune_steps > 0 and len(net.member_dims) > 1:
        # The triplet loss would tune the members together on one distance over all their channels (which
        # the trained member's larger features dominate), while the head scores them apart.
        parts = f"{net.members} network(s){' and the line bank' if net.lines else ''}"
        raise FitError(f"fine-tuning tunes one network, and {backbone_name} has {len(net.member_dims)} "
                       f"members ({parts}): fine-tune with --backbone default-trained (or a single "
                       "checkpoint)")

    listed = list_images(good) if isinstance(good, Path) else [Path(p) for p in good]
    source = str(good.resolve()) if isinstance(good, Path) else _common_parent(listed)
    if not listed:
        raise FitError(f"{source}: no good images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    # One pass over every image: sizes for the input size, and unreadable files skipped by name up front,
    # so the split and the counts in the manifest are about images that were really used.
    loader = ImageLoader()
    sizes: list[tuple[int, int]] = []
    paths: list[Path] = []
    for path in listed:
        image = loader.read(path)
        if image is not None:
            paths.append(path)
            sizes.append((int(image.shape[0]), int(image.shape[1])))
    # A network tuned on the prototype images would score every fold as seen: fine-tuning keeps a holdout.
    cross_fit = opts.calibration == "crossfit" and opts.finetune_steps == 0
    if cross_fit:
        folds = split_folds(paths, opts.folds, opts.seed)
        proto_paths, cal_paths = list(paths), [p for fold in folds for p in fold]
        split_note = (f"cross-fitted: {len(folds)} folds (seed {opts.seed}); all {len(paths)} images in the "
                      "prototype, each scored for calibration by a prototype of the other folds")
    else:
        if opts.calibration == "crossfit":
            log.warning("fine-tuning: the threshold comes from a held-out %.0f %% of the images instead of "
                        "cross-fitting", 100 * opts.calibration_fraction)
        folds = []
        proto_paths, cal_paths = split_images(paths, opts.calibration_fraction, opts.seed)
        split_note = (f"holdout: {len(proto_paths)} prototype / {len(cal_paths)} calibration images "
                      f"(fraction {opts.calibration_fraction:g}, seed {opts.seed})")
    if opts.input_size is not None:
        height, width = opts.input_size
        size_note = f"given: {height}x{width}"
    else:
        height, width = choose_input_size(sizes, opts.max_side)
        med_h, med_w = np.median([s[0] for s in sizes]), np.median([s[1] for s in sizes])
        size_note = (
            f"median {med_h:g}x{med_w:g} of {len(sizes)} images, long side capped at {opts.max_side}, "
            f"even sides -> {height}x{width}"
        )
    if min(height, width) < MIN_SIDE or height % 2 or width % 2:
        raise FitError(f"input size {height}x{width}: each side must be even and at least {MIN_SIDE}")
    _warn_about_framing(sizes, height, width)
    spec = InputSpec(height=height, width=width)
    prep = Preprocessing(interpolation=opts.interpolation, normalise=opts.normalise)
    hh, hw = feature_map_size(height), feature_map_size(width)
    if opts.pooling > min(hh, hw):
        raise FitError(f"pooling {opts.pooling} exceeds the {hh}x{hw} heatmap of a {height}x{width} input")
    timings["inspect_s"] = time.perf_counter() - started

    finetune_notes = {"finetune_steps": "0"}
    if opts.finetune_steps > 0:
        from trainer.finetune import finetune_backbone

        t = time.perf_counter()
        tuned, report = finetune_backbone(net.nets, proto_paths, spec, prep, opts.finetune_steps,
                                          seed=opts.seed, lr=opts.finetune_lr)
        net = Backbone(tuned)
        finetune_notes = report.notes()
        backbone_name = f"{backbone_name} + fine-tuned {opts.finetune_steps} steps on {product_id}"
        timings["finetune_s"] = time.perf_counter() - t

    member_notes: dict[str, str] = {}
    fold_nets = [net] * len(folds)
    if net.fitted_per_product:
        # Fitted before the prototype: their weights are part of the graph. Each fold gets members that did
        # not see the fold's images: a member fits its own images more closely than new ones (out-of-fold
        # maxima 1.4× the in-sample ones on a grass texture, RESULTS.md §10); calibration must see new ones.
        t = time.perf_counter()
        members = fit_product_members(net, proto_paths, folds, spec, prep, opts)
        net, fold_nets, member_notes = members.backbone, members.fold_backbones, members.notes
        timings["members_s"] = time.perf_counter() - t

    t = time.perf_counter()
    exposures: list[tuple[float, float]] = []  # every good image's (mean, spread): the frame check
    prototype, fold_prototypes = build_fold_prototypes(net, folds or [proto_paths], spec, prep, opts,
                                                       exposures)
    timings["prototype_s"] = time.perf_counter() - t

    t = time.perf_counter()
    scoring = scoring_for(opts, net, height, width)
    model_bytes = export_for_scoring(net, scoring, height, width)
    timings["export_s"] = time.perf_counter() - t

    def graph(fold_net: Backbone, member_scores: bool = False, path_scores: bool = False) -> bytes:
        if fold_net is net and not member_scores and not path_scores:
            return model_bytes
        return export_for_scoring(fold_net, scoring, height, width, member_scores=member_scores,
                                  path_scores=path_scores)

    if len(net.member_dims) > 1:
        # Each member's map on the scale of its own good parts: the median over good images it did not see
        # of the score its map alone gives. The maps are then averaged with equal weight (a 4-channel line
        # bank's distances are about half a 16-channel network's; the networks' own levels differ too).
        t = time.perf_counter()
        unseen = (list(zip(folds, fold_prototypes, fold_nets, strict=True)) if cross_fit
                  else [(cal_paths, prototype, net)])
        member_scores = []
        level_graphs = _sessions([n for _, _, n in unseen], lambda n: OnnxruntimeScorer(
            graph(n, member_scores=True), prototype.mean, prototype.scale, opts.threads))
        for paths_, proto, _ in unseen:
            level_scorer = next(level_graphs)  # not zip(): its result tuple would keep the last scorer alive
            level_scorer.use_prototype(proto.mean, proto.scale)
            member_scores += [level_scorer.member_scores(b)
                              for b in preprocessed_batches(paths_, spec, prep, opts.batch_size)]
            del level_scorer  # _sessions holds the only reference
        del level_graphs  # the last session's memory goes before the calibration's is built
        levels = [max(float(v), 1e-6) for v in np.median(np.concatenate(member_scores), axis=0)]
        prototype = prototype.levelled(levels, net.member_dims)
        fold_prototypes = [p.levelled(levels, net.member_dims) for p in fold_prototypes]
        timings["levels_s"] = time.perf_counter() - t

    t = time.perf_counter()
    # With members that reject alone the calibration graphs give each path's score (the averaged map's and
    # each alone member's); their weights come from those scores, and the part's score is their maximum,
    # exactly what the bundle's graph computes once the weights are folded into the prototype's scale.
    alone = net.alone_members
    by_path = bool(alone)
    if cross_fit:
        scores = []
        fold_graphs = _sessions(fold_nets, lambda n: OnnxruntimeScorer(
            graph(n, path_scores=by_path), prototype.mean, prototype.scale, opts.threads))
        for fold, fold_prototype in zip(folds, fold_prototypes, strict=True):
            scorer = next(fold_graphs)
            scorer.use_prototype(fold_prototype.mean, fold_prototype.scale)
            scores.append(score_images(scorer, fold, spec, prep, opts.batch_size, paths_graph=by_path))
            del scorer  # _sessions holds the only reference
        del fold_graphs
        cal_scores = np.concatenate(scores)
    else:
        scorer = OnnxruntimeScorer(graph(net, path_scores=by_path), prototype.mean, prototype.scale,
                                   opts.threads)
        cal_scores = score_images(scorer, cal_paths, spec, prep, opts.batch_size, exposures,
                                  paths_graph=by_path)
    path_scores = cal_scores.reshape(len(cal_scores), -1)  # N×P; N×1 where no member rejects alone
    # Each path on its own fitted tail (or, where a tail cannot be fitted, weighed to one median): one fit to
    # their maximum under-reaches the heavier tail (RESULTS.md §17, §18).
    join = join_paths(path_scores, opts.target_frr)
    calibration = join.calibration
    if alone:
        divisors = [1.0] * len(net.member_dims)
        for member, gain in zip(alone, join.gains, strict=True):
            divisors[member] = 1.0 / gain
        # The weights go into the prototype's scale, a graph input; the powers into the graph's head.
        prototype = prototype.scaled(divisors, net.member_dims)
        if join.exponents:
            scoring = ScoringSpec.model_validate({**scoring.model_dump(), "alone_exponents": join.exponents})
            model_bytes = export_for_scoring(net, scoring, height, width)
    cal_scores = join.joined(path_scores)
    if cross_fit:
        calibration = calibration.model_copy(
            update={"parameters": {**calibration.parameters, "cross_fit_folds": float(len(folds))}})
    timings["calibrate_s"] = time.perf_counter() - t

    provenance = Provenance(
        backbone=backbone_name,
        backbone_sha256=backbone_sha256(net),
        trainer_version=trainer.__version__,
        good_images=source,
        n_prototype_images=len(proto_paths),
        seed=opts.seed,
        created_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        notes={
            "input_size": size_note,
            "split": split_note,
            "scale_floor": f"{', '.join(f'{f:.6g}' for f in prototype.scale_floors)} ({opts.scale_floor:g} x "
            "median channel spread, per member)"
            if opts.standardise else "not standardised (scale = 1)",
            "member_levels": ", ".join(f"{v:.6g}" for v in prototype.levels) + " (each member's median "
            "score on good images it did not see, folded into its scale)" if prototype.levels
            else "one member",
            **({"alone_members": alone_note(alone, join)} if alone else {}),
            **finetune_notes,
            **member_notes,
            "skipped_images": "; ".join(f"{s.path.name}: {s.reason}" for s in loader.skipped) or "none",
            "fit_seconds": f"{time.perf_counter() - started:.1f} (before writing the bundle)",
        },
    )
    t = time.perf_counter()
    manifest = write_bundle(
        target, model_bytes, prototype, spec=spec, prep=prep, scoring=scoring,
        calibration=calibration, provenance=provenance,
        exposure=exposure_range(exposures, prep) if opts.exposure_check else None,
    )
    timings["write_s"] = time.perf_counter() - t
    timings["total_s"] = time.perf_counter() - started
    return FitResult(
        path=target,
        manifest=manifest,
        calibration_scores=cal_scores,
        prototype_images=proto_paths,
        calibration_images=cal_paths,
        timings_s=timings,
        backbone=net,
    )


# Width/height ratios further apart than this are different framings, not one part photographed twice.
ASPECT_SPREAD = 1.25


def _warn_about_framing(sizes: Sequence[tuple[int, int]], height: int, width: int) -> None:
    """Every image is stretched to one input size: say so where that distorts parts or invents pixels."""
    aspects = [w / h for h, w in sizes]
    if max(aspects) / min(aspects) > ASPECT_SPREAD:
        log.warning("the good images differ in shape (width/height %.2f..%.2f): each is stretched to %dx%d, "
                    "which distorts the parts framed differently; crop them alike or fit one product per "
                    "framing", min(aspects), max(aspects), height, width)
    smallest = min(min(s) for s in sizes)
    if smallest < MIN_SIDE:
        log.warning("good images as small as %d px are enlarged to %dx%d: a feature sees a %d-px "
                    "neighbourhood, so such images carry little of what the network looks at", smallest,
                    height, width, MIN_SIDE)


def _check_output(target: Path) -> None:
    """Refuse an output the bundle cannot be written to before the fit's minutes are spent, not after."""
    if target.exists() and not target.is_dir():
        raise FitError(f"{target} is a file: the bundle is a directory <--out>/<product id>")
    existing = next(p for p in (target.parent, *target.parent.parents) if p.exists())
    if not existing.is_dir():
        raise FitError(f"--out {target.parent}: {existing} is a file, not a directory of product bundles")
    if not os.access(existing, os.W_OK):
        raise FitError(f"--out {target.parent}: {existing} is not writable")


def _check_options(opts: FitOptions) -> None:
    if max(opts.input_size or (0, 0)) > MAX_INPUT_SIDE or opts.max_side > MAX_INPUT_SIDE:
        raise FitError(f"input sides go up to {MAX_INPUT_SIDE} px, got input size {opts.input_size}, "
                       f"max side {opts.max_side}")
    if opts.threads is not None and opts.threads < 1:
        raise FitError(f"threads must be >= 1, got {opts.threads}")
    if opts.pooling < 1:
        raise FitError(f"pooling must be >= 1, got {opts.pooling}")
    if opts.batch_size < 1:
        raise FitError(f"batch size must be >= 1, got {opts.batch_size}")
    if opts.calibration not in ("crossfit", "holdout"):
        raise FitError(f"calibration must be 'crossfit' or 'holdout', got {opts.calibration!r}")
    if opts.calibration == "crossfit" and opts.folds < 2:
        raise FitError(f"cross-fitted calibration needs at least 2 folds, got {opts.folds}")
    if not 0.0 < opts.target_frr < 1.0:
        raise FitError(f"target false-reject rate must lie in (0, 1), got {opts.target_frr}")
    if opts.scale_floor < 0:
        raise FitError(f"scale floor must be >= 0, got {opts.scale_floor}")
    if not 0.0 <= opts.smoothing <= 16.0:
        raise FitError(f"smoothing must lie in 0..16 heatmap cells, got {opts.smoothing}")
    if opts.prototype == "clusters" and opts.distance != "l2":
        raise FitError(f"a clusters prototype measures the Euclidean distance to the nearest centre; "
                       f"distance {opts.distance!r} is not supported with it")
    if opts.prototype == "clusters" and not 1 <= opts.clusters <= 4096:
        raise FitError(f"clusters must lie in 1..4096, got {opts.clusters}")
    if opts.context_steps < 1:
        raise FitError(f"the context member needs at least 1 training step, got {opts.context_steps}")
    if opts.dark_path:  # the manifest schema owns what a dark path may be; refused before any image is read
        if not opts.alone_members:
            raise FitError("the dark path is a member that rejects alone: --dark-path needs --alone-members")
        try:
            ExtremesSpec(alone=True, dark_path=opts.dark_path)
        except ValidationError as exc:
            raise FitError(f"dark path {opts.dark_path} px: {exc.errors()[0]['msg']}") from None
    if opts.bright_alone and not opts.alone_members:
        raise FitError("the bright excursions are a member that rejects alone: --bright-alone needs "
                       "--alone-members")
    if math.isnan(opts.whitened_max_kurtosis):
        raise FitError("the whitened member's largest kurtosis must be a number (inf: always kept), got nan")
    if opts.finetune_steps < 0 or opts.finetune_lr <= 0:
        raise FitError(f"fine-tuning needs steps >= 0 and a positive learning rate, got "
                       f"{opts.finetune_steps} steps, lr {opts.finetune_lr}")


def _common_parent(paths: Sequence[Path]) -> str:
    if not paths:
        return ""
    return os.path.commonpath([str(p.resolve().parent) for p in paths])


# ------------------------------------------------------------------------------------- bundle on disk


def scoring_spec(
    h: int,
    height: int,
    width: int,
    *,
    prototype_mode: PrototypeMode = "global",
    distance: Literal["l2", "l1"] = "l2",
    standardised: bool = False,
    pooling: int = 1,
    clusters: int = 1,
    smoothing: float = 0.0,
    members: int = 1,
    line_bank: LineBankSpec | None = None,
    whitened: WhitenedSpec | None = None,
    extremes: ExtremesSpec | None = None,
    context: ContextSpec | None = None,
) -> ScoringSpec:
    """The scoring section of a bundle for ``FeatureNet(width, members)`` (and ``line_bank``'s channels
    after them) at a height×width input (``h`` is the feature map's channel count, all members): the heatmap
    shape, stride and receptive field follow from the network. ``clusters`` counts only for a clusters
    prototype."""
    return ScoringSpec(
        feature_dim=h,
        members=members,
        line_bank=line_bank,
        whitened=whitened,
        extremes=extremes,
        context=context,
        heatmap_height=feature_map_size(height),
        heatmap_width=feature_map_size(width),
        stride=STRIDE,
        receptive_field=RECEPTIVE_FIELD,
        prototype_mode=prototype_mode,
        distance=distance,
        standardised=standardised,
        pooling=pooling,
        clusters=clusters if prototype_mode == "clusters" else 1,
        smoothing=smoothing,
    )


def scoring_for(opts: FitOptions, backbone: Backbone, height: int, width: int) -> ScoringSpec:
    """The scoring section ``opts`` ask for, for ``backbone`` at a height×width input."""
    return scoring_spec(backbone.feature_dim, height, width, prototype_mode=opts.prototype,
                        distance=opts.distance, standardised=opts.standardise, pooling=opts.pooling,
                        clusters=opts.clusters, smoothing=opts.smoothing, members=backbone.members,
                        line_bank=backbone.line_bank, whitened=backbone.whitened_spec,
                        extremes=backbone.extremes_spec, context=backbone.context_spec)


def prototype_of(
    backbone: FeatureNet | Backbone,
    images: npt.NDArray[np.float32],
    mode: PrototypeMode = "global",
    clusters: int = DEFAULT_CLUSTERS,
) -> Prototype:
    """The (unstandardised) prototype of preprocessed images N×1×H×W through ``backbone`` in torch, for
    ``write_bundle_from_backbone``; ``fit_product`` streams its images through ONNX Runtime instead."""
    with torch.no_grad():
        features = backbone.eval()(torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))).numpy()
    accumulator = PrototypeAccumulator(mode, clusters=clusters, member_dims=Backbone.of(backbone).member_dims,
                                       fixed_members=Backbone.of(backbone).fixed_members)
    accumulator.add(features)
    return accumulator.finish(standardise=False)


def write_bundle_from_backbone(
    target: Path,
    backbone: FeatureNet | Backbone,
    prototype: Prototype,
    *,
    height: int,
    width: int,
    threshold: float,
    distance: Literal["l2", "l1"] = "l2",
    pooling: int = 1,
    calibration: Calibration | None = None,
) -> Path:
    """A bundle from a given backbone and prototype without fitting (backend tests and benchmarks, where the
    weights and the prototype come from elsewhere): exports ``model.onnx`` and writes it through
    ``write_bundle`` (staged, verified, moved into place; equal inputs give an equal ``bundle_id``). There is
    no level pass: a prototype that was not ``levelled`` counts its members by their raw distances.
    ``calibration`` defaults to a fixed ``threshold``; a given one must carry that threshold."""
    if calibration is None:
        calibration = Calibration(method="fixed", target_frr=0.0, n_images=0, threshold=threshold)
    elif calibration.threshold != threshold:
        raise FitError(f"calibration threshold {calibration.threshold} differs from threshold {threshold}")
    validate_product_id(target.name)
    backbone = Backbone.of(backbone)
    scoring = scoring_spec(backbone.feature_dim, height, width, prototype_mode=prototype.mode,
                           distance=distance, standardised=prototype.standardised, pooling=pooling,
                           clusters=int(prototype.mean.shape[0]), members=backbone.members,
                           line_bank=backbone.line_bank, whitened=backbone.whitened_spec,
                           extremes=backbone.extremes_spec, context=backbone.context_spec)
    model_bytes = export_for_scoring(backbone, scoring, height, width)
    provenance = Provenance(
        backbone=f"in-memory {type(backbone).__name__} (bundle written without a fit)",
        backbone_sha256=backbone_sha256(backbone),
        trainer_version=trainer.__version__,
        good_images="",
        n_prototype_images=prototype.n_images,
        seed=0,
        created_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    )
    write_bundle(target, model_bytes, prototype, spec=InputSpec(height=height, width=width),
                 prep=Preprocessing(), scoring=scoring, calibration=calibration, provenance=provenance)
    return target


def write_prototype_npz(path: Path, prototype: Prototype) -> None:
    """``mean`` and ``scale`` as an .npz with fixed zip timestamps, so equal tensors give equal bytes (and
    an equal ``bundle_id``)."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, arr in (("mean", prototype.mean), ("scale", prototype.scale)):
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            with zf.open(info, "w", force_zip64=True) as fh:
                np.lib.format.write_array(fh, np.ascontiguousarray(arr, dtype=np.float32), allow_pickle=False)


def write_bundle(
    target: Path,
    model_bytes: bytes,
    prototype: Prototype,
    *,
    spec: InputSpec,
    prep: Preprocessing,
    scoring: ScoringSpec,
    calibration: Calibration,
    provenance: Provenance,
    exposure: Exposure | None = None,
) -> BundleManifest:
    """Write model.onnx, prototype.npz and bundle.json into a staging directory beside ``target``, verify
    it with ``load_bundle``, then move it into place."""
    product_id = target.name
    target.parent.mkdir(parents=True, exist_ok=True)
    # Dot-prefixed: list_products ignores it, and it lies on target's file system so the move is a rename.
    staging_root = Path(tempfile.mkdtemp(prefix=f".{product_id}.staging-", dir=target.parent))
    try:
        staged = staging_root / product_id
        staged.mkdir()
        (staged / MODEL_NAME).write_bytes(model_bytes)
        write_prototype_npz(staged / PROTOTYPE_NAME, prototype)
        files = hash_files(staged)
        ident = hashlib.sha256(model_bytes + (staged / PROTOTYPE_NAME).read_bytes()).hexdigest()[:12]
        manifest = BundleManifest(
            schema_version=SCHEMA_VERSION,
            product_id=product_id,
            bundle_id=f"{product_id}@{ident}",
            input=spec,
            preprocessing=prep,
            scoring=scoring,
            threshold=calibration.threshold,
            calibration=calibration,
            exposure=exposure,
            provenance=provenance,
            backbone_id=files[MODEL_NAME],
            files=files,
        )
        write_manifest(staged, manifest)
        for file in staged.iterdir():
            _fsync(file)
        _fsync(staged)
        load_bundle(staged)  # the daemon's own checks, before anything is replaced
        _move_into_place(staged, target)
        _fsync(target.parent)
    finally:
        shutil.rmtree(staging_root, ignore_errors=True)
    return manifest


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _move_into_place(staged: Path, target: Path) -> None:
    """``staged`` becomes ``target``. An existing target is swapped atomically (Linux renameat2
    RENAME_EXCHANGE: a reader sees the old bundle or the new one, never none); the old one ends up at
    ``staged`` and is removed with the staging directory. Elsewhere: two renames."""
    if not target.exists():
        os.rename(staged, target)
        return
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = getattr(libc, "renameat2", None)
        if renameat2 is not None:
            rc = renameat2(_AT_FDCWD, os.fsencode(staged), _AT_FDCWD, os.fsencode(target), _RENAME_EXCHANGE)
            if rc == 0:
                return
            log.debug("renameat2 failed (errno %d); falling back to two renames", ctypes.get_errno())
    old = staged.with_name(staged.name + ".previous")
    os.rename(target, old)
    os.rename(staged, target)


# ------------------------------------------------------------------------------------------------- CLI


def _input_size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().replace("×", "x").split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW, e.g. 512x512, got {text!r}") from None
    if max(h, w) > MAX_INPUT_SIDE:
        raise argparse.ArgumentTypeError(f"{text}: sides up to {MAX_INPUT_SIDE} px (--max-side caps the size "
                                         "chosen from the images)")
    return h, w


def thread_count(text: str) -> int:
    """``--threads``: 1 up to this machine's cores (more only makes the threads wait for each other)."""
    cores = os.cpu_count() or 1
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number of threads, got {text!r}") from None
    if not 1 <= n <= cores:
        raise argparse.ArgumentTypeError(f"{n}: threads must lie in 1..{cores} (this machine's cores)")
    return n


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = FitOptions()
    parser.add_argument("--good", type=Path, required=True, help="directory of good images of the product")
    parser.add_argument("--product", required=True, help="product id (the bundle's directory name)")
    parser.add_argument("--out", type=Path, required=True, help="products directory the bundle goes into")
    parser.add_argument("--backbone", default="default",
                        help="'default' (the shipped trained and untrained networks, stacked, the line bank, "
                        "the whitened or the extremes member and the context member), 'default-trained', "
                        "'default-untrained', a checkpoint path, or A+B to stack several; '+lines' adds the "
                        "line bank, '+whitened' the whitened member, '+extremes' the grey-level extremes "
                        "member, '+context' the context member, the last three fitted here (e.g. "
                        "default-trained+lines+whitened+extremes+context)")
    parser.add_argument("--input-size", type=_input_size, default=None, metavar="HxW",
                        help="model input size (default: median image size, long side capped by --max-side)")
    parser.add_argument("--max-side", type=int, default=d.max_side,
                        help=f"cap of the chosen input size's long side (default {d.max_side})")
    parser.add_argument("--prototype", choices=["global", "spatial", "clusters"], default=d.prototype,
                        help="global mean feature (paper), per-position statistics, or the nearest of K "
                        f"k-means centres (default {d.prototype})")
    parser.add_argument("--clusters", type=int, default=d.clusters,
                        help=f"K centres of --prototype clusters (default {d.clusters})")
    parser.add_argument("--distance", choices=["l2", "l1"], default=d.distance,
                        help=f"feature distance (default {d.distance})")
    parser.add_argument("--standardise", action=argparse.BooleanOptionalAction, default=d.standardise,
                        help="divide feature deviations by the good images' spread")
    parser.add_argument("--pooling", type=int, default=d.pooling,
                        help=f"score = max of the k×k mean-pooled heatmap (default {d.pooling})")
    parser.add_argument("--smoothing", type=float, default=d.smoothing,
                        help="σ in heatmap cells of a Gaussian smoothing of the distance map, 0 = none "
                        f"(default {d.smoothing:g})")
    parser.add_argument("--scale-floor", type=float, default=d.scale_floor,
                        help=f"floor of the spread, × median channel spread (default {d.scale_floor})")
    parser.add_argument("--target-frr", type=float, default=d.target_frr,
                        help=f"target false-reject rate on good parts (default {d.target_frr})")
    parser.add_argument("--calibration", choices=["crossfit", "holdout"], default=d.calibration,
                        help="crossfit: every good image is in the prototype and is scored for the threshold "
                        "by a prototype of the other folds; holdout: a share of the images only calibrates "
                        f"(default {d.calibration}; fine-tuning always holds out)")
    parser.add_argument("--folds", type=int, default=d.folds, help=f"folds of crossfit (default {d.folds})")
    parser.add_argument("--calibration-fraction", type=float, default=d.calibration_fraction,
                        help="share of the good images held out to calibrate the threshold with holdout "
                        f"(default {d.calibration_fraction})")
    parser.add_argument("--seed", type=int, default=d.seed, help="seed of the prototype/calibration split")
    parser.add_argument("--normalise", choices=["none", "image_mean"], default=d.normalise,
                        help="image_mean: subtract each image's own mean after scaling, so a part's overall "
                        f"lighting level does not count (default {d.normalise})")
    parser.add_argument("--exposure-check", action=argparse.BooleanOptionalAction, default=d.exposure_check,
                        help="record the good images' brightness and contrast range; the daemon reports "
                        "frames outside it not_inspected instead of scoring them (default on)")
    parser.add_argument("--batch-size", type=int, default=d.batch_size, help="images per inference batch")
    parser.add_argument("--finetune-steps", type=int, default=d.finetune_steps,
                        help="tune a copy of the backbone on the product's good images first: triplets whose "
                        "negatives are synthetic local defects (default 0: off)")
    parser.add_argument("--finetune-lr", type=float, default=d.finetune_lr,
                        help=f"learning rate of the fine-tuning (default {d.finetune_lr:g})")
    parser.add_argument("--context-steps", type=int, default=d.context_steps,
                        help="training steps of the context member, and of each of its per-fold copies "
                        "(a backbone with one, as the default)")
    parser.add_argument("--whitened-max-kurtosis", type=float, default=d.whitened_max_kurtosis,
                        help="keep the whitened member (a backbone with one, as the default) only where the "
                        "whitened good images' mean excess kurtosis is below this: ~0 for Gaussian textures, "
                        "1-3 for gravel-like or grainy ones; the grey-level extremes member only where it is "
                        f"not (default {d.whitened_max_kurtosis:g}; 'inf': always the whitened, never the "
                        "extremes member)")
    parser.add_argument("--alone-members", action=argparse.BooleanOptionalAction, default=d.alone_members,
                        help="the whitened member's map and the extremes member's dark excursions (where "
                        "kept) also reject a part on their own, not only averaged with the others, each "
                        "weighed so that its good parts' median score is the averaged map's (default: on)")
    parser.add_argument("--dark-path", type=int, default=None, metavar="PX",
                        help="with --alone-members, the extremes member (where kept) also rejects a part "
                        "whose darkest path of PX input pixels stays dark all along: a long thin crack (a "
                        "multiple of 8; 0: none; default: an eighth of the input's longer side)")
    parser.add_argument("--bright-alone", action=argparse.BooleanOptionalAction, default=d.bright_alone,
                        help="with --alone-members, the extremes member (where kept) also rejects a part for "
                        "a pixel brighter than the good parts show: for defects that catch the light, such "
                        "as scratches in a coating (default: off; on metal, glints are how good parts vary)")
    parser.add_argument("--threads", type=thread_count, default=None,
                        help="ONNX Runtime threads (default: all cores)")


def run(args: argparse.Namespace) -> int:
    options = FitOptions(
        input_size=args.input_size,
        max_side=args.max_side,
        prototype=args.prototype,
        clusters=args.clusters,
        distance=args.distance,
        standardise=args.standardise,
        pooling=args.pooling,
        smoothing=args.smoothing,
        scale_floor=args.scale_floor,
        target_frr=args.target_frr,
        calibration=args.calibration,
        folds=args.folds,
        calibration_fraction=args.calibration_fraction,
        seed=args.seed,
        batch_size=args.batch_size,
        threads=args.threads,
        normalise=args.normalise,
        exposure_check=args.exposure_check,
        finetune_steps=args.finetune_steps,
        finetune_lr=args.finetune_lr,
        context_steps=args.context_steps,
        whitened_max_kurtosis=args.whitened_max_kurtosis,
        alone_members=args.alone_members,
        dark_path=args.dark_path,
        bright_alone=args.bright_alone,
    )
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        result = fit_product(args.good, args.product, args.out, args.backbone, options)
    except (LinewatchError, ValueError) as exc:
        print(f"trainer fit: error: {exc}", file=sys.stderr)
        return 2
    print(format_summary(result))
    return 0


def format_summary(result: FitResult) -> str:
    m = result.manifest
    cal = m.calibration
    g = cal.good_scores
    s = m.scoring
    lines = [
        f"bundle     {result.path}  ({m.bundle_id})",
        f"input      {m.input.height}x{m.input.width} ({m.provenance.notes.get('input_size', '')}), "
        f"normalise {m.preprocessing.normalise}",
        f"scoring    {s.features_label}, heatmap {s.heatmap_height}x{s.heatmap_width}, prototype "
        f"{s.prototype_label}, {s.distance}, standardised={s.standardised}, smoothing {s.smoothing:g}, "
        f"pooling {s.pooling}",
        f"images     {len(result.prototype_images)} prototype, {len(result.calibration_images)} calibration "
        f"({m.provenance.notes.get('split', '')})",
        f"threshold  {m.threshold:.6g}  ({cal.method}, target false-reject rate "
        f"{100 * cal.target_frr:.2f} %, {100 * cal.parameters.get('calibration_frr', 0.0):.1f} % of "
        "calibration images above)",
    ]
    if g:
        lines.append(
            f"good       min {g['min']:.4g}  mean {g['mean']:.4g}  std {g['std']:.4g}  "
            f"p95 {g['p95']:.4g}  max {g['max']:.4g}"
        )
    lines.append("time       " + "  ".join(f"{k[:-2]} {v:.1f} s" for k, v in result.timings_s.items()))
    return "\n".join(lines)

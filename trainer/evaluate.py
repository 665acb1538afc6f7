"""``trainer evaluate``: how well a bundle separates good from defective parts, measured with the exported
model.onnx through ONNX Runtime (what the daemon runs), never with the PyTorch model.

- ``--bundle DIR --data MVTEC_DIR --out REPORT_DIR``: scores ``test/`` of an MVTec-AD-layout set and writes
  ``metrics.json`` (image/pixel/per-defect AUROC, false-reject and miss rates at the bundle's threshold,
  the raw-pixel baseline beside the network, every image's score), ``roc.png``, ``heatmaps.png`` (the
  worst-scored good parts and the best-hidden defects) and ``summary.md``.
- ``--dagm ROOT``: the paper's protocol per DAGM 2007 class (prototype from the good ``Train`` images,
  score = maximum distance, AUROC over ``Test``) as a table shaped like the paper's Table 3.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt
import torch

from linewatch.bundle.manifest import InputSpec, Preprocessing
from linewatch.bundle.registry import LoadedBundle, load_bundle
from linewatch.errors import LinewatchError
from trainer.baseline import DEFAULT_NEIGHBOURHOOD, RawPixelBaseline
from trainer.data.dagm import DagmDataset
from trainer.data.images import IMAGE_SUFFIXES, list_images, read_image
from trainer.data.mvtec import MvtecDataset, binary_mask, is_mvtec_root
from trainer.export import export_for_scoring
from trainer.fit import (
    DEFAULT_BATCH,
    PAPER_OPTIONS,
    FitError,
    FitOptions,
    _input_size,
    build_prototype,
    fit_product_members,
    preprocessed_batches,
    resolve_backbone,
    scoring_for,
    thread_count,
)
from trainer.metrics import (
    PixelAuroc,
    auroc,
    auroc_interval,
    heatmap_to_image,
    rate_upper_bound,
    rates_at_threshold,
    roc_curve,
)
from trainer.model import Backbone, FeatureNet
from trainer.report import RocCurve, SheetTile, draw_roc, draw_sheet, summary_markdown
from trainer.scorer import OnnxruntimeScorer

log = logging.getLogger(__name__)

GOOD = "good"
PAPER_INPUT_SIZE = (512, 512)  # DAGM protocol: images resized to 512×512 (DESIGN 2.3)


class EvaluationError(LinewatchError):
    """An evaluation cannot run on this data; the message says why."""


@dataclass(frozen=True, slots=True)
class TestImage:
    path: Path
    defect: str | None  # None: a good part
    mask_path: Path | None = None

    @property
    def label(self) -> int:
        return 0 if self.defect is None else 1


# ------------------------------------------------------------------------------------------- datasets


def mvtec_test_set(root: Path) -> list[TestImage]:
    """``test/good`` and ``test/<defect>/`` images of an MVTec-AD-layout product, with their masks."""
    if not root.is_dir():
        raise EvaluationError(f"{root}: no such data directory")
    if not (root / "test").is_dir():
        raise EvaluationError(f"{root}: no test/ directory (MVTec-AD layout expected)")
    dataset = MvtecDataset(root) if is_mvtec_root(root) else None
    if dataset is None:
        raise EvaluationError(f"{root}: no train/good/ directory (MVTec-AD layout expected)")
    items = [
        TestImage(s.path, None if not s.is_defective else s.defect, s.mask_path)
        for s in dataset.test_samples()
    ]
    if not items:
        raise EvaluationError(f"{root / 'test'}: no test images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return items


def read_mask(path: Path, shape: tuple[int, int]) -> npt.NDArray[np.bool_]:
    """A mask file as booleans of ``shape`` (any nonzero pixel is defect, as ``trainer.data`` reads it)."""
    return np.asarray(binary_mask(read_image(path), shape, path) > 0)


@dataclass(frozen=True, slots=True)
class DagmClass:
    name: str
    train_good: list[Path]
    test: list[TestImage]


def dagm_class(dataset: DagmDataset, name: str) -> DagmClass:
    test = [TestImage(s.path, "defect" if s.defective else None, s.mask_path)
            for s in dataset.samples(name, "Test")]
    return DagmClass(name, dataset.good_train(name), test)


# ----------------------------------------------------------------------------------------- evaluation


@dataclass
class _Scored:
    scores: npt.NDArray[np.float32]
    heatmaps: list[npt.NDArray[np.float32]]
    baseline_scores: npt.NDArray[np.float32] | None
    baseline_pixel_auroc: float | None
    inference_s: float


def _baseline_for(
    good: Sequence[Path], spec: InputSpec, prep: Preprocessing, batch_size: int
) -> RawPixelBaseline | None:
    if not good:
        return None
    baseline = RawPixelBaseline(DEFAULT_NEIGHBOURHOOD)
    for batch in preprocessed_batches(good, spec, prep, batch_size):
        baseline.add(batch)
    baseline.finish()
    return baseline


def _score_all(
    scorer: OnnxruntimeScorer,
    items: Sequence[TestImage],
    spec: InputSpec,
    prep: Preprocessing,
    baseline: RawPixelBaseline | None,
    batch_size: int,
    pixel_masks: bool,
) -> _Scored:
    scores: list[npt.NDArray[np.float32]] = []
    heatmaps: list[npt.NDArray[np.float32]] = []
    base_scores: list[npt.NDArray[np.float32]] = []
    # Baseline distances are mean |difference| of input values: the range is known, so stream them (values
    # span the value range, twice that after image-mean removal).
    low, high = prep.value_range
    span = (high - low) * (2.0 if prep.normalise == "image_mean" else 1.0)
    base_pixels = PixelAuroc(0.0, span) if baseline is not None and pixel_masks else None
    inference_s = 0.0
    paths = [item.path for item in items]
    for start, batch in zip(range(0, len(paths), batch_size),
                            preprocessed_batches(paths, spec, prep, batch_size), strict=True):
        t = time.perf_counter()
        heat, score = scorer.run(batch)
        inference_s += time.perf_counter() - t
        scores.append(score)
        heatmaps.extend(np.ascontiguousarray(h) for h in heat)
        if baseline is not None:
            base_heat = baseline.heatmaps(batch)
            base_scores.append(base_heat.reshape(len(base_heat), -1).max(axis=1))
            if base_pixels is not None:
                for item, bh in zip(items[start : start + batch_size], base_heat, strict=True):
                    _add_pixels(base_pixels, item, bh, spec, stride=1, receptive_field=DEFAULT_NEIGHBOURHOOD)
    return _Scored(
        scores=np.concatenate(scores),
        heatmaps=heatmaps,
        baseline_scores=np.concatenate(base_scores) if base_scores else None,
        baseline_pixel_auroc=base_pixels.value() if base_pixels is not None else None,
        inference_s=inference_s,
    )


def _add_pixels(
    acc: PixelAuroc, item: TestImage, heat: npt.NDArray[np.float32], spec: InputSpec, stride: int,
    receptive_field: int,
) -> None:
    """One image into a pixel AUROC: good parts are all-good pixels; defects count only with a mask."""
    if item.defect is not None and item.mask_path is None:
        return
    shape = read_image(item.path).shape[:2]
    mask = (read_mask(item.mask_path, (int(shape[0]), int(shape[1]))) if item.mask_path is not None
            else np.zeros(shape, dtype=bool))
    up = heatmap_to_image(heat, (spec.height, spec.width), (int(shape[0]), int(shape[1])), stride,
                          receptive_field)
    acc.add(up, mask)


def _per_defect(scores: npt.NDArray[np.float32], items: Sequence[TestImage]) -> dict[str, float | None]:
    good = np.array([it.defect is None for it in items])
    out: dict[str, float | None] = {}
    for kind in sorted({it.defect for it in items if it.defect is not None}):
        sel = good | np.array([it.defect == kind for it in items])
        out[kind] = auroc(scores[sel], [it.label for it, s in zip(items, sel, strict=True) if s])
    return out


def evaluate_bundle(
    bundle_dir: Path,
    data_dir: Path,
    out_dir: Path,
    threads: int | None = None,
    batch_size: int = DEFAULT_BATCH,
    sheet_count: int = 6,
) -> dict[str, Any]:
    """Evaluate ``bundle_dir`` on ``data_dir/test`` and write the report into ``out_dir``; returns the
    content of metrics.json."""
    started = time.perf_counter()
    bundle = load_bundle(bundle_dir)
    m = bundle.manifest
    items = mvtec_test_set(data_dir)
    train_good = data_dir / "train" / GOOD
    baseline = _baseline_for(
        list_images(train_good) if train_good.is_dir() else [], m.input, m.preprocessing, batch_size
    )
    if baseline is None:
        log.warning("%s: no train/good images, so no raw-pixel baseline", data_dir)
    has_masks = any(it.mask_path is not None for it in items)
    scorer = OnnxruntimeScorer(bundle.model_path, bundle.prototype_mean, bundle.prototype_scale, threads)
    scored = _score_all(scorer, items, m.input, m.preprocessing, baseline, batch_size, has_masks)
    labels = np.array([it.label for it in items])

    pixel_auroc: float | None = None
    if has_masks:
        low = min(float(h.min()) for h in scored.heatmaps)
        acc = PixelAuroc(low, max(float(h.max()) for h in scored.heatmaps))
        for item, heat in zip(items, scored.heatmaps, strict=True):
            _add_pixels(acc, item, heat, m.input, m.scoring.stride, m.scoring.receptive_field)
        pixel_auroc = acc.value()

    rates = rates_at_threshold(scored.scores, labels, m.threshold)
    baseline_metrics: dict[str, Any] | None = None
    if scored.baseline_scores is not None:
        baseline_metrics = {
            "method": f"mean of {baseline.n_images if baseline else 0} preprocessed train/good images; "
            f"score = max over {DEFAULT_NEIGHBOURHOOD}x{DEFAULT_NEIGHBOURHOOD} neighbourhoods of "
            "mean |x - prototype|",
            "image_auroc": auroc(scored.baseline_scores, labels),
            "pixel_auroc": scored.baseline_pixel_auroc,
            "per_defect": _per_defect(scored.baseline_scores, items),
        }
    total_s = time.perf_counter() - started
    metrics: dict[str, Any] = {
        "schema": "linewatch.evaluation/1",
        "data": str(data_dir.resolve()),
        "bundle": _bundle_facts(bundle),
        "image_auroc": auroc(scored.scores, labels),
        # how far the figure could move with other test parts: a few dozen parts leave it uncertain
        "image_auroc_ci95": auroc_interval([(scored.scores, labels)]),  # (low, high), a JSON array
        "pixel_auroc": pixel_auroc,
        "per_defect": _per_defect(scored.scores, items),
        "n_good": int((labels == 0).sum()),
        "n_defect": int((labels == 1).sum()),
        "n_defect_with_mask": sum(1 for it in items if it.mask_path is not None),
        "false_reject_rate": rates.false_reject_rate,
        "miss_rate": rates.miss_rate,
        "at_threshold": {
            "threshold": rates.threshold,
            "false_reject_rate": rates.false_reject_rate,
            "miss_rate": rates.miss_rate,
            "false_rejects": rates.false_rejects,
            "misses": rates.misses,
            # the largest rates these counts still allow (95 %, one-sided): 0 of 73 good parts allows 4 %
            "false_reject_rate_upper95": rate_upper_bound(rates.false_rejects, int((labels == 0).sum())),
            "miss_rate_upper95": rate_upper_bound(rates.misses, int((labels == 1).sum())),
        },
        "baseline": baseline_metrics,
        "timing": {
            "seconds": total_s,
            "inference_seconds": scored.inference_s,
            "inference_images_per_s": len(items) / scored.inference_s if scored.inference_s > 0 else 0.0,
        },
        "images": [
            {
                "file": _relative(it.path, data_dir),
                "defect": it.defect,
                "score": float(s),
                "baseline_score": None if scored.baseline_scores is None
                else float(scored.baseline_scores[i]),
            }
            for i, (it, s) in enumerate(zip(items, scored.scores, strict=True))
        ],
    }
    _write_report(out_dir, metrics, bundle, items, scored, labels, sheet_count)
    return metrics


def _relative(path: Path, root: Path) -> str:
    return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)


def _bundle_facts(bundle: LoadedBundle) -> dict[str, Any]:
    m = bundle.manifest
    return {
        "path": str(bundle.path),
        "bundle_id": m.bundle_id,
        "product_id": m.product_id,
        "input": f"{m.input.height}x{m.input.width}",
        "feature_dim": m.scoring.feature_dim,
        "members": m.scoring.members,
        "line_bank": m.scoring.line_bank.model_dump(mode="json") if m.scoring.line_bank else None,
        "prototype_mode": m.scoring.prototype_mode,
        "clusters": m.scoring.clusters,
        "prototype": m.scoring.prototype_label,
        "smoothing": m.scoring.smoothing,
        "distance": m.scoring.distance,
        "standardised": m.scoring.standardised,
        "pooling": m.scoring.pooling,
        "normalise": m.preprocessing.normalise,
        "threshold": m.threshold,
        "calibration_method": m.calibration.method,
        "target_frr": m.calibration.target_frr,
        "backbone": m.provenance.backbone,
    }


def _write_report(
    out_dir: Path,
    metrics: dict[str, Any],
    bundle: LoadedBundle,
    items: Sequence[TestImage],
    scored: _Scored,
    labels: npt.NDArray[np.int_],
    sheet_count: int,
) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    m = bundle.manifest
    if metrics["n_good"] > 0 and metrics["n_defect"] > 0:
        curves = [RocCurve("network", *roc_curve(scored.scores, labels), metrics["image_auroc"])]
        if scored.baseline_scores is not None and metrics["baseline"] is not None:
            curves.append(RocCurve("raw-pixel baseline", *roc_curve(scored.baseline_scores, labels),
                                   metrics["baseline"]["image_auroc"]))
        t = metrics["at_threshold"]
        point = (t["false_reject_rate"], 1.0 - t["miss_rate"])
        _write_png(out_dir / "roc.png", draw_roc(curves, f"{m.bundle_id} on {len(items)} test images", point))
    else:
        log.warning("no ROC curve: the test set needs both good and defective images")
    order = np.argsort(-scored.scores, kind="stable")
    worst_good = [int(i) for i in order if labels[i] == 0][:sheet_count]
    hidden = [int(i) for i in order[::-1] if labels[i] == 1][:sheet_count]

    def tile(i: int) -> SheetTile:
        item = items[i]
        image = read_image(item.path)
        mask = read_mask(item.mask_path, image.shape[:2]) if item.mask_path is not None else None
        return SheetTile(image, scored.heatmaps[i], float(scored.scores[i]),
                         f"{item.defect or GOOD}/{item.path.name}", mask)

    sheet = draw_sheet(
        [
            (f"Worst-scored good parts (threshold {m.threshold:.4g})", [tile(i) for i in worst_good]),
            ("Best-hidden defects (lowest scores)", [tile(i) for i in hidden]),
        ],
        m,
    )
    _write_png(out_dir / "heatmaps.png", sheet)
    (out_dir / "summary.md").write_text(summary_markdown(metrics), encoding="utf-8")


def _write_png(path: Path, image: npt.NDArray[np.uint8]) -> None:
    if not cv2.imwrite(str(path), image):
        raise EvaluationError(f"{path}: could not write the image")


# --------------------------------------------------------------------------------------------- DAGM


@dataclass(frozen=True, slots=True)
class DagmRow:
    name: str
    n_train_good: int
    n_test_good: int
    n_test_defect: int
    auroc_network: float | None
    auroc_baseline: float | None
    note: str = ""


def evaluate_dagm(
    root: Path,
    backbone: FeatureNet | Backbone | str | Path = "default-trained",
    classes: Sequence[int] | None = None,
    options: FitOptions | None = None,
) -> list[DagmRow]:
    """The paper's protocol per class: prototype from the good Train images, score = maximum distance of
    the exported model (ONNX Runtime), AUROC over Test; the raw-pixel baseline beside it."""
    opts = options or PAPER_OPTIONS
    height, width = opts.input_size or PAPER_INPUT_SIZE
    spec = InputSpec(height=height, width=width)
    prep = Preprocessing(interpolation=opts.interpolation, normalise=opts.normalise)
    net, _ = resolve_backbone(backbone)
    net.eval()
    scoring = scoring_for(opts, net, height, width)
    # Whitened, extremes and context members are fitted per product, so per class; without them every class
    # shares one graph. The scoring section is the class's own: each class keeps the whitened or extremes one.
    per_class = net.fitted_per_product
    shared = None if per_class else export_for_scoring(net, scoring, height, width)
    dataset = DagmDataset(root)
    names = dataset.classes()
    if classes:
        wanted = [f"Class{c}" for c in classes]
        missing = [w for w in wanted if w not in names]
        if missing:
            raise EvaluationError(f"{root}: no {', '.join(missing)}")
        names = wanted
    rows: list[DagmRow] = []
    for name in names:
        data = dagm_class(dataset, name)
        labels = np.array([it.label for it in data.test])
        n_good, n_defect = int((labels == 0).sum()), int((labels == 1).sum())
        if not data.train_good:
            rows.append(DagmRow(data.name, 0, n_good, n_defect, None, None, "no good Train images"))
            continue
        if not data.test:
            rows.append(DagmRow(data.name, len(data.train_good), 0, 0, None, None, "no Test images"))
            continue
        class_net = net
        if per_class:
            class_net = fit_product_members(net, data.train_good, [], spec, prep, opts).backbone
        proto = build_prototype(class_net, data.train_good, spec, prep, opts)
        model = shared if shared is not None else export_for_scoring(
            class_net, scoring_for(opts, class_net, height, width), height, width)
        scorer = OnnxruntimeScorer(model, proto.mean, proto.scale, opts.threads)
        baseline = _baseline_for(data.train_good, spec, prep, opts.batch_size)
        scored = _score_all(scorer, data.test, spec, prep, baseline, opts.batch_size, pixel_masks=False)
        assert scored.baseline_scores is not None
        note = "" if n_good and n_defect else "AUROC needs good and defective Test images"
        rows.append(DagmRow(data.name, len(data.train_good), n_good, n_defect,
                            auroc(scored.scores, labels), auroc(scored.baseline_scores, labels), note))
    return rows


def format_dagm_table(rows: Sequence[DagmRow]) -> str:
    """Table 3 of the paper: one row per class, image-level AUROC (network, raw-pixel baseline)."""
    def fmt(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.3f}"

    head = (f"{'class':<8} {'train good':>10} {'test good':>9} {'test defect':>11} {'AUROC network':>13} "
            f"{'AUROC raw-pixel':>15}  note")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r.name:<8} {r.n_train_good:>10} {r.n_test_good:>9} {r.n_test_defect:>11} "
                     f"{fmt(r.auroc_network):>13} {fmt(r.auroc_baseline):>15}  {r.note}".rstrip())
    nets = [r.auroc_network for r in rows if r.auroc_network is not None]
    bases = [r.auroc_baseline for r in rows if r.auroc_baseline is not None]
    mean_net = fmt(float(np.mean(nets)) if nets else None)
    mean_base = fmt(float(np.mean(bases)) if bases else None)
    lines.append(f"{'mean':<8} {'':>10} {'':>9} {'':>11} {mean_net:>13} {mean_base:>15}  "
                 f"over {len(nets)} classes with an AUROC")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--bundle", type=Path, help="bundle directory to evaluate (with --data and --out)")
    what.add_argument("--dagm", type=Path, metavar="ROOT", help="DAGM 2007 root: run the paper's protocol")
    parser.add_argument("--data", type=Path, help="MVTec-AD-layout directory (test/, ground_truth/, train/)")
    parser.add_argument("--out", type=Path, help="report directory (required with --bundle; optional with "
                        "--dagm, where it receives dagm.json)")
    parser.add_argument("--classes", default=None, help="DAGM classes, e.g. 1,2,5 (default: all present)")
    parser.add_argument("--backbone", default="default-trained",
                        help="DAGM: a backbone name as for fit (default: default-trained, the shipped "
                        "trained network alone, as the paper's protocol has one network)")
    parser.add_argument("--input-size", type=_input_size, default=PAPER_INPUT_SIZE, metavar="HxW",
                        help="DAGM: model input size (default 512x512, the paper's)")
    parser.add_argument("--prototype", choices=["global", "spatial", "clusters"], default="global",
                        help="DAGM: prototype mode (default global, the paper's)")
    parser.add_argument("--clusters", type=int, default=64, help="DAGM: K of --prototype clusters")
    parser.add_argument("--smoothing", type=float, default=0.0,
                        help="DAGM: σ (cells) of the distance map's smoothing (default 0, the paper's)")
    parser.add_argument("--distance", choices=["l2", "l1"], default="l2", help="DAGM: distance (default l2)")
    parser.add_argument("--standardise", action=argparse.BooleanOptionalAction, default=False,
                        help="DAGM: standardised distances (default off, the paper's)")
    parser.add_argument("--pooling", type=int, default=1, help="DAGM: k×k pooled maximum (default 1)")
    parser.add_argument("--normalise", choices=["none", "image_mean"], default=PAPER_OPTIONS.normalise,
                        help=f"DAGM: input normalisation (default {PAPER_OPTIONS.normalise}, as the paper)")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH, help="images per inference batch")
    parser.add_argument("--threads", type=thread_count, default=None,
                        help="ONNX Runtime threads (default: all cores)")


def run(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        if args.bundle is not None:
            if args.data is None or args.out is None:
                print("trainer evaluate: error: --bundle needs --data and --out", file=sys.stderr)
                return 2
            metrics = evaluate_bundle(args.bundle, args.data, args.out, args.threads, args.batch_size)
            print((args.out / "summary.md").read_text(encoding="utf-8"))
            log.info("report written to %s (image AUROC %s)", args.out, metrics["image_auroc"])
            return 0
        classes = [int(c) for c in args.classes.split(",")] if args.classes else None
        options = FitOptions(
            input_size=args.input_size, prototype=args.prototype, clusters=args.clusters,
            distance=args.distance, standardise=args.standardise, pooling=args.pooling,
            smoothing=args.smoothing, normalise=args.normalise, batch_size=args.batch_size,
            threads=args.threads, calibration=PAPER_OPTIONS.calibration,
        )
        rows = evaluate_dagm(args.dagm, args.backbone, classes, options)
    except (LinewatchError, FitError, ValueError) as exc:
        print(f"trainer evaluate: error: {exc}", file=sys.stderr)
        return 2
    print(format_dagm_table(rows))
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        rows_json = json.dumps([dataclasses.asdict(r) for r in rows], indent=2)
        (args.out / "dagm.json").write_text(rows_json + "\n", encoding="utf-8")
    return 0

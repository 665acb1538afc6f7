"""``linewatch products list|show ID|verify [ID]``: the product bundles on disk.

The directory is the config's ``products.dir`` (``--config``) or ``--dir``.

* ``list``: one line per bundle (from its manifest; ``*`` marks ``products.active``), without verifying.
* ``show ID``: the manifest of one bundle (``--json``: as written).
* ``verify [ID]``: what the daemon checks before it loads a bundle — the manifest schema, the sha256 of every
  listed file, the prototype's shapes, and the model's inputs and outputs against the manifest's input spec
  (loaded in ONNX Runtime). Prints ``OK`` or the problem per bundle; exits 1 if any bundle has one. Without
  an ID every sub-directory of the products directory is checked, including ones without a bundle.json.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from linewatch.bundle.manifest import MANIFEST_NAME, BundleManifest
from linewatch.bundle.registry import bundle_path, list_products, load_bundle, read_manifest
from linewatch.config import DEFAULT_CONFIG_PATH, format_problems, load_settings
from linewatch.errors import ConfigError, LinewatchError
from linewatch.inference.onnxruntime import OnnxruntimeBackend, OnnxruntimeConfig

EXIT_OK = 0
EXIT_PROBLEM = 1
EXIT_USAGE = 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    # --config/--dir are accepted after the sub-verb (``products list --dir X``), where people type them.
    common = argparse.ArgumentParser(add_help=False)
    where = common.add_mutually_exclusive_group()
    where.add_argument("--config", type=Path, default=None,
                       help=f"config file naming products.dir (default {DEFAULT_CONFIG_PATH})")
    where.add_argument("--dir", type=Path, default=None, help="products directory (instead of the config's)")
    sub = parser.add_subparsers(dest="what", required=True, metavar="list|show|verify")
    sub.add_parser("list", parents=[common], help="one line per product bundle")
    show = sub.add_parser("show", parents=[common], help="the manifest of one bundle")
    show.add_argument("product_id", metavar="ID")
    show.add_argument("--json", action="store_true", help="print bundle.json as it is")
    verify = sub.add_parser("verify", parents=[common],
                            help="check schema, hashes and input spec (exit 1 on a problem)")
    verify.add_argument("product_id", metavar="ID", nargs="?", default=None,
                        help="one product (default: every directory)")


def _where(args: argparse.Namespace) -> tuple[Path, str | None, OnnxruntimeConfig] | str:
    """(products dir, active product, ONNX Runtime settings) or the problem as text."""
    if args.dir is not None:
        return args.dir, None, OnnxruntimeConfig(intra_op_threads=1)
    path = args.config or DEFAULT_CONFIG_PATH
    try:
        settings = load_settings(path)
    except ConfigError as exc:
        return format_problems(exc) + f"\nlinewatch products: invalid configuration {path} (or give --dir)"
    return settings.products.dir, settings.products.active, settings.inference.onnxruntime


def _summary(manifest: BundleManifest) -> tuple[str, ...]:
    m = manifest
    return (
        m.product_id, m.bundle_id, f"{m.input.height}x{m.input.width}", f"{m.threshold:.6g}",
        m.calibration.method, m.backbone_id[:12], m.provenance.created_at,
    )  # fmt: skip


def _table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def _list(products_dir: Path, active: str | None) -> int:
    if not products_dir.is_dir():  # a mistyped --dir is not an empty line
        print(f"linewatch products: {products_dir}: no such directory", file=sys.stderr)
        return EXIT_PROBLEM
    ids = list_products(products_dir)
    if not ids:
        print(f"no product bundles in {products_dir}", file=sys.stderr)
        return EXIT_OK
    rows: list[tuple[str, ...]] = [
        ("", "product", "bundle", "input", "threshold", "calibration", "backbone", "created")
    ]
    for pid in ids:
        mark = "*" if pid == active else ""
        try:
            rows.append((mark, *_summary(read_manifest(products_dir / pid))))
        except LinewatchError as exc:
            rows.append((mark, pid, f"INVALID: {exc}", "", "", "", "", ""))
    print(_table(rows))
    return EXIT_OK


def _show(products_dir: Path, product_id: str, as_json: bool) -> int:
    try:
        path = bundle_path(products_dir, product_id)
        manifest = read_manifest(path)
    except LinewatchError as exc:
        print(f"linewatch products: {exc}", file=sys.stderr)
        return EXIT_PROBLEM
    if as_json:
        print((path / MANIFEST_NAME).read_text(encoding="utf-8").rstrip())
        return EXIT_OK
    m = manifest
    cal = m.calibration
    lines = [
        f"product      {m.product_id}",
        f"bundle       {m.bundle_id}",
        f"path         {path}",
        f"input        {m.input.height}x{m.input.width} gray, {m.preprocessing.interpolation} resize, "
        f"values {m.preprocessing.value_range}, normalise {m.preprocessing.normalise}",
        f"scoring      {m.scoring.prototype_label} prototype, {m.scoring.distance}"
        f"{' standardised' if m.scoring.standardised else ''}, smoothing {m.scoring.smoothing:g}, "
        f"pooling {m.scoring.pooling}, "
        f"{m.scoring.features_label}, heatmap {m.scoring.heatmap_height}x{m.scoring.heatmap_width}",
        f"threshold    {m.threshold:.6g} ({cal.method}, target false-reject rate {cal.target_frr:g}, "
        f"{cal.n_images} calibration images)",
        "good scores  " + (", ".join(f"{k} {v:.4g}" for k, v in cal.good_scores.items()) or "-"),
        "exposure     " + (
            f"frames with a mean in {m.exposure.level_min - m.exposure.level_margin:.3f}.."
            f"{m.exposure.level_max + m.exposure.level_margin:.3f} and a contrast of at least "
            f"{m.exposure.contrast_min / m.exposure.contrast_factor:.3f} are scored ({m.exposure.n_images} "
            "good images)" if m.exposure is not None else "not checked (the bundle has no exposure range)"),
        f"backbone     {m.backbone_id} ({m.provenance.backbone})",
        f"fitted       {m.provenance.created_at} from {m.provenance.good_images or '-'} "
        f"({m.provenance.n_prototype_images} images, seed {m.provenance.seed})",
        "engines      " + (", ".join(f"{e.file} ({e.gpu_name}, TensorRT {e.tensorrt_version}, {e.precision})"
                                    for e in m.engines) or "none (ONNX Runtime, or built on first use)"),
        "files        " + ", ".join(f"{name} {digest[:12]}" for name, digest in sorted(m.files.items())),
    ]
    print("\n".join(lines))
    return EXIT_OK


def verify_bundle(path: Path, onnxruntime: OnnxruntimeConfig) -> str | None:
    """None when the bundle is usable; else the problem, as the daemon would report it."""
    try:
        bundle = load_bundle(path)  # schema, hashes, prototype shapes
        backend = OnnxruntimeBackend(bundle, onnxruntime.model_copy(update={"warmup_runs": 1}))  # input spec
        backend.close()
    except LinewatchError as exc:
        return str(exc)
    return None


def _verify(products_dir: Path, product_id: str | None, onnxruntime: OnnxruntimeConfig) -> int:
    if product_id is not None:
        try:
            paths = [bundle_path(products_dir, product_id)]
        except LinewatchError as exc:
            print(f"FAIL  {product_id}: {exc}")
            return EXIT_PROBLEM
    elif not products_dir.is_dir():
        print(f"linewatch products: {products_dir}: no such directory", file=sys.stderr)
        return EXIT_PROBLEM
    else:
        paths = sorted(p for p in products_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    failed = 0
    for path in paths:
        problem = verify_bundle(path, onnxruntime)
        if problem is None:
            print(f"OK    {path.name}: {read_manifest(path).bundle_id}")
        else:
            failed += 1
            print(f"FAIL  {path.name}: {problem}")
    if not paths:
        print(f"no product bundles in {products_dir}", file=sys.stderr)
    return EXIT_PROBLEM if failed else EXIT_OK


def run(args: argparse.Namespace) -> int:
    where = _where(args)
    if isinstance(where, str):
        print(where, file=sys.stderr)
        return EXIT_USAGE
    products_dir, active, onnxruntime = where
    if args.what == "list":
        return _list(products_dir, active)
    if args.what == "show":
        return _show(products_dir, args.product_id, args.json)
    return _verify(products_dir, args.product_id, onnxruntime)

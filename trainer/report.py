"""What ``trainer evaluate`` draws and writes besides metrics.json: roc.png, the heatmap sheet, summary.md.

Drawn with OpenCV (already a dependency) rather than matplotlib; the overlays use the daemon's own
``linewatch.scoring.heatmap.render_heatmap``, so a heatmap in a report looks like the one on the line.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from linewatch.bundle.manifest import BundleManifest
from linewatch.scoring.heatmap import render_heatmap

BGR = tuple[int, int, int]
WHITE: BGR = (255, 255, 255)
BLACK: BGR = (0, 0, 0)
GREY: BGR = (170, 170, 170)
RED: BGR = (40, 40, 220)
GREEN: BGR = (60, 170, 60)
CURVE_COLOURS: tuple[BGR, ...] = ((200, 110, 30), (30, 130, 240), (60, 170, 60), (160, 60, 160))
FONT = cv2.FONT_HERSHEY_SIMPLEX


@dataclass(frozen=True, slots=True)
class RocCurve:
    label: str
    fpr: npt.NDArray[np.float64]
    tpr: npt.NDArray[np.float64]
    auroc: float | None


def draw_roc(
    curves: Sequence[RocCurve],
    title: str,
    operating_point: tuple[float, float] | None = None,
    size_px: int = 640,
) -> npt.NDArray[np.uint8]:
    """ROC plot (BGR image): false-positive rate (good parts rejected) → true-positive rate (defects found);
    ``operating_point`` = (FRR, 1 - miss rate) at the bundle's threshold, drawn as a dot."""
    margin_l, margin_b, margin_t, margin_r = 70, 60, 50, 20
    img = np.full((size_px, size_px, 3), 255, np.uint8)
    x0, y0 = margin_l, size_px - margin_b  # plot origin (fpr 0, tpr 0)
    span_x, span_y = size_px - margin_l - margin_r, size_px - margin_b - margin_t

    def to_px(fpr: float, tpr: float) -> tuple[int, int]:
        return round(x0 + fpr * span_x), round(y0 - tpr * span_y)

    for tick in np.linspace(0.0, 1.0, 6):
        cv2.line(img, to_px(tick, 0), to_px(tick, 1), (230, 230, 230), 1)
        cv2.line(img, to_px(0, tick), to_px(1, tick), (230, 230, 230), 1)
        cv2.putText(img, f"{tick:.1f}", (to_px(tick, 0)[0] - 12, y0 + 20), FONT, 0.45, BLACK, 1, cv2.LINE_AA)
        cv2.putText(img, f"{tick:.1f}", (x0 - 38, to_px(0, tick)[1] + 5), FONT, 0.45, BLACK, 1, cv2.LINE_AA)
    cv2.rectangle(img, to_px(0, 1), to_px(1, 0), BLACK, 1)
    _dashed_line(img, to_px(0, 0), to_px(1, 1), GREY)
    for i, curve in enumerate(curves):
        pts = np.array([to_px(f, t) for f, t in zip(curve.fpr, curve.tpr, strict=True)], np.int32)
        cv2.polylines(img, [pts], False, CURVE_COLOURS[i % len(CURVE_COLOURS)], 2, cv2.LINE_AA)
        auc = "n/a" if curve.auroc is None else f"{curve.auroc:.3f}"
        legend_y = y0 - 20 - 24 * (len(curves) - 1 - i)
        cv2.line(img, (x0 + span_x - 260, legend_y - 5), (x0 + span_x - 230, legend_y - 5),
                 CURVE_COLOURS[i % len(CURVE_COLOURS)], 3)
        cv2.putText(img, f"{curve.label}  AUROC {auc}", (x0 + span_x - 222, legend_y), FONT, 0.5, BLACK, 1,
                    cv2.LINE_AA)
    if operating_point is not None:
        cv2.circle(img, to_px(*operating_point), 6, RED, -1, cv2.LINE_AA)
        px, py = to_px(*operating_point)
        cv2.putText(img, "threshold", (min(px + 10, size_px - 90), max(py + 18, margin_t + 12)), FONT, 0.45,
                    RED, 1, cv2.LINE_AA)
    cv2.putText(img, title, (x0, 30), FONT, 0.6, BLACK, 1, cv2.LINE_AA)
    cv2.putText(img, "false-positive rate (good parts rejected)", (x0 + 60, size_px - 15), FONT, 0.5, BLACK,
                1, cv2.LINE_AA)
    label = np.full((24, span_y, 3), 255, np.uint8)
    cv2.putText(label, "true-positive rate (defects found)", (50, 17), FONT, 0.5, BLACK, 1, cv2.LINE_AA)
    img[margin_t : margin_t + span_y, 4:28] = cv2.rotate(label, cv2.ROTATE_90_COUNTERCLOCKWISE)
    return img


def _dashed_line(img: npt.NDArray[np.uint8], a: tuple[int, int], b: tuple[int, int], colour: BGR) -> None:
    n = 40
    for i in range(0, n, 2):
        p = (a[0] + (b[0] - a[0]) * i // n, a[1] + (b[1] - a[1]) * i // n)
        q = (a[0] + (b[0] - a[0]) * (i + 1) // n, a[1] + (b[1] - a[1]) * (i + 1) // n)
        cv2.line(img, p, q, colour, 1, cv2.LINE_AA)


@dataclass(frozen=True, slots=True)
class SheetTile:
    """One image on the heatmap sheet."""

    image: npt.NDArray[Any]  # as read from disk
    heatmap: npt.NDArray[np.float32]  # H'×W'
    score: float
    caption: str
    mask: npt.NDArray[np.bool_] | None = None  # defect mask in image pixels, drawn as a contour


def draw_sheet(
    sections: Sequence[tuple[str, Sequence[SheetTile]]],
    manifest: BundleManifest,
    tile_height: int = 300,
    columns: int = 6,
) -> npt.NDArray[np.uint8]:
    """Rows of heatmap overlays under a heading per section (e.g. worst-scored good parts, best-hidden
    defects). Colours: the daemon's scale (the threshold is the middle of the colour map)."""
    aspect = manifest.input.width / manifest.input.height
    tile_w = int(np.clip(round(tile_height * aspect), 120, 2 * tile_height))
    caption_h, heading_h, pad = 40, 36, 6
    width = columns * (tile_w + pad) + pad
    blocks: list[npt.NDArray[np.uint8]] = []
    for heading, tiles in sections:
        head = np.full((heading_h, width, 3), 255, np.uint8)
        cv2.putText(head, heading, (pad, 25), FONT, 0.7, BLACK, 2, cv2.LINE_AA)
        blocks.append(head)
        if not tiles:
            empty = np.full((caption_h, width, 3), 255, np.uint8)
            cv2.putText(empty, "(none)", (pad, 25), FONT, 0.5, GREY, 1, cv2.LINE_AA)
            blocks.append(empty)
        for start in range(0, len(tiles), columns):
            row = np.full((tile_height + caption_h + pad, width, 3), 255, np.uint8)
            for j, tile in enumerate(tiles[start : start + columns]):
                x = pad + j * (tile_w + pad)
                row[:tile_height, x : x + tile_w] = _overlay(tile, manifest, tile_w, tile_height)
                rejected = tile.score > manifest.threshold
                cv2.putText(row, f"score {tile.score:.3g} ({'fail' if rejected else 'pass'})",
                            (x, tile_height + 16), FONT, 0.45, RED if rejected else GREEN, 1, cv2.LINE_AA)
                cv2.putText(row, _fit_text(tile.caption, tile_w), (x, tile_height + 34), FONT, 0.4, BLACK,
                            1, cv2.LINE_AA)
            blocks.append(row)
    return np.concatenate(blocks, axis=0)


def _overlay(tile: SheetTile, manifest: BundleManifest, width: int, height: int) -> npt.NDArray[np.uint8]:
    over = render_heatmap(tile.image, tile.heatmap, manifest, manifest.threshold, max_side=max(width, height))
    over = cv2.resize(over, (width, height), interpolation=cv2.INTER_AREA)
    if tile.mask is not None and tile.mask.any():
        small = cv2.resize(tile.mask.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST)
        contours, _ = cv2.findContours(small, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(over, contours, -1, WHITE, 1, cv2.LINE_AA)
    return np.asarray(over, dtype=np.uint8)


def _fit_text(text: str, width_px: int, scale: float = 0.4) -> str:
    """``text``, shortened from the left with '...' (Hershey fonts are ASCII only) to fit ``width_px``."""
    if cv2.getTextSize(text, FONT, scale, 1)[0][0] <= width_px:
        return text
    for start in range(1, len(text)):
        short = "..." + text[start:]
        if cv2.getTextSize(short, FONT, scale, 1)[0][0] <= width_px:
            return short
    return ""


def _fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def summary_markdown(metrics: dict[str, Any]) -> str:
    """summary.md from metrics.json's content."""
    b = metrics["bundle"]
    base = metrics.get("baseline") or {}
    lines = [
        f"# Evaluation of `{b['bundle_id']}`",
        "",
        f"Data: `{metrics['data']}` — {metrics['n_good']} good and {metrics['n_defect']} defective test "
        f"images. Model: {b['input']}, prototype {b.get('prototype', b['prototype_mode'])}, {b['distance']}, "
        f"standardised={b['standardised']}, pooling {b['pooling']}, scored with ONNX Runtime.",
        "",
        "| | network | raw-pixel baseline |",
        "|---|---|---|",
        f"| image AUROC | {_fmt(metrics['image_auroc'])}{_ci(metrics.get('image_auroc_ci95'))} | "
        f"{_fmt(base.get('image_auroc'))} |",
        f"| pixel AUROC | {_fmt(metrics['pixel_auroc'])} | {_fmt(base.get('pixel_auroc'))} |",
    ]
    for kind, value in metrics["per_defect"].items():
        lines.append(f"| AUROC `{kind}` | {_fmt(value)} | {_fmt(base.get('per_defect', {}).get(kind))} |")
    t = metrics["at_threshold"]
    lines += [
        "",
        f"At the bundle's threshold {t['threshold']:.6g} (calibrated by `{b['calibration_method']}` for a "
        f"target false-reject rate of {100 * b['target_frr']:.2f} %):",
        "",
        f"- false-reject rate: {_pct(t['false_reject_rate'])} ({t['false_rejects']} of {metrics['n_good']} "
        f"good parts rejected{_upper(t.get('false_reject_rate_upper95'))})",
        f"- miss rate: {_pct(t['miss_rate'])} ({t['misses']} of {metrics['n_defect']} defects passed"
        f"{_upper(t.get('miss_rate_upper95'))})",
        "",
        f"ONNX Runtime: {metrics['timing']['inference_images_per_s']:.1f} images/s on this machine (model "
        f"only); the evaluation took {metrics['timing']['seconds']:.1f} s in all, with reading, "
        "preprocessing and the raw-pixel baseline.",
        "",
        "Files: `metrics.json` (every number above plus each image's score), `roc.png`, `heatmaps.png` "
        "(worst-scored good parts, best-hidden defects).",
        "",
    ]
    return "\n".join(lines)


def _ci(bounds: Sequence[float] | None) -> str:
    return "" if bounds is None else f" (95 % bootstrap interval {bounds[0]:.3f}–{bounds[1]:.3f})"


def _upper(bound: float | None) -> str:
    return "" if bound is None else f"; the true rate may be up to {_pct(bound)} at 95 % confidence"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f} %"

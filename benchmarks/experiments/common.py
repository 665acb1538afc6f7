"""Shared pieces of the accuracy experiments (issue 3): data, feature maps, prototypes, scores, AUROC.

Self-contained on purpose (only ``trainer.model`` is imported), so the numbers in RESULTS.md can be
reproduced while the trainer's own fit/evaluate modules are still being written.

Conventions
- Images are grayscale float32 in [-1, 1] (the bundle's value range), brought to the model input size by
  ``cv2.resize`` (stretch, INTER_AREA) exactly as the daemon's preprocessing does.
- A heatmap cell (i, j) sees input pixels [2i, 2i+32) × [2j, 2j+32); ``heatmap_to_image`` maps it back to
  the original image for pixel AUROC (nearest cell centre, edges extended).
"""

from __future__ import annotations

import glob
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from trainer.model import FeatureNet

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared" / "data"
KSDD = SHARED / "kolektorsdd"
DAGM = SHARED / "dagm2007-samples"
CACHE = Path(os.environ.get("LW_EXP_CACHE", "/tmp/lw-exp-cache"))


def set_threads(n: int = 2) -> None:
    torch.set_num_threads(n)
    cv2.setNumThreads(1)


# ---------------------------------------------------------------------------------------------- data


@dataclass
class Split:
    """An MVTec-layout evaluation set held in memory at original resolution (uint8)."""

    name: str
    train: list[np.ndarray]
    test: list[np.ndarray]
    labels: np.ndarray  # 1 = defective
    masks: list[np.ndarray | None]  # per test image, original resolution, bool (None for good)
    test_names: list[str] = field(default_factory=list)


def _read_gray(path: str) -> np.ndarray:
    img = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if img is None:
        raise OSError(f"unreadable image {path}")
    if img.ndim == 3:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    if img.dtype != np.uint8:
        img = (img.astype(np.float32) / np.iinfo(img.dtype).max * 255).round().astype(np.uint8)
    return img


def load_mvtec(root: Path, name: str | None = None) -> Split:
    exts = ("*.png", "*.jpg", "*.bmp", "*.PNG", "*.JPG", "*.tif")

    def files(d: Path) -> list[str]:
        out: list[str] = []
        for e in exts:
            out += glob.glob(str(d / e))
        return sorted(out)

    train = [_read_gray(p) for p in files(root / "train" / "good")]
    test, labels, masks, names = [], [], [], []
    for sub in sorted(os.listdir(root / "test")):
        for p in files(root / "test" / sub):
            img = _read_gray(p)
            test.append(img)
            names.append(f"{sub}/{Path(p).name}")
            if sub == "good":
                labels.append(0)
                masks.append(None)
            else:
                labels.append(1)
                stem = Path(p).stem
                mp = root / "ground_truth" / sub / f"{stem}_mask.png"
                m = cv2.imread(str(mp), cv2.IMREAD_GRAYSCALE) if mp.exists() else None
                masks.append(None if m is None else (m > 127))
    return Split(name or root.name, train, test, np.array(labels), masks, names)


def load_ksdd() -> Split:
    return load_mvtec(KSDD, "ksdd")


@dataclass
class DagmClass:
    name: str
    images: list[np.ndarray]
    masks: list[np.ndarray | None]


def load_dagm_samples() -> list[DagmClass]:
    """The handful of DAGM 2007 images in the shared samples: per class, images with their ellipse masks."""
    out = []
    for cdir in sorted(DAGM.glob("Class*")):
        imgs, masks = [], []
        for part in ("Train", "Test"):
            lab = cdir / part / "Label" / "Labels.txt"
            if not lab.exists():
                continue
            for line in lab.read_text().splitlines()[1:]:
                cols = line.split("\t")
                if len(cols) < 5:
                    continue
                imgs.append(_read_gray(str(cdir / part / cols[2])))
                lf = cols[4].strip()
                if cols[1] == "1" and lf != "0":
                    masks.append(cv2.imread(str(cdir / part / "Label" / lf), cv2.IMREAD_GRAYSCALE) > 127)
                elif cols[1] == "1":
                    masks.append(None)  # defective but unlabelled: skipped for pixel metrics
                else:
                    masks.append(np.zeros(imgs[-1].shape, bool))
        out.append(DagmClass(cdir.name, imgs, masks))
    return out


def to_input(img: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
    """uint8 image → float32 [-1, 1] at (height, width) (stretch, INTER_AREA), as the daemon does."""
    if size is not None and img.shape != size:
        img = cv2.resize(img, (size[1], size[0]), interpolation=cv2.INTER_AREA)
    return img.astype(np.float32) * (2.0 / 255.0) - 1.0


def native_size(images: Sequence[np.ndarray], scale: float = 1.0, multiple: int = 4) -> tuple[int, int]:
    """Median image size times ``scale``, rounded to a multiple: the 'native resolution' input policy."""
    hs = np.median([i.shape[0] for i in images]) * scale
    ws = np.median([i.shape[1] for i in images]) * scale
    return int(round(hs / multiple) * multiple), int(round(ws / multiple) * multiple)


# ------------------------------------------------------------------------------------------ features


FeatureFn = Callable[[np.ndarray], np.ndarray]  # N×H×W input batch → N×C×H'×W' float32


def net_features(net: FeatureNet, batch: int = 4) -> FeatureFn:
    net.eval()

    def run(x: np.ndarray) -> np.ndarray:
        outs = []
        with torch.no_grad():
            for i in range(0, len(x), batch):
                t = torch.from_numpy(x[i : i + batch]).unsqueeze(1)
                outs.append(net(t).numpy())
        return np.concatenate(outs)

    return run


def raw_pixel_features(x: np.ndarray) -> np.ndarray:
    """The paper's starting point, 'difference to an ideal prototype' in pixels, on the same grid as the
    network: the 32×32 neighbourhood's pixels mean-pooled 2×2 (stride 2, like the network's pool),
    cropped to the network's output size so heatmaps are comparable."""
    t = torch.from_numpy(x).unsqueeze(1)
    t = F.avg_pool2d(t, 2)
    off = 7  # cell (i, j) ↔ pooled pixel i+7 ≈ centre of the 32 px window
    hh, ww = (x.shape[1] - 6) // 2 - 12, (x.shape[2] - 6) // 2 - 12
    return t[:, :, off : off + hh, off : off + ww].numpy()


def extract(feat: FeatureFn, images: Sequence[np.ndarray], size: tuple[int, int] | None) -> np.ndarray:
    """All images at one input size → N×C×H'×W' (sizes must agree when ``size`` is None)."""
    outs = []
    for i in range(0, len(images), 8):
        x = np.stack([to_input(im, size) for im in images[i : i + 8]])
        outs.append(feat(x).astype(np.float32))
    return np.concatenate(outs)


# ------------------------------------------------------------------------------------------ scoring


@dataclass
class ScoreConfig:
    mode: str = "global"  # global | spatial
    distance: str = "l2"  # l2 | l1
    standardise: bool = False
    pooling: int = 1
    eps_rel: float = 0.1  # scale floor as a fraction of the median spread (robust standardisation)

    def label(self) -> str:
        s = f"{self.mode}-{self.distance}"
        s += "-std" if self.standardise else ""
        return s + f"-k{self.pooling}"


class PrototypeStats:
    """Streaming per-position sums over good feature maps (so native-resolution fits fit in memory)."""

    def __init__(self) -> None:
        self.n = 0
        self.s1: np.ndarray | None = None
        self.s2: np.ndarray | None = None

    def add(self, feats: np.ndarray) -> None:
        f = feats.astype(np.float64)
        s1, s2 = f.sum(axis=0, keepdims=True), (f * f).sum(axis=0, keepdims=True)
        self.s1 = s1 if self.s1 is None else self.s1 + s1
        self.s2 = s2 if self.s2 is None else self.s2 + s2
        self.n += len(feats)

    def prototype(self, cfg: ScoreConfig) -> tuple[np.ndarray, np.ndarray]:
        """mean, scale as 1×C×H'×W' (global: per-channel statistics over all positions, broadcast)."""
        assert self.s1 is not None and self.s2 is not None
        if cfg.mode == "global":
            n = self.n * self.s1.shape[2] * self.s1.shape[3]
            m1 = self.s1.sum(axis=(2, 3), keepdims=True) / n
            m2 = self.s2.sum(axis=(2, 3), keepdims=True) / n
        elif cfg.mode == "spatial":
            m1, m2 = self.s1 / self.n, self.s2 / self.n
        else:
            raise ValueError(cfg.mode)
        std = np.sqrt(np.maximum(m2 - m1 * m1, 0.0))
        if cfg.standardise:
            floor = cfg.eps_rel * np.median(std, axis=(0, 2, 3), keepdims=True) + 1e-6
            scale = np.maximum(std, floor)
        else:
            scale = np.ones_like(std)
        shape = self.s1.shape
        return (
            np.ascontiguousarray(np.broadcast_to(m1, shape), np.float32),
            np.ascontiguousarray(np.broadcast_to(scale, shape), np.float32),
        )


def fit_prototype(train_feats: np.ndarray, cfg: ScoreConfig) -> tuple[np.ndarray, np.ndarray]:
    stats = PrototypeStats()
    stats.add(train_feats)
    return stats.prototype(cfg)


def heatmaps(feats: np.ndarray, mean: np.ndarray, scale: np.ndarray, cfg: ScoreConfig) -> np.ndarray:
    dev = (feats - mean) / scale
    if cfg.distance == "l2":
        return np.sqrt((dev * dev).sum(axis=1))
    return np.abs(dev).sum(axis=1)


def image_scores(hm: np.ndarray, pooling: int) -> np.ndarray:
    if pooling > 1:
        t = torch.from_numpy(hm).unsqueeze(1)
        hm = F.avg_pool2d(t, pooling, stride=1).squeeze(1).numpy()
    return hm.reshape(len(hm), -1).max(axis=1)


INPUT_PAD = 0  # ensemble.py --pad


def heatmap_to_image(hm: np.ndarray, input_size: tuple[int, int], image_shape: tuple[int, int]) -> np.ndarray:
    """One H'×W' heatmap → image_shape: cell centres at input pixel 2i+15.5, edges extended, then the
    input→original stretch undone."""
    ih, iw = input_size
    up = cv2.resize(hm, (hm.shape[1] * 2, hm.shape[0] * 2), interpolation=cv2.INTER_LINEAR)
    top = left = 15 - INPUT_PAD  # the input was reflect-padded by INPUT_PAD px before the features
    full = cv2.copyMakeBorder(
        up, top, ih - up.shape[0] - top, left, iw - up.shape[1] - left, cv2.BORDER_REPLICATE
    )
    if full.shape != image_shape:
        full = cv2.resize(full, (image_shape[1], image_shape[0]), interpolation=cv2.INTER_LINEAR)
    return full


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Mann–Whitney AUROC with ties averaged."""
    scores = np.asarray(scores, np.float64).ravel()
    labels = np.asarray(labels).ravel().astype(bool)
    n_pos, n_neg = labels.sum(), (~labels).sum()
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    s = scores[order]
    ranks = np.empty(len(s), np.float64)
    # average ranks of ties
    boundaries = np.flatnonzero(np.diff(s)) + 1
    starts = np.concatenate([[0], boundaries])
    ends = np.concatenate([boundaries, [len(s)]])
    avg = (starts + ends + 1) / 2.0
    ranks[order] = np.repeat(avg, ends - starts)
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def pixel_auroc(
    hms: np.ndarray, split: Split, input_size: tuple[int, int], downsample: int = 2
) -> float:
    """Pixel AUROC over all test images (good images contribute only negatives), at 1/downsample of
    the original resolution to keep it cheap (masks downsampled with max so thin cracks survive)."""
    sc, lb = [], []
    for hm, img, m, y in zip(hms, split.test, split.masks, split.labels, strict=True):
        if y == 1 and m is None:
            continue
        full = heatmap_to_image(hm, input_size, img.shape)
        mask = m if m is not None else np.zeros(img.shape, bool)
        d = downsample
        hh, ww = (img.shape[0] // d) * d, (img.shape[1] // d) * d
        sc.append(full[:hh:d, :ww:d].ravel())
        lb.append(mask[:hh, :ww].reshape(hh // d, d, ww // d, d).any(axis=(1, 3)).ravel())
    return auroc(np.concatenate(sc), np.concatenate(lb))


# ------------------------------------------------------------------------------------------ evaluate


@dataclass
class EvalResult:
    image_auroc: float
    pixel_auroc: float
    seconds: float


def evaluate_split(
    feat: FeatureFn, split: Split, size: tuple[int, int], cfgs: Sequence[ScoreConfig], pixel: bool = True
) -> dict[str, EvalResult]:
    """Fit every scoring config on train/good, score test/: image and pixel AUROC. Streams features."""
    t0 = time.time()
    stats = PrototypeStats()
    for chunk in batched(split.train, 8):
        stats.add(extract(feat, chunk, size))
    protos = [stats.prototype(c) for c in cfgs]
    hms: list[list[np.ndarray]] = [[] for _ in cfgs]
    for chunk in batched(split.test, 8):
        te = extract(feat, chunk, size)
        for k, (cfg, (mean, scale)) in enumerate(zip(cfgs, protos, strict=True)):
            hms[k].append(heatmaps(te, mean, scale, cfg))
    t_feat = time.time() - t0
    out = {}
    for cfg, hm_list in zip(cfgs, hms, strict=True):
        hm = np.concatenate(hm_list)
        img_auc = auroc(image_scores(hm, cfg.pooling), split.labels)
        pix_auc = pixel_auroc(hm, split, size) if pixel else float("nan")
        out[cfg.label()] = EvalResult(img_auc, pix_auc, t_feat)
    return out


def dagm_pixel_sanity(feat: FeatureFn, cfg: ScoreConfig, size: tuple[int, int] = (512, 512)) -> dict[str, float]:
    """Per DAGM sample class: leave-one-out global prototype from the class's other images (defects are a
    small fraction of them; a class with one image uses that image), pixel AUROC over the labelled images. A sanity check, not the paper's
    protocol: the samples hold too few good images for image AUROC."""
    res = {}
    for c in load_dagm_samples():
        feats = extract(feat, c.images, size)
        sc, lb = [], []
        for i, m in enumerate(c.masks):
            if m is None:
                continue
            others = np.delete(feats, i, axis=0) if len(feats) > 1 else feats
            gcfg = ScoreConfig("global", cfg.distance, cfg.standardise, cfg.pooling)
            mean, scale = fit_prototype(others, gcfg)
            hm = heatmaps(feats[i : i + 1], mean, scale, gcfg)[0]
            full = heatmap_to_image(hm, size, c.images[i].shape)
            sc.append(full[::2, ::2].ravel())
            lb.append(m[::2, ::2].ravel())
        res[c.name] = auroc(np.concatenate(sc), np.concatenate(lb))
    return res


def batched(seq: Sequence[np.ndarray], n: int) -> Iterator[Sequence[np.ndarray]]:
    for i in range(0, len(seq), n):
        yield seq[i : i + n]

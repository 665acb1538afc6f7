"""Map ensembles: do the distance maps of several backbones, each put on the scale of its own good parts
and averaged, hide fewer defects than one backbone? Runs of one pretraining recipe differ by up to ~0.15
KolektorSDD image AUROC (RESULTS.md §4), which says a single network's good-part maxima are noisy; an
average of independent maps should keep what they agree on (a defect) and shrink what they do not.

Every map is the product's default scoring (image mean removed, nearest of 64 standardised centres,
Gaussian σ 1 cell). Each map is divided by the median image score of good images it did not see (the
prototype of half the training images scores the other half), so maps of different networks share a scale.

    .venv/bin/python benchmarks/experiments/ensemble.py --features trainer/backbones/default_h16.pt,random --data ksdd
"""

from __future__ import annotations

import argparse
import re
import sys
from itertools import combinations
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import common as C
from multiproto import kmeans, nearest_map, sample_vectors
from score_grid import load_features, sizes_for
from smoothing import smooth
from train_probe import synth_set

LEVEL = True  # --no-level: average the standardised distances as they are
K = 64  # --k: centres per member (spec#K overrides it for one member)
_plain = C.to_input
C.to_input = lambda img, size: (lambda x: (x - x.mean()).astype(np.float32))(_plain(img, size))


def fitted_scorer(train: np.ndarray, k: int = 64, seed: int = 0):
    """Nearest of k standardised centres fitted on N×h×H'×W' good features."""
    rng = np.random.default_rng(seed)
    x = sample_vectors(train, 200_000, rng)
    std = train.std(axis=(0, 2, 3)).astype(np.float32)
    scale = np.maximum(std, 0.1 * np.median(std)).astype(np.float32)
    centres, _ = kmeans(x, k, 15, seed)
    return lambda f: smooth(nearest_map(f, centres, scale, False), 1.0)


def maps_for(spec: str, split: C.Split, size: tuple[int, int], h: int) -> np.ndarray:
    """NAME[#K][~F][*W]: #K fits K centres for this member (default --k); ~F runs the network on the input
    scaled by F and resizes its map to the scale-1 map; *W multiplies the map by W (weights without --level)."""
    parsed = re.fullmatch(r"(?P<name>[^#~*]+)(#(?P<k>\d+))?(~(?P<f>[\d.]+))?(\*(?P<w>[\d.]+))?", spec)
    if parsed is None:
        raise SystemExit(f"{spec}: not NAME[#K][~F][*W]")
    spec, centres, factor, weight = parsed["name"], parsed["k"], parsed["f"], parsed["w"]
    seed = int(spec.split("@")[1]) if spec.startswith("random@") else 0  # random@S: untrained, seed S
    feat = load_features(spec.split("@")[0], h, seed)
    scaled = size if not factor else (2 * round(size[0] * float(factor) / 2), 2 * round(size[1] * float(factor) / 2))
    train = C.extract(feat, split.train, scaled)
    half = len(train) // 2
    k = int(centres or K)
    ref = fitted_scorer(train[:half], k)(train[half:]).reshape(len(train) - half, -1).max(1)
    level = float(np.median(ref)) if LEVEL else 1.0
    test = C.extract(feat, split.test, scaled)
    maps = fitted_scorer(train, k)(test) / level * float(weight or 1)
    if factor:
        from trainer.model import feature_map_size

        out = (feature_map_size(size[1]), feature_map_size(size[0]))
        maps = np.stack([cv2.resize(m, out, interpolation=cv2.INTER_LINEAR) for m in maps])
    return maps


def report(name: str, hm: np.ndarray, split: C.Split, size: tuple[int, int], pixel: bool) -> tuple[float, float]:
    flat = hm.reshape(len(hm), -1)
    img = C.auroc(flat.max(1), split.labels)
    pix = C.pixel_auroc(hm, split, size) if pixel else float("nan")
    # the image's own map level: a rough good part is far from the centres everywhere, a defect only locally
    rel = C.auroc(flat.max(1) - np.median(flat, 1), split.labels)
    ratio = C.auroc(flat.max(1) / np.median(flat, 1), split.labels)
    print(f"  {name:<60} img {img:.3f} pix {pix:.3f} max-med {rel:.3f} max/med {ratio:.3f}", flush=True)
    return img, pix


def run(specs: list[str], split: C.Split, size: tuple[int, int], h: int, pixel: bool) -> dict[str, float]:
    maps = {s: maps_for(s, split, size, h) for s in specs}
    out = {}
    for r in range(1, len(specs) + 1):
        for combo in combinations(specs, r):
            name = "+".join(Path(s).stem if s.endswith(".pt") else s for s in combo)
            out[name] = report(name, np.mean([maps[s] for s in combo], axis=0), split, size, pixel)[0]
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--features", required=True, help="comma list of checkpoints / random")
    ap.add_argument("--data", default="ksdd", help="ksdd | synth")
    ap.add_argument("--h", type=int, default=16)
    ap.add_argument("--no-level", action="store_true", help="do not divide maps by their good-part level")
    ap.add_argument("--seed", type=int, default=0, help="synthetic set seed (7: styles no backbone saw)")
    ap.add_argument("--k", type=int, default=64, help="centres per member")
    ap.add_argument("--pad", type=int, default=0,
                    help="reflect-pad every input by this many px (15: the map covers the whole image)")
    args = ap.parse_args()
    if args.pad:
        C.INPUT_PAD = args.pad
        centred = C.to_input
        C.to_input = lambda img, size: np.pad(centred(img, size), args.pad, mode="reflect")
    global LEVEL, K
    LEVEL = not args.no_level
    K = args.k
    C.set_threads(2)
    specs = args.features.split(",")
    if args.data == "ksdd":
        split = C.load_ksdd()
        run(specs, split, sizes_for("cap1024", split)["cap1024"], args.h, pixel=True)
        return
    res: dict[str, list[float]] = {}
    for fam in sorted(p for p in synth_set(args.seed).iterdir() if p.is_dir()):
        split = C.load_mvtec(fam)
        print(fam.name, flush=True)
        for k, v in run(specs, split, split.train[0].shape, args.h, pixel=False).items():
            res.setdefault(k, []).append(v)
    for k, v in res.items():
        print(f"RESULT synth {k:<60} mean {np.mean(v):.3f} worst {np.min(v):.3f}")


if __name__ == "__main__":
    main()

"""Nearest-of-K prototypes: does a mixture of good-part prototypes beat the paper's single mean?

The paper compares every feature vector with one mean vector of good parts. A real surface has several kinds
of good local appearance (stripe / gap, bright band / dark band, edge / flat), and one mean sits between
them, so every good position is 'far'. Here the good features are clustered (k-means, K centres) and the
distance map is the distance to the nearest centre, optionally standardised by each centre's spread.

    .venv/bin/python benchmarks/experiments/multiproto.py --features random --data ksdd --ks 1,16,64,256
    .venv/bin/python benchmarks/experiments/multiproto.py --features CKPT.pt --data synth
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import common as C
from score_grid import load_features, sizes_for
from train_probe import synth_set

WHITEN = 0.0  # > 0: --whiten FLOOR
PER_CENTRE = False  # per-centre spread: measured worse on KolektorSDD (K=16: 0.848 / 0.866 vs 0.872 / 0.906)


def sample_vectors(feats: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """n random feature vectors (rows) out of N×h×H'×W'."""
    flat = feats.transpose(0, 2, 3, 1).reshape(-1, feats.shape[1])
    idx = rng.choice(len(flat), size=min(n, len(flat)), replace=False)
    return flat[idx].astype(np.float32)


def kmeans(x: np.ndarray, k: int, iters: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Lloyd's k-means with k-means++ seeding on rows of x; returns centres K×h and per-centre spread K×h."""
    g = torch.Generator().manual_seed(seed)
    t = torch.from_numpy(x)
    n = len(t)
    centres = [t[torch.randint(n, (1,), generator=g)].squeeze(0)]
    d2 = ((t - centres[0]) ** 2).sum(1)
    for _ in range(1, k):
        p = d2 / d2.sum()
        i = torch.multinomial(p, 1, generator=g)
        centres.append(t[i].squeeze(0))
        d2 = torch.minimum(d2, ((t - centres[-1]) ** 2).sum(1))
    c = torch.stack(centres)
    for _ in range(iters):
        assign = torch.cdist(t, c).argmin(1)
        for j in range(k):
            m = assign == j
            if m.any():
                c[j] = t[m].mean(0)
    assign = torch.cdist(t, c).argmin(1)
    spread = torch.ones_like(c)
    for j in range(k):
        m = assign == j
        if m.sum() > 1:
            spread[j] = t[m].std(0)
    return c.numpy(), spread.numpy()


def nearest_map(feats: np.ndarray, centres: np.ndarray, scale: np.ndarray, per_centre: bool) -> np.ndarray:
    """N×H'×W' distance to the nearest centre; scale is h (global) or K×h (per centre)."""
    n, h, hh, ww = feats.shape
    t = torch.from_numpy(feats).permute(0, 2, 3, 1).reshape(-1, h)
    c = torch.from_numpy(centres)
    s = torch.from_numpy(scale)
    out = torch.empty(len(t))
    for i in range(0, len(t), 65536):
        x = t[i : i + 65536]
        if per_centre:
            d = (((x[:, None, :] - c[None]) / s[None]) ** 2).sum(-1)  # chunk × K
        else:
            d = torch.cdist(x / s, c / s) ** 2
        out[i : i + 65536] = d.min(1).values.clamp_min(0).sqrt()
    return out.reshape(n, hh, ww).numpy()


def evaluate(feat: C.FeatureFn, split: C.Split, size: tuple[int, int], ks: list[int], pixel: bool,
             seed: int = 0) -> dict[str, tuple[float, float]]:
    rng = np.random.default_rng(seed)
    samples = []
    chan_sum = chan_sq = 0.0
    count = 0
    for chunk in C.batched(split.train, 8):
        f = C.extract(feat, chunk, size)
        samples.append(sample_vectors(f, 400_000 // max(1, len(split.train) // len(chunk)) + 1, rng))
        f64 = f.astype(np.float64)
        chan_sum = chan_sum + f64.sum(axis=(0, 2, 3))
        chan_sq = chan_sq + (f64 * f64).sum(axis=(0, 2, 3))
        count += f.shape[0] * f.shape[2] * f.shape[3]
    x = np.concatenate(samples)
    if WHITEN > 0:  # ZCA whitening from the good samples, eigenvalues floored at WHITEN × their median
        cov = np.cov(x[:200_000].T.astype(np.float64))
        w, v = np.linalg.eigh(cov)
        w = np.maximum(w, WHITEN * np.median(w))
        zca = (v / np.sqrt(w)) @ v.T
        base = feat

        def feat(xb: np.ndarray, base: C.FeatureFn = base) -> np.ndarray:
            f = base(xb)
            return np.einsum("ij,njhw->nihw", zca, f).astype(np.float32)

        x = (x @ zca.T).astype(np.float32)
        chan_sum = chan_sum @ zca.T
        chan_sq = np.full_like(chan_sum, 0.0) + count * (1.0 + (chan_sum / count) ** 2)
    mean = chan_sum / count
    std = np.sqrt(np.maximum(chan_sq / count - mean * mean, 0))
    gscale = np.maximum(std, 0.1 * np.median(std)).astype(np.float32)
    test = C.extract(feat, split.test, size)
    out = {}
    for k in ks:
        t0 = time.time()
        if k == 1:
            centres, spread = mean[None].astype(np.float32), std[None].astype(np.float32)
        else:
            centres, spread = kmeans(x[:200_000], k, 15, seed)
        for label, scale, per in (
            ("std", gscale, False),
            ("raw", np.ones_like(gscale), False),
            ("percentre", np.maximum(spread, 0.1 * np.median(spread)), True),
        ):
            if per and (k == 1 or not PER_CENTRE):
                continue
            hm = nearest_map(test, centres, scale, per)
            img = C.auroc(C.image_scores(hm, 1), split.labels)
            pix = C.pixel_auroc(hm, split, size) if pixel else float("nan")
            out[f"K{k}-{label}"] = (img, pix)
            print(f"  K={k:<4} {label:>10} img {img:.3f} pix {pix:.3f}  ({time.time() - t0:.0f}s)", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--features", required=True)
    ap.add_argument("--h", type=int, default=16)
    ap.add_argument("--data", default="ksdd", help="ksdd | synth")
    ap.add_argument("--size", default="native")
    ap.add_argument("--ks", default="1,16,64,256")
    ap.add_argument("--whiten", type=float, default=0.0, help="ZCA-whiten the features, eigenvalue floor")
    args = ap.parse_args()
    global WHITEN
    WHITEN = args.whiten
    C.set_threads(2)
    feat = load_features(args.features, args.h, 0)
    ks = [int(k) for k in args.ks.split(",")]
    print(f"features={args.features} data={args.data}")
    if args.data == "ksdd":
        split = C.load_ksdd()
        size = sizes_for(args.size, split)[args.size]
        evaluate(feat, split, size, ks, pixel=True)
        return
    res: dict[str, list[float]] = {}
    for fam in sorted(p for p in synth_set().iterdir() if p.is_dir()):
        split = C.load_mvtec(fam)
        print(fam.name, flush=True)
        for key, (img, _) in evaluate(feat, split, split.train[0].shape, ks, pixel=False).items():
            res.setdefault(key, []).append(img)
    for key, v in res.items():
        print(f"mean {key:>16} img {np.mean(v):.3f}  worst {np.min(v):.3f}")


if __name__ == "__main__":
    main()

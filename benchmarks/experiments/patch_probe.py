"""Patch-level transfer check: do real KolektorSDD crack patches lie farther from the good prototype than
good patches, and how do the synthetic negatives compare? (32×32 patches, native resolution.)

    .venv/bin/python benchmarks/experiments/patch_probe.py CKPT|random|raw [CKPT ...]
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import common as C
from negatives import ContrastSampler
from score_grid import load_features

from trainer.triplets import TripletConfig, TripletSampler


def patches(images, masks, n_per, rng, on_mask):
    out = []
    for img, m in zip(images, masks, strict=True):
        h, w = img.shape
        if on_mask:
            ys, xs = np.nonzero(m[16 : h - 16, 16 : w - 16])
            idx = rng.choice(len(ys), size=min(n_per, len(ys)), replace=False)
            cy, cx = ys[idx] + 16, xs[idx] + 16
        else:
            cy = rng.integers(16, h - 16, n_per)
            cx = rng.integers(16, w - 16, n_per)
        for y, x in zip(cy, cx, strict=True):
            out.append(img[y - 16 : y + 16, x - 16 : x + 16])
    return np.stack(out).astype(np.float32) * (2 / 255) - 1


def main() -> None:
    C.set_threads(2)
    rng = np.random.default_rng(0)
    ks = C.load_ksdd()
    train_p = patches(ks.train, [None] * len(ks.train), 40, rng, False)
    good_te = [i for i, y in enumerate(ks.labels) if y == 0]
    bad_te = [i for i, y in enumerate(ks.labels) if y == 1]
    good_p = patches([ks.test[i] for i in good_te], [None] * len(good_te), 40, rng, False)
    crack_p = patches([ks.test[i] for i in bad_te], [ks.masks[i] for i in bad_te], 20, rng, True)
    # synthetic negatives made from good patches (the sampler's own code on held-back good patches)
    cfg = TripletConfig(scales=(32,), p_noise=0.0, p_local=1.0, local_kinds=("curve",))
    u8 = ((good_p[:800] + 1) * 127.5).round().astype(np.uint8)
    samp_t = TripletSampler([C_class(u8)], cfg)
    samp_c = ContrastSampler([C_class(u8)], cfg)
    syn_t = samp_t._curve(good_p[:800].copy(), rng)
    syn_c = samp_c._curve(good_p[:800].copy(), rng)
    for spec in sys.argv[1:]:
        feat = load_features(spec, 16, 0)

        def f(x):
            return feat(x).reshape(len(x), -1)

        ft = f(train_p)
        mu, sd = ft.mean(0), ft.std(0) + 1e-6

        def dist(x):
            return np.sqrt((((f(x) - mu) / sd) ** 2).sum(1))

        dg, dc, dt, dcs = dist(good_p), dist(crack_p), dist(syn_t), dist(syn_c)
        lab = lambda a, b: C.auroc(np.r_[a, b], np.r_[np.zeros(len(a)), np.ones(len(b))])  # noqa: E731
        print(f"{spec}: patch AUROC real cracks {lab(dg, dc):.3f} | trainer curves {lab(dg, dt):.3f} | "
              f"contrast curves {lab(dg, dcs):.3f} | good p99 {np.percentile(dg, 99):.1f} max {dg.max():.1f} "
              f"crack median {np.median(dc):.1f}")


def C_class(u8):
    from trainer.triplets import ImageClass

    return ImageClass("probe", list(u8))


if __name__ == "__main__":
    main()

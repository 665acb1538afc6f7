"""How should members' maps be combined? The product averages levelled maps; a member that is strong on one
texture (the whitened matched filters on stationary ones, whiten.py) and noisy on another then drags the
average down where it is noisy. Rules compared here, all fitted on good images only:

- ``mean``: the product's rule, each map divided by its level (median out-of-fold good maximum);
- ``zmax``: each map standardised by its out-of-fold good maxima ((m − μ) / σ), the maximum over members: a
  member whose good maxima vary a lot counts for less, and a defect needs to be extreme in one member only;
- ``zmean``: the same standardisation, averaged;
- ``wmean``: levelled maps averaged with weights 1 / (σ / μ)² — a member's reliability from good parts;
- ``p0.5`` … ``p4``, ``geo``: generalised means of the levelled maps (p = 1 is ``mean``, the geometric mean p → 0);
- ``q75``, ``q90``, ``q100``: levels at that percentile of the good maxima instead of the median;
- ``trim``, ``med``, ``cap1.5`` … ``cap3``: per place the mean without the largest member, the median of the
  members, the mean of levelled maps capped at c.

A set's member "T/S/U" is one member: the mean of those members' levelled maps (``combine``). "W?" is the
whitened filters only in products whose whitened good images look Gaussian (``whiten.whitened_kurtosis``);
"W!" the same by the product's own gate (``trainer.whitened``: full resolution, border left out), and "X!" (or
"Xn!", "Xs!") the grey-level extremes only where that gate leaves the whitened filters out.

Per member the maps of the test images (prototype from all training images) and the maxima of out-of-fold
good maps (2 folds) are cached in --cache, so rules are cheap to add.

    .venv/bin/python benchmarks/experiments/fusion.py --members T,R,L,W
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import common as C
import ensemble as E
from score_grid import load_features, sizes_for
from smoothing import smooth
from train_probe import synth_set
from whiten import PooledWhitened, TruncatedWhitened, Whitened, grid, per_kind, whitened_kurtosis

SPECS = {"T": ("trainer/backbones/default_h16.pt", 256), "R": ("random", 256), "L": ("linebank", 64),
         # the trained network shipped until the tenth session (seed 0 of the h=16 recipe, pretrained on the
         # styles `trainer synth --seed 0` evaluates): git show 3b20e6e:trainer/backbones/default_h16.pt >
         # /tmp/default_h16_seen.pt. §9–§11 of RESULTS.md call it T; since the tenth session T is B's network.
         "O": ("/tmp/default_h16_seen.pt", 256),
         # the shipped recipe pretrained again: trainer/backbones/README.md's h=16 command with --seed 1 / 2
         # and --out /tmp/pre/h16_s1.pt / h16_s2.pt (339 s / 363 s here)
         "S": ("/tmp/pre/h16_s1.pt", 256), "U": ("/tmp/pre/h16_s2.pt", 256),
         # the same with --local-contrast relative (blob and curve negatives at 1–2.5× / 1–4× the patch's spread),
         # seeds 0, 1, 2, --out /tmp/pre/rel_s0.pt …
         "A": ("/tmp/pre/rel_s0.pt", 256), "B": ("/tmp/pre/rel_s1.pt", 256), "D": ("/tmp/pre/rel_s2.pt", 256),
         # B's and D's commands with the eight `trainer synth --seed 7` products' train/good added as --mvtec
         # classes (a line's own good parts in its backbone's pretraining), --out /tmp/pre/line7_s1.pt / _s2.pt
         "V": ("/tmp/pre/line7_s1.pt", 256), "X": ("/tmp/pre/line7_s2.pt", 256)}


def member(name: str, split: C.Split, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(test maps N×H×W, out-of-fold good maxima) for member T, R, L (product scoring), O (the trained network
    shipped until the tenth session), S / U (O's recipe, pretraining seeds 1 / 2), A / B / D (O's recipe with
    relative-contrast negatives, seeds 0 / 1 / 2; B is T since the tenth session), V / X (B / D with the seed-7
    products' good images in the pretraining), W
    (whitened; Wk33: as 33 × 33 kernels; Wp17: 17 × 17 kernels on the 2×2-pooled image), P (the context-conditioned prototype of context.py, max |z|; PhN: N hidden units; Pv4: log
    variance clamped at -4 instead of -8; Pd: weight decay 0.05; Pl8: also 8 line-shaped centres; Ps1800: 1800
    steps; Pr12 / Pr1: radii 2–12 / 1–8 px; Pz: its signed z per radius as features of a 64-centre prototype),
    QT / QR (the context idea on T's / R's features, featctx.py), Tp5 / Rp9 (features averaged over 5×5 / 9×9
    cells first), T1024 / Tc1024 / Tm256 (1024 k-means centres / a coreset / 256 centres with their own
    covariances), Tf2000 (T fine-tuned 2000 steps on the product's good images first), Tg2 / Tg4 (T on 2 / 4
    flipped copies of each image, maps averaged), X (grey-level extremes at full resolution, extremes_map; the
    product's trainer/extremes.py takes the image mean where this takes the median; Xn: without the σ 1
    smoothing; Xs: dark and bright excursions over their own good levels)."""
    folds = [np.arange(len(split.train)) % 2 == f for f in (0, 1)]
    if name == "Pz":  # the context residuals (signed z per radius) as features of a k-means prototype
        from context import ContextModel

        def zfeat(cm, xs):
            return np.stack([np.stack([grid(z) for z in cm.zstack(x)]) for x in xs])

        def fit(imgs):
            cm = ContextModel(imgs)
            scorer = E.fitted_scorer(zfeat(cm, imgs), 64)
            return lambda xs: scorer(zfeat(cm, xs))
    elif name.startswith(("W", "P")):
        def fit(imgs):
            if name.startswith("P"):  # context-conditioned prototype (context.py)
                from context import ContextModel

                variant = {"Pv4": {"min_log_var": -4.0}, "Pd": {"weight_decay": 0.05},
                           "Pl8": {"lines": 8}, "Pl4": {"lines": 4}, "Ps1800": {"steps": 1800},
                           "Pr12": {"radii": (2.0, 4.0, 8.0, 12.0)}, "Pr1": {"radii": (1.0, 2.0, 4.0, 8.0)},
                           }.get(name, {})
                w = ContextModel(imgs, hidden=int(name[2:]) if name.startswith("Ph") else 64, **variant)
            elif name.startswith("Wp"):  # Wp17: 17 × 17 kernels on the 2×2-pooled image, already on the grid
                wp = PooledWhitened(imgs, int(name[2:].rstrip("n")))  # Wp17n: without the σ 1 smoothing
                sigma = 0.0 if name.endswith("n") else 1.0
                return lambda xs: smooth(np.stack([wp.zmap(x) for x in xs]), sigma) if sigma else np.stack(
                    [wp.zmap(x) for x in xs])
            elif name.startswith("Wk"):  # Wk33: the filters as 33 × 33 spatial kernels (whiten.TruncatedWhitened)
                w = TruncatedWhitened(imgs, int(name[2:]))
            else:
                w = Whitened(imgs, [2.0, 4.0, 8.0], [(1.5, 9.0)], 8, 1.0)
            return lambda xs: smooth(np.stack([grid(w.zmap(x)) for x in xs]), 1.0)

    if name.startswith("X"):  # grey-level extremes at full resolution (extremes_map)
        train = [np.asarray(E.C.to_input(t, size)) for t in split.train]
        test = [np.asarray(E.C.to_input(t, size)) for t in split.test]
        sigma = 0.0 if "n" in name else 1.0

        def fit_x(imgs):
            spread = float(np.median([im.std() for im in imgs]))
            if "s" in name:  # Xs: dark and bright excursions apart, each over its own good level
                levels = np.median([[m.max() for m in extremes_map(im, spread, signed=True)] for im in imgs], axis=0)

                def one(x):
                    return (extremes_map(x, spread, signed=True) / levels[:, None, None]).max(0)
            elif name.endswith(("d", "b")):  # Xnd / Xnb: the dark / the bright excursions alone
                side = 0 if name.endswith("d") else 1

                def one(x):
                    return extremes_map(x, spread, signed=True)[side]
            else:
                def one(x):
                    return extremes_map(x, spread)
            return lambda xs: smooth(np.stack([one(x) for x in xs]), sigma) if sigma else np.stack([one(x) for x in xs])

        ref = np.concatenate([fit_x([t for t, f in zip(train, fo, strict=True) if f])(
            [t for t, f in zip(train, fo, strict=True) if not f]).reshape(int((~fo).sum()), -1).max(1) for fo in folds])
        return fit_x(train)(test), ref
    if name.startswith("Q"):  # QT / QR: the context-conditioned prototype on T's / R's features (featctx.py)
        from featctx import FeatureContext

        feat = load_features(SPECS[name[1]][0], 16, 0)
        train = C.extract(feat, split.train, size)
        ref = np.concatenate([smooth(FeatureContext(train[fo]).maps(train[~fo]), 1.0).reshape(int((~fo).sum()), -1)
                              .max(1) for fo in folds])
        return smooth(FeatureContext(train).maps(C.extract(feat, split.test, size)), 1.0), ref
    if name.startswith(("W", "P")):
        train = [np.asarray(E.C.to_input(t, size)) for t in split.train]
        test = [np.asarray(E.C.to_input(t, size)) for t in split.test]
        ref = np.concatenate([fit([t for t, f in zip(train, fo, strict=True) if f])(
            [t for t, f in zip(train, fo, strict=True) if not f]).reshape(int((~fo).sum()), -1).max(1) for fo in folds])
        return fit(train)(test), ref
    spec, k = SPECS[name[0]]
    scorer = E.fitted_scorer
    if name[1:2] == "f":  # Tf2000: the network fine-tuned on the product's good images first (per fold)
        return tuned_member(spec, k, int(name[2:]), split, size, folds)
    if name[1:2] == "g":  # Tg2 / Tg4: the network on flipped copies, one prototype each, maps averaged
        return flipped_member(spec, k, int(name[2:]), split, size, folds)
    if "p" in name[1:]:  # Tp5: features averaged over 5×5 cells before the prototype (texture statistics)
        return pooled_member(spec, k, int(name.split("p")[1]), split, size, folds)
    if len(name) > 1:  # T1024: k-means with 1024 centres; Tc1024: a greedy k-centre coreset of 1024 vectors
        k = int(name[1:].lstrip("cm"))
        scorer = {"c": coreset_scorer, "m": mahalanobis_scorer}.get(name[1], E.fitted_scorer)
    feat = load_features(spec, 16, 0)
    train = C.extract(feat, split.train, size)
    ref = np.concatenate([scorer(train[fo], k)(train[~fo]).reshape(int((~fo).sum()), -1).max(1) for fo in folds])
    return scorer(train, k)(C.extract(feat, split.test, size)), ref


def product_kurtosis(split: C.Split, size: tuple[int, int]) -> float:
    """The whitened good images' mean excess kurtosis as `trainer fit` computes it for its gate."""
    from trainer.whitened import WhitenedMember, fit_whitened_members

    batch = np.stack([np.asarray(C.to_input(t, size)) for t in split.train])[:, None]
    fitted = fit_whitened_members(WhitenedMember(), [[batch], [batch]], [0] * len(batch), 0, float("inf"))
    print(f"  whitened kurtosis (product) {fitted.kurtosis:.3f}", flush=True)
    return fitted.kurtosis


def extremes_map(x: np.ndarray, spread: float, signed: bool = False) -> np.ndarray:
    """|x − median(x)| / the product's spread, the largest over each cell's 4×4 input pixels (2i+14 … 2i+17), on
    FeatureNet's grid. Every member the product has looks at 2×2-pooled pixels or a 32-px field, where a 1-px
    dark crack loses half its contrast or more; the darkest pixel of a grass part alone finds its cracks
    (AUROC 0.94 against the product's 0.67)."""
    hh, ww = x.shape
    rows, cols = (hh - 6) // 2 - 12, (ww - 6) // 2 - 12
    z = (x - np.median(x)) / spread

    def cells(v: np.ndarray) -> np.ndarray:
        a = v[14 : 14 + 2 * rows + 2, 14 : 14 + 2 * cols + 2]
        b = a.reshape(rows + 1, 2, cols + 1, 2).max(axis=(1, 3))
        return np.maximum(np.maximum(b[:-1, :-1], b[1:, :-1]), np.maximum(b[:-1, 1:], b[1:, 1:])).astype(np.float32)

    if signed:  # (dark, bright)
        return np.stack([cells(-z), cells(z)])
    return cells(np.abs(z))


def pooled_member(spec: str, k: int, window: int, split: C.Split, size: tuple[int, int], folds: list[np.ndarray]):
    """A member whose feature vectors are the mean of window×window cells: a spot shifts a texture's local
    statistics consistently over its extent, while the texture's own dark places vary cell by cell; averaging
    the features (not the distances, which are positive and add up noise) cancels the texture and keeps the shift,
    a matched filter in feature space."""
    import torch

    def pool(f: np.ndarray) -> np.ndarray:
        t = torch.from_numpy(np.ascontiguousarray(f))
        return torch.nn.functional.avg_pool2d(t, window, 1, window // 2, count_include_pad=False).numpy()

    feat = load_features(spec, 16, 0)
    train = pool(C.extract(feat, split.train, size))
    ref = np.concatenate([E.fitted_scorer(train[fo], k)(train[~fo]).reshape(int((~fo).sum()), -1).max(1)
                          for fo in folds])
    return E.fitted_scorer(train, k)(pool(C.extract(feat, split.test, size))), ref


def tuned_member(spec: str, k: int, steps: int, split: C.Split, size: tuple[int, int], folds: list[np.ndarray]):
    """The network of ``spec`` tuned by ``trainer.finetune`` on the prototype images (each fold's own, so the
    out-of-fold maxima come from images the tuning did not see), then the nearest-of-k prototype."""
    from trainer.backbone import load_backbone
    from trainer.finetune import finetune_on_tiles, square_tiles

    base = load_backbone(spec).nets

    def tiles(imgs):
        out = []
        for im in imgs:
            x = cv2.resize(im, (size[1], size[0]), interpolation=cv2.INTER_AREA) if im.shape != size else im
            out += square_tiles(np.ascontiguousarray(x))
        return out

    def features(imgs) -> C.FeatureFn:
        net, report = finetune_on_tiles(base, tiles(imgs), steps)
        print(f"  tuned {steps} steps: validation accuracy {report.val_accuracy_before:.3f} -> "
              f"{report.val_accuracy_after:.3f}, {report.seconds:.0f} s", flush=True)
        return C.net_features(net)

    train = list(split.train)
    ref = []
    for fo in folds:
        inside = [t for t, f in zip(train, fo, strict=True) if f]
        outside = [t for t, f in zip(train, fo, strict=True) if not f]
        feat = features(inside)
        scorer = E.fitted_scorer(C.extract(feat, inside, size), k)
        ref.append(scorer(C.extract(feat, outside, size)).reshape(len(outside), -1).max(1))
    feat = features(train)
    return E.fitted_scorer(C.extract(feat, train, size), k)(C.extract(feat, split.test, size)), np.concatenate(ref)


FLIPS = {1: [()], 2: [(), (1,)], 4: [(), (1,), (0,), (0, 1)]}  # image axes flipped: none, left-right, up-down, both


def flipped_member(spec: str, k: int, n: int, split: C.Split, size: tuple[int, int], folds: list[np.ndarray]):
    """The network on n flipped copies of every image, each copy's feature map flipped back onto the image's
    grid and scored by its own prototype (fitted on the same copies of the good images), the n maps averaged.
    A network trained on a few million triplets has directions where a rare but good local pattern throws it
    far (the trained member's good-part excursions, RESULTS.md §11); a flipped copy of the same place lands
    elsewhere in feature space, while a spot or a crack stays unusual in every copy. The map grid is symmetric
    under flips when the input size minus the 32-px field is a multiple of the stride 2 (even sizes)."""
    feat = load_features(spec, 16, 0)
    test_maps, refs = [], []
    for axes in FLIPS[n]:
        def flip(im: np.ndarray, a=axes) -> np.ndarray:
            return np.ascontiguousarray(np.flip(im, a)) if a else im

        def unflip(f: np.ndarray, a=axes) -> np.ndarray:  # N×C×H×W, image axes 0, 1 → 2, 3
            return np.ascontiguousarray(np.flip(f, tuple(x + 2 for x in a))) if a else f

        train = unflip(C.extract(feat, [flip(t) for t in split.train], size))
        refs.append([E.fitted_scorer(train[fo], k)(train[~fo]) for fo in folds])
        test_maps.append(E.fitted_scorer(train, k)(unflip(C.extract(feat, [flip(t) for t in split.test], size))))
    # out-of-fold maxima of the averaged maps, fold by fold (the average of maxima would overstate the level)
    ref = np.concatenate([np.mean([r[i] for r in refs], axis=0).reshape(int((~fo).sum()), -1).max(1)
                          for i, fo in enumerate(folds)])
    return np.mean(test_maps, axis=0), ref


def coreset_scorer(train: np.ndarray, k: int, seed: int = 0):
    """Like ensemble.fitted_scorer, but the prototype is a greedy k-centre coreset (PatchCore's choice) of the
    sampled good vectors instead of k-means centres: k-means puts its centres where good vectors are dense and
    leaves a texture's rare good places far from every centre; farthest-point picking covers them."""
    import torch
    from multiproto import nearest_map, sample_vectors

    rng = np.random.default_rng(seed)
    x = sample_vectors(train, 200_000, rng)
    std = train.std(axis=(0, 2, 3)).astype(np.float32)
    scale = np.maximum(std, 0.1 * np.median(std)).astype(np.float32)
    t = torch.from_numpy(x / scale)
    picked = [int(rng.integers(len(t)))]
    d2 = ((t - t[picked[0]]) ** 2).sum(1)
    for _ in range(1, k):
        i = int(torch.argmax(d2))
        picked.append(i)
        d2 = torch.minimum(d2, ((t - t[i]) ** 2).sum(1))
    centres = x[picked]
    return lambda f: smooth(nearest_map(f, centres, scale, False), 1.0)


def mahalanobis_scorer(train: np.ndarray, k: int, seed: int = 0, shrink: float = 50.0):
    """Nearest of k centres by each centre's own (full, shrunk) covariance in the standardised space: a
    cluster that varies along some direction tolerates the texture's rare good places along it, while a
    distance along a direction no cluster varies in stays large."""
    import torch
    from multiproto import sample_vectors

    from trainer.clustering import kmeans

    rng = np.random.default_rng(seed)
    x = sample_vectors(train, 200_000, rng)
    std = train.std(axis=(0, 2, 3)).astype(np.float32)
    scale = np.maximum(std, 0.1 * np.median(std)).astype(np.float32)
    xs = x / scale
    centres = kmeans(xs, k, seed)
    t, c = torch.from_numpy(xs), torch.from_numpy(centres)
    assign = torch.cdist(t, c).argmin(1).numpy()
    h = xs.shape[1]
    whiten = np.empty((k, h, h), np.float32)
    for j in range(k):
        d = xs[assign == j] - centres[j]
        cov = (d.T @ d + shrink * np.eye(h) * 0.05) / (len(d) + shrink)  # shrunk toward 0.05·I
        whiten[j] = np.linalg.cholesky(np.linalg.inv(cov)).T.astype(np.float32)  # L: dᵀΣ⁻¹d = |L d|²
    wt, ct = torch.from_numpy(whiten), torch.from_numpy(centres)

    def score(f: np.ndarray) -> np.ndarray:
        n, hh, hgt, wdt = f.shape
        v = torch.from_numpy(np.ascontiguousarray(f.transpose(0, 2, 3, 1).reshape(-1, hh) / scale))
        out = torch.empty(len(v))
        for i in range(0, len(v), 8192):
            d = v[i : i + 8192, None, :] - ct[None]  # chunk × K × h
            out[i : i + 8192] = torch.einsum("kij,nkj->nki", wt, d).pow(2).sum(-1).min(1).values.sqrt()
        return smooth(out.reshape(n, hgt, wdt).numpy(), 1.0)

    return score


def checkpoint_of(name: str) -> Path | None:
    """The network file a member's maps depend on (QT: T's), if any."""
    spec = SPECS.get(name[1] if name.startswith("Q") else name[0], ("",))[0]
    return Path(spec) if spec.endswith(".pt") else None


def cached(name: str, key: str, split: C.Split, size: tuple[int, int], cache: Path) -> tuple[np.ndarray, np.ndarray]:
    # The checkpoint's content is part of the key: when a letter's file changes (T since the tenth session),
    # maps of the old network must not be read back as the new one's.
    ckpt = checkpoint_of(name)
    tag = f"-{hashlib.sha256(ckpt.read_bytes()).hexdigest()[:8]}" if ckpt is not None and ckpt.is_file() else ""
    path = cache / f"{key}-{name}{tag}.npz"
    if path.exists():
        z = np.load(path)
        return z["maps"], z["ref"]
    maps, ref = member(name, split, size)
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(path, maps=maps, ref=ref)
    return maps, ref


def combine(ms: dict[str, tuple[np.ndarray, np.ndarray]], sub: list[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The members of ``sub``; "T/S/U" is one member: the mean of T's, S's and U's levelled maps (level 1)."""
    out = {}
    for n in sub:
        parts = n.split("/")
        if len(parts) == 1:
            out[n] = ms[n]
        else:
            out[n] = (np.mean([ms[p][0] / np.median(ms[p][1]) for p in parts], axis=0), np.ones(1))
    return out


def rules(ms: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, np.ndarray]:
    """Image scores per rule."""
    lv = {k: float(np.median(r)) for k, (_, r) in ms.items()}
    mu = {k: float(np.mean(r)) for k, (_, r) in ms.items()}
    sd = {k: float(np.std(r)) + 1e-9 for k, (_, r) in ms.items()}
    top = lambda m: m.reshape(len(m), -1).max(1)  # noqa: E731
    out = {"mean": top(np.mean([m / lv[k] for k, (m, _) in ms.items()], axis=0))}
    z = {k: (m - mu[k]) / sd[k] for k, (m, _) in ms.items()}
    out["zmax"] = top(np.max(list(z.values()), axis=0))
    out["zmean"] = top(np.mean(list(z.values()), axis=0))
    lev = np.stack([np.maximum(m / lv[k], 0) for k, (m, _) in ms.items()])
    for p in (0.5, 2, 3, 4):  # generalised means: between the average (p = 1) and the maximum (p = ∞)
        out[f"p{p:g}"] = top(np.mean(lev**p, axis=0) ** (1 / p))
    out["geo"] = top(np.exp(np.mean(np.log(lev + 1e-3), axis=0)))
    for q in (75, 90, 100):  # levels at a higher quantile of the good maxima: heavy-tailed members weigh less
        lq = {k: float(np.percentile(r, q)) for k, (_, r) in ms.items()}
        out[f"q{q}"] = top(np.mean([m / lq[k] for k, (m, _) in ms.items()], axis=0))
    # robust to one member's excursion at a place (the trained network's rare good-part peaks): the
    # mean without each place's largest member, the median, and levelled maps capped at c × their level
    srt = np.sort(lev, axis=0)
    out["trim"] = top(np.mean(srt[:-1], axis=0))
    out["med"] = top(np.median(lev, axis=0))
    for c in (1.5, 2, 3):
        out[f"cap{c:g}"] = top(np.mean(np.minimum(lev, c), axis=0))
    w = {k: (mu[k] / sd[k]) ** 2 for k in ms}
    out["wmean"] = top(sum(w[k] * m / lv[k] for k, (m, _) in ms.items()) / sum(w.values()))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--members", default="T,R,L,W")
    ap.add_argument("--data", default="synth", help="synth | ksdd")
    ap.add_argument("--cache", type=Path, default=C.CACHE / "fusion")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--sets", default="", help="';'-separated member sets to compare instead of all-but-one")
    ap.add_argument("--rules", default="", help="comma list of rules to print (default: all)")
    ap.add_argument("--synth-seed", type=int, default=0,
                    help="synthetic styles of `trainer synth --seed N` (7: styles no pretraining run here saw)")
    ap.add_argument("--test", default="20x5", help="synthetic test parts: GOODxDEFECTS_PER_KIND (200x30: 380)")
    ap.add_argument("--families", default="", help="comma list of synthetic families (default: all)")
    ap.add_argument("--scale", type=float, default=1.0,
                    help="synthetic input size = image size × this (2: a 1-px crack spans 2 input pixels)")
    args = ap.parse_args()
    C.set_threads(args.threads)
    names = args.members.split(",")
    subsets = [names] + [[n for n in names if n != drop] for drop in names if len(names) > 2]
    if args.sets:
        subsets = [s.split(",") for s in args.sets.split(";")]
        names = sorted({p for s in subsets for n in s for p in n.split("/")})
        if "W?" in names:
            names = sorted(set(names) - {"W?"} | {"W"})
        names = sorted({n.rstrip("!") for n in names})
    if args.data == "ksdd":
        splits = [("ksdd", C.load_ksdd())]
    else:
        prefix = "" if args.synth_seed == 0 else f"s{args.synth_seed}-"
        good, defect = (int(v) for v in args.test.split("x"))
        prefix += "" if (good, defect) == (20, 5) else f"t{args.test}-"  # other test parts, other cached maps
        wanted = set(args.families.split(",")) if args.families else None
        splits = [(prefix + p.name, C.load_mvtec(p))
                  for p in sorted(q for q in synth_set(args.synth_seed, good, defect).iterdir() if q.is_dir())
                  if wanted is None or p.name in wanted]
    table: dict[str, dict[str, list[float]]] = {}
    for key, split in splits:
        size = sizes_for("cap1024", split)["cap1024"] if key == "ksdd" else split.train[0].shape
        if key != "ksdd" and args.scale != 1.0:
            size = tuple(4 * round(d * args.scale / 4) for d in size)
        ms = {n: cached(n, key if args.scale == 1.0 else f"{key}-x{args.scale:g}", split, size, args.cache)
              for n in names}
        # "W?" in a set: the whitened filters only where the whitened good images look Gaussian (their
        # optimality condition; excess kurtosis < 0.5, from the good training images alone)
        gated = any("W?" in sub for sub in subsets)
        gauss = gated and whitened_kurtosis([np.asarray(C.to_input(t, size)) for t in split.train]) < 0.5
        # "W!" / "X!": the product's gate (trainer.whitened: full resolution, border left out): W where the
        # whitened good images look Gaussian, the grey-level extremes X… where they do not
        product_gauss = any(n.endswith("!") for sub in subsets for n in sub) and product_kurtosis(split, size) < 0.5
        for sub in subsets:
            label = "+".join(sub)
            used = [("W" if n == "W?" else n.rstrip("!")) for n in sub
                    if (n != "W?" or gauss) and (not n.endswith("!") or (n.startswith("W") == product_gauss))]
            for rule, s in rules(combine(ms, used)).items():
                if args.rules and rule not in args.rules.split(","):
                    continue
                a = per_kind(s, split)
                table.setdefault(f"{label} {rule}", {}).setdefault("all", []).append(a["all"])
                if "spot" in a:
                    table[f"{label} {rule}"].setdefault("spot", []).append(a["spot"])
        print(key, " ".join(f"{k}={v['all'][-1]:.3f}" for k, v in table.items()), flush=True)
    for k, v in table.items():
        spot = f" spot {np.mean(v['spot']):.3f}" if "spot" in v else ""
        print(f"RESULT {args.data} {k:<16} mean {np.mean(v['all']):.3f} worst {np.min(v['all']):.3f}{spot}")


if __name__ == "__main__":
    main()

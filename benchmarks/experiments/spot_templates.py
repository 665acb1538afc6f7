"""Spots in Gaussian textures: are they hidden, or is the template wrong? (RESULTS.md §18)

The product's spots on fractal, speckle and random_phase surfaces scored 0.59 – 0.94 image AUROC, and the
whitened member, the optimal linear detector there, did no better. Three looks, each on the benchmark's own
test parts (``trainer synth`` with ``--n-test-good 200 --n-test-defect 30``, one folder per family):

``oracle``   how visible each injected defect is to an observer who knows its place and shape: the defect is
             re-drawn from the set's seeds (``synth.json``), and d' = sqrt(Σ_f |S_f|² / P_f) in the texture's
             own spectrum P (of the 200 good test parts). Gaussian texture: that observer's AUROC is Φ(d'/√2).
``members``  the product's whitened member (``trainer.whitened``: 2×2-pooled image, kernels cropped to k × k,
             spreads from the spectrum) fitted on ``train/good`` with different templates; the image score is
             the largest |z| of its map; AUROC of good parts against spots, scratches and cracks.
``exact``    the same templates as exact matched filters at full resolution (FFT, no crop, no pooling);
             ``--ellipses`` adds soft ellipses (RESULTS.md §21: the generator's spots have aspect ratios up to
             3.3, the member's templates are discs).

    .venv/bin/python benchmarks/experiments/spot_templates.py members --sets blobs,discs --data SET/fractal
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import common as C
import whiten as W

from linewatch.bundle.manifest import WhitenedSpec
from linewatch.surfaces import inject_defect
from trainer.data import synth
from trainer.whitened import (
    DEFAULT_DISCS,
    DEFAULT_LINES,
    WhitenedMember,
    fit_whitened_members,
    template_spectra,
)

RADII = (4.0, 5.0, 6.5, 8.0, 10.0, 12.5)  # input pixels: the generator's spots are 1.5 – 5 % of a 256-px side
BORDER = 16  # input pixels left out of the exact maps (the reflected pad)
KINDS = ("spot", "scratch", "crack")

# name → the template part of a WhitenedSpec (the lines are added unless the name ends in "-nolines")
TEMPLATES: dict[str, dict[str, object]] = {
    "blobs": {"blobs": (2.0, 4.0, 8.0)},  # the twelfth session's member
    "discs": {"discs": DEFAULT_DISCS},  # shipped: edges 0.15 and 0.4 of the radius
    "discs-e0.25": {"discs": tuple((r, 0.25) for r in RADII)},  # the generator's own edge
    "discs-e0.1": {"discs": tuple((r, 0.1) for r in RADII)},
    "discs-e0.5": {"discs": tuple((r, 0.5) for r in RADII)},
    "discs-3edges": {"discs": tuple((r, e) for r in RADII for e in (0.1, 0.25, 0.5))},
    "discs+blobs": {"discs": DEFAULT_DISCS, "blobs": (2.0, 4.0, 8.0)},
}


def spec_for(name: str, kernel_size: int, scale: float = 1.0) -> WhitenedSpec:
    """``scale`` multiplies every length: 2 turns the pooled grid's templates into full-resolution ones."""
    base = name.removesuffix("-nolines")
    t = TEMPLATES[base]
    blobs = tuple(scale * b for b in t.get("blobs", ()))  # type: ignore[attr-defined]
    discs = tuple((scale * r, e) for r, e in t.get("discs", ()))  # type: ignore[attr-defined]
    lines = () if name.endswith("-nolines") else tuple((scale * a, e) for a, e in DEFAULT_LINES)
    return WhitenedSpec(blobs=blobs, discs=discs, lines=lines, orientations=8, kernel_size=kernel_size)


def short(root: Path) -> str:
    """``…/synth-256-s7-t200x30/fractal`` → ``s7/fractal``."""
    seed = next((w for w in root.parent.name.split("-") if w.startswith("s") and w[1:].isdigit()), root.parent.name)
    return f"{seed}/{root.name}"


def load(root: Path) -> tuple[C.Split, list[int], np.ndarray]:
    split = C.load_mvtec(root)
    keep = [i for i, n in enumerate(split.test_names) if n.split("/")[0] in ("good", *KINDS)]
    return split, keep, np.array([split.test_names[i].split("/")[0] for i in keep])


def report(label: str, scores: np.ndarray, kinds: np.ndarray) -> None:
    out = []
    for k in KINDS:
        m = (kinds == "good") | (kinds == k)
        out.append(f"{k} {C.auroc(scores[m], (kinds[m] == k).astype(int)):.3f}")
    print(f"{label:40s} " + "  ".join(out), flush=True)


def batch(images: list[np.ndarray]) -> np.ndarray:
    return (np.stack(images).astype(np.float32) / 255.0)[:, None]


def members(args: argparse.Namespace) -> None:
    for root in args.data:
        split, keep, kinds = load(root)
        train = batch(split.train)
        for name in args.sets.split(","):
            template = WhitenedMember.from_spec(spec_for(name, args.kernel))
            fitted = fit_whitened_members(template, [[train], [train]], [0] * len(train), 0, math.inf)
            assert fitted.member is not None
            with torch.no_grad():
                maps = torch.cat([fitted.member(torch.from_numpy(batch([split.test[i] for i in keep[j:j + 32]])))
                                  for j in range(0, len(keep), 32)])
            report(f"{short(root)} member {name} k{args.kernel}",
                   maps.amax(dim=(1, 2, 3)).numpy(), kinds)


# Soft ellipses for --ellipses: minor radius (input pixels) × aspect × orientation, rims of the shipped discs'
# two widths (a fraction of the minor radius), not the generator's own.
ELLIPSE_MINOR = (3.0, 4.5, 6.5, 9.0)
ELLIPSE_ASPECTS = (2.0, 3.0)
ELLIPSE_ORIENTATIONS = 6
ELLIPSE_EDGES = (0.15, 0.4)


def ellipse_spectra(shape: tuple[int, int]) -> list[np.ndarray]:
    """rfft2 of unit-peak soft ellipses centred at the origin (wrapped), at full resolution: Φ((1 − ρ_e) · b /
    σ_edge), ρ_e the elliptical radius (1 on the rim), so the rim is σ_edge wide across the minor axis."""
    from statistics import NormalDist

    cdf = np.vectorize(NormalDist().cdf)
    hh, ww = shape
    y, x = np.meshgrid(np.fft.fftfreq(hh) * hh, np.fft.fftfreq(ww) * ww, indexing="ij")
    out = []
    for b in ELLIPSE_MINOR:
        for aspect in ELLIPSE_ASPECTS:
            for k in range(ELLIPSE_ORIENTATIONS):
                theta = math.pi * k / ELLIPSE_ORIENTATIONS
                u = x * math.cos(theta) + y * math.sin(theta)
                v = -x * math.sin(theta) + y * math.cos(theta)
                rho = np.sqrt((u / (aspect * b)) ** 2 + (v / b) ** 2)
                near = rho < 3.0  # Φ is 0 to float precision beyond: evaluate only near the ellipse
                for edge in ELLIPSE_EDGES:
                    t = np.zeros(shape)
                    t[near] = cdf((1.0 - rho[near]) / edge)
                    out.append(np.fft.rfft2(t))
    return out


def exact(args: argparse.Namespace) -> None:
    for root in args.data:
        split, keep, kinds = load(root)
        for name in args.sets.split(","):
            spec = spec_for(name, 3, scale=2.0)  # template_spectra halves every length

            def spectra(shape: tuple[int, int], s: WhitenedSpec = spec) -> list[np.ndarray]:
                return template_spectra(shape, s) + (ellipse_spectra(shape) if args.ellipses else [])

            w = W.Whitened(split.train, [], [], 1, 1.0, spectra=spectra)
            scores = np.array([float(w.zmap(split.test[i])[BORDER:-BORDER, BORDER:-BORDER].max()) for i in keep])
            report(f"{short(root)} exact {name}{' +ellipses' if args.ellipses else ''}", scores, kinds)


def oracle(args: argparse.Namespace) -> None:
    from statistics import NormalDist

    phi = NormalDist().cdf
    for root in args.data:
        meta = json.loads((root / "synth.json").read_text())
        product = synth.SynthProduct(**{**meta, "defects": tuple(meta["defects"])})
        good = [synth.render_part(product, synth.TEST_GOOD, i).astype(np.float64)
                for i in range(product.n_test_good)]
        power = np.mean([np.abs(np.fft.fft2(g - g.mean())) ** 2 for g in good], axis=0)
        power[0, 0] = np.inf
        for kind in KINDS:
            d = []
            for i in range(product.n_test_defect):  # the benchmark's own test parts, drawn again
                index = synth.defect_index(product.defects.index(kind), i)
                clean = synth.render_part(product, synth.TEST_CLEAN, index)
                bad, _ = inject_defect(clean, kind, synth.part_rng(product, synth.TEST_DEFECT, index))
                signal = bad.astype(np.float64) - clean
                d.append(math.sqrt(float((np.abs(np.fft.fft2(signal)) ** 2 / power).sum())))
            q = np.quantile(d, [0.1, 0.5, 0.9])
            print(f"{short(root)} {kind:8s} d' 10 / 50 / 90 %: {q[0]:.2f} / {q[1]:.2f} / "
                  f"{q[2]:.2f}; the oracle's AUROC {np.mean([phi(x / math.sqrt(2)) for x in d]):.3f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("oracle", "members", "exact"):
        p = sub.add_parser(name)
        p.add_argument("--data", type=Path, nargs="+", required=True, help="product folders of a synth set")
        if name != "oracle":
            p.add_argument("--sets", default="blobs,discs", help=f"of {', '.join(TEMPLATES)} (+ -nolines)")
        if name == "members":
            p.add_argument("--kernel", type=int, default=17)
        if name == "exact":
            p.add_argument("--ellipses", action="store_true", help="add soft ellipses (aspect 2 and 3)")
    args = parser.parse_args()
    C.set_threads(1)
    {"oracle": oracle, "members": members, "exact": exact}[args.command](args)


if __name__ == "__main__":
    main()

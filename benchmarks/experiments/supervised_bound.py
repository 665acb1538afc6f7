"""Is a synthetic family's target reachable at all? A detector trained with labels, as a reference.

Every member the product has (RESULTS.md §8–§15) is fitted on good images only, and grass stays at 0.86–0.90
image AUROC. This script trains a small fully convolutional network *with labels* — good parts and parts with
the test's own defect generator (``linewatch.surfaces.defects``), pixel masks as targets — on fresh draws of the
same product (part seeds the benchmark never uses), and scores the benchmark's own test parts (``trainer synth``
with ``--n-test-good 200 --n-test-defect 30``, the cache ``fusion.py`` uses). No one-class method sees a defect
before the line makes one, so this is a reference, not a competitor: where it reaches 0.99, the information is
in the pixels and a learned feature could find it; where a short training stays below, the question stays open.

    .venv/bin/python benchmarks/experiments/supervised_bound.py --families grass --steps 1500
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from linewatch.surfaces.defects import inject_defect
from linewatch.surfaces.textures import FAMILIES, render_surface
from trainer.data.synth import style_seed_for
from trainer.metrics import auroc

TRAIN_SEED = 424242  # part streams apart from trainer synth's [seed, family, split, index] (seeds 0..9)


class Detector(nn.Module):
    """Fully convolutional, stride 4, a ~45 px field: enough to see a crack's course and the blades around it."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        w = width

        def block(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, stride, padding=dilation, dilation=dilation), nn.ReLU(inplace=True)]

        self.body = nn.Sequential(
            *block(1, w), *block(w, w), *block(w, 2 * w, 2), *block(2 * w, 2 * w), *block(2 * w, 3 * w, 2),
            *block(3 * w, 3 * w, dilation=2), *block(3 * w, 3 * w, dilation=4), nn.Conv2d(3 * w, 1, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def standardise(image: np.ndarray) -> np.ndarray:
    x = image.astype(np.float32)
    return (x - x.mean()) / max(float(x.std()), 1e-3)


def draw(family: str, style: int, size: int, index: int, kinds: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Part ``index`` of the training stream: odd indices carry a defect of a kind chosen by the index."""
    family_index = FAMILIES.index(family)
    image = render_surface(family, size, size, np.random.default_rng([TRAIN_SEED, family_index, 0, index]), style)
    if index % 2 == 0:
        return image, np.zeros_like(image)
    kind = kinds[(index // 2) % len(kinds)]
    return inject_defect(image, kind, np.random.default_rng([TRAIN_SEED, family_index, 1, index]))


def batch(family: str, style: int, size: int, crop: int, start: int, n: int, kinds: list[str],
          rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ms = [], []
    for index in range(start, start + n):
        image, mask = draw(family, style, size, index, kinds)
        if mask.any():  # a crop that holds the defect's centre
            ys, xs_ = np.nonzero(mask)
            cy, cx = int(ys.mean()), int(xs_.mean())
            y0 = int(np.clip(cy - rng.integers(crop // 8, crop - crop // 8), 0, size - crop))
            x0 = int(np.clip(cx - rng.integers(crop // 8, crop - crop // 8), 0, size - crop))
        else:
            y0, x0 = (int(v) for v in rng.integers(0, size - crop + 1, 2))
        xs.append(standardise(image[y0 : y0 + crop, x0 : x0 + crop]))
        ms.append(mask[y0 : y0 + crop, x0 : x0 + crop] > 0)
    x = torch.from_numpy(np.stack(xs))[:, None]
    m = torch.from_numpy(np.stack(ms).astype(np.float32))[:, None]
    return x, nn.functional.max_pool2d(m, 4)  # a cell is defective where any of its pixels is


def test_parts(root: Path) -> list[tuple[str, np.ndarray]]:
    return [(kind_dir.name, cv2.imread(str(path), cv2.IMREAD_GRAYSCALE))
            for kind_dir in sorted((root / "test").iterdir()) for path in sorted(kind_dir.glob("*.png"))]


@torch.no_grad()
def scores(model: Detector, parts: list[tuple[str, np.ndarray]]) -> np.ndarray:
    model.eval()
    out = [float(model(torch.from_numpy(standardise(img))[None, None]).amax()) for _, img in parts]
    model.train()
    return np.asarray(out)


def report(kinds: list[str], values: np.ndarray) -> dict[str, float | None]:
    names = np.asarray(kinds)
    result = {"image_auroc": auroc(values, names != "good")}
    for kind in sorted(set(kinds) - {"good"}):
        keep = (names == "good") | (names == kind)
        result[kind] = auroc(values[keep], names[keep] == kind)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", default="grass")
    parser.add_argument("--data", type=Path, default=Path("/tmp/lw-exp-cache/synth-eval-t200x30"),
                        help="trainer synth output of the benchmark's test parts (one folder per family)")
    parser.add_argument("--synth-seed", type=int, default=0, help="the style set the --data folder was drawn with")
    parser.add_argument("--kinds", default="crack,scratch,spot,dent,missing_pattern,noise_patch")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch", type=int, default=24)
    parser.add_argument("--crop", type=int, default=128)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--eval-every", type=int, default=500)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    kinds = args.kinds.split(",")
    for family in args.families.split(","):
        root = args.data / family
        meta = json.loads((root / "synth.json").read_text())
        style = style_seed_for(args.synth_seed, family)
        if meta["style_seed"] != style:
            raise SystemExit(f"{root}: style seed {meta['style_seed']}, expected {style} for --synth-seed")
        parts = test_parts(root)
        labels = [kind for kind, _ in parts]
        model = Detector(args.width)
        optimiser = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, 2e-3, total_steps=args.steps)
        rng = np.random.default_rng(0)
        started = time.perf_counter()
        for step in range(1, args.steps + 1):
            x, m = batch(family, style, meta["size"], args.crop, step * args.batch, args.batch, kinds, rng)
            logits = model(x)
            # cells and images both: the pixel loss teaches where, the image loss what the maximum must do
            pixel = nn.functional.binary_cross_entropy_with_logits(logits, m, pos_weight=torch.tensor(20.0))
            image = nn.functional.binary_cross_entropy_with_logits(logits.amax((1, 2, 3)), m.amax((1, 2, 3)))
            loss = pixel + image
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
            if step % args.eval_every == 0 or step == args.steps:
                result = report(labels, scores(model, parts))
                print(f"{family} step {step} loss {loss.item():.3f} {time.perf_counter() - started:.0f} s  "
                      + "  ".join(f"{k} {v:.3f}" for k, v in result.items() if v is not None), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

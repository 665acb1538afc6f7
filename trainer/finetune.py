"""Fine-tuning a backbone on one product's own good images (DESIGN 2.5; ``trainer fit --finetune-steps``).

Triplets come from ``trainer.triplets`` with the product as the only class: anchor and positive are
patches at the same position of two good parts, the negative is the positive with a synthetic local
defect (smooth blob, thin curve, cut-and-paste, local blur) or the paper's Gaussian-noise patch. The loss
and distances are ``trainer.train``'s. So the features learn what varies between good parts of *this*
product (to ignore it) and what a local defect on it looks like.

Patches are cut from the images *after* the bundle's preprocessing, in square tiles of the input's short
side, so the network is tuned at exactly the scale it will inspect at. Only prototype images are used:
the calibration images stay unseen by everything the fit learns.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch

from linewatch.bundle.manifest import InputSpec, Preprocessing
from linewatch.inference.preprocessing import preprocess
from trainer.data.images import read_image
from trainer.model import RECEPTIVE_FIELD, FeatureNet
from trainer.train import TrainConfig, loss_fn, triplet_distances
from trainer.triplets import ImageClass, TripletConfig, Triplets, TripletSampler

log = logging.getLogger(__name__)

DEFAULT_LR = 1e-4  # the paper's rate: small steps away from the general texture features
DEFAULT_BATCH = 64
P_NOISE = 0.25  # the rest of the negatives are realistic local defects
VALIDATION_TRIPLETS = 512


@dataclass(frozen=True, slots=True)
class FinetuneReport:
    steps: int
    batch_size: int
    lr: float
    tiles: int
    tile_side: int
    val_loss_before: float
    val_loss_after: float
    val_accuracy_before: float
    val_accuracy_after: float
    seconds: float

    def notes(self) -> dict[str, str]:
        return {
            "finetune_steps": str(self.steps),
            "finetune": (
                f"{self.steps} steps x {self.batch_size} triplets, lr {self.lr:g}, {self.tiles} tiles of "
                f"{self.tile_side}px from the prototype images; validation triplet loss "
                f"{self.val_loss_before:.4f} -> {self.val_loss_after:.4f}, accuracy "
                f"{self.val_accuracy_before:.3f} -> {self.val_accuracy_after:.3f}; {self.seconds:.1f} s"
            ),
        }


def square_tiles(image: npt.NDArray[np.uint8]) -> list[npt.NDArray[np.uint8]]:
    """Square tiles of side min(H, W) covering the image (the last one flush with the far edge)."""
    h, w = image.shape
    side = min(h, w)
    long = max(h, w)
    starts = list(range(0, long - side + 1, side))
    if starts[-1] != long - side:
        starts.append(long - side)
    if h >= w:
        return [np.ascontiguousarray(image[s : s + side, :]) for s in starts]
    return [np.ascontiguousarray(image[:, s : s + side]) for s in starts]


def product_tiles(
    paths: Sequence[Path], spec: InputSpec, prep: Preprocessing
) -> list[npt.NDArray[np.uint8]]:
    """The images as the model sees them (preprocessed), back in 8 bit for the triplet sampler, tiled. With
    ``normalise="image_mean"`` the image's mean lands on mid-grey, so the sampler's patches are centred as the
    daemon's inputs are; only pixels more than half the value range from the mean are clipped (warned)."""
    low, high = prep.value_range
    tiles: list[npt.NDArray[np.uint8]] = []
    clipped = total = 0
    for path in paths:
        x = preprocess(read_image(path), spec, prep)[0]
        level = (x - low) / (high - low) * 255.0
        clipped += int(np.count_nonzero((level < -0.5) | (level > 255.5)))
        total += level.size
        tiles.extend(square_tiles(np.clip(np.round(level), 0, 255).astype(np.uint8)))
    if total and clipped > 0.001 * total:
        log.warning("fine-tuning tiles: %.2f %% of the pixels lie outside the 8-bit range after "
                    "preprocessing and are clipped", 100.0 * clipped / total)
    return tiles


def _as_batch(patches: npt.NDArray[np.float16]) -> torch.Tensor:
    return torch.from_numpy(patches.astype(np.float32)).unsqueeze(1)


def _validate(net: FeatureNet, triplets: Triplets, config: TrainConfig) -> tuple[float, float]:
    net.eval()
    with torch.no_grad():
        d1, d2 = triplet_distances(
            net, _as_batch(triplets.anchor), _as_batch(triplets.positive), _as_batch(triplets.negative)
        )
    return float(loss_fn(config, d1, d2)), float((d1 < d2).float().mean())


def finetune_backbone(
    backbone: FeatureNet,
    paths: Sequence[Path],
    spec: InputSpec,
    prep: Preprocessing,
    steps: int,
    seed: int = 0,
    batch_size: int = DEFAULT_BATCH,
    lr: float = DEFAULT_LR,
) -> tuple[FeatureNet, FinetuneReport]:
    """A fine-tuned copy of ``backbone`` (the argument is left as it was) and what the tuning did."""
    if not paths:
        raise ValueError("fine-tuning needs good images")
    started = time.perf_counter()
    net, report = finetune_on_tiles(backbone, product_tiles(paths, spec, prep), steps, seed, batch_size, lr)
    return net, dataclasses.replace(report, seconds=time.perf_counter() - started)  # reading included


def finetune_on_tiles(
    backbone: FeatureNet,
    tiles: Sequence[npt.NDArray[np.uint8]],
    steps: int,
    seed: int = 0,
    batch_size: int = DEFAULT_BATCH,
    lr: float = DEFAULT_LR,
) -> tuple[FeatureNet, FinetuneReport]:
    """``finetune_backbone`` on square 8-bit tiles already cut as the model sees them."""
    if steps < 1:
        raise ValueError(f"fine-tuning needs at least 1 step, got {steps}")
    if not tiles:
        raise ValueError("fine-tuning needs good images")
    started = time.perf_counter()
    side = int(tiles[0].shape[0])
    if side < RECEPTIVE_FIELD:
        raise ValueError(f"input side {side} is smaller than a {RECEPTIVE_FIELD}px patch")
    # Validation triplets from held-back tiles where there are enough; the loss before and after tells
    # whether the tuning learned anything about this product.
    rng = np.random.default_rng([seed, 0xF1])
    order = rng.permutation(len(tiles))
    n_val = max(1, len(tiles) // 10) if len(tiles) >= 3 else 0
    val_tiles = [tiles[i] for i in order[:n_val]] or tiles
    train_tiles = [tiles[i] for i in order[n_val:]] or tiles
    triplet_cfg = TripletConfig(scales=(side,), p_noise=P_NOISE, p_local=1.0 - P_NOISE)
    sampler = TripletSampler([ImageClass("product", train_tiles)], triplet_cfg)
    val_set = TripletSampler([ImageClass("product", val_tiles)], triplet_cfg).sample(
        VALIDATION_TRIPLETS, np.random.default_rng([seed, 0xF2])
    )
    config = TrainConfig(h=backbone.h, batch_size=batch_size, lr=lr, seed=seed, triplets=triplet_cfg)

    net = copy.deepcopy(backbone)
    loss_before, acc_before = _validate(net, val_set, config)
    optimiser = torch.optim.Adam(net.parameters(), lr=lr)
    net.train()
    chunk = max(1, 4096 // batch_size)  # steps per sampled triplet set
    step = 0
    while step < steps:
        n = min(chunk, steps - step)
        triplets = sampler.sample(n * batch_size, np.random.default_rng([seed, 0xF3, step]))
        for b in range(n):
            sl = slice(b * batch_size, (b + 1) * batch_size)
            d1, d2 = triplet_distances(
                net, _as_batch(triplets.anchor[sl]), _as_batch(triplets.positive[sl]),
                _as_batch(triplets.negative[sl]),
            )
            loss = loss_fn(config, d1, d2)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
        step += n
    loss_after, acc_after = _validate(net, val_set, config)
    net.eval()
    return net, FinetuneReport(
        steps=steps, batch_size=batch_size, lr=lr, tiles=len(tiles), tile_side=side,
        val_loss_before=loss_before, val_loss_after=loss_after, val_accuracy_before=acc_before,
        val_accuracy_after=acc_after, seconds=time.perf_counter() - started,
    )

"""The training loop (DESIGN 2.1): triplet loss on 32×32 patches, rounds × epochs with fresh triplets.

Objective (the paper's): d1 = ‖f(a) − f(b)‖, d2 = ‖f(a) − f(c)‖, p = softmax([d1, d2]), loss = mean
absolute error of p against [0, 1]. Optionally the standard margin loss max(0, d1 − d2 + margin). Adam,
learning rate 1e-4, batch 256; every round samples a fresh triplet set and trains ``epochs`` epochs on
it (paper: 6 rounds × 15 epochs).

Python API (what ``trainer pretrain`` and accuracy experiments call)::

    result = train(TrainConfig(h=16, rounds=6, epochs=15), classes, out_dir=Path("runs/a"))
    result.val_accuracy, result.checkpoint        # held-back triplet accuracy, backbone.pt

``out_dir`` receives ``log.csv`` (one row per epoch), ``last.pt`` (everything needed to resume, written
after every epoch) and ``backbone.pt`` (the final network with its config and provenance; what
``trainer.backbone.load_backbone`` reads). ``resume=True`` continues from ``last.pt`` exactly where it
stopped: triplet sets and batch orders are functions of (seed, round, epoch), not of history.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import torch
import torch.nn.functional as F

from trainer.model import RECEPTIVE_FIELD, FeatureNet
from trainer.triplets import NEGATIVE_KINDS, ImageClass, TripletConfig, Triplets, TripletSampler

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "linewatch-trainer-checkpoint/1"
LOSSES = ("softmax_mae", "margin")
_VAL_SEED = 0x7A1  # the validation set's own stream, apart from every round's
_EVAL_BATCH = 1024


@dataclass(frozen=True)
class TrainConfig:
    h: int = 16
    rounds: int = 6
    epochs: int = 15
    triplets_per_round: int = 20_000
    batch_size: int = 256
    lr: float = 1e-4
    loss: str = "softmax_mae"  # "softmax_mae" (paper) or "margin"
    margin: float = 1.0  # for loss="margin"
    seed: int = 0
    val_triplets: int = 2048
    val_fraction: float = 0.1  # images per class held back for validation (classes with >= 3 images)
    threads: int | None = None  # torch intra-op threads; None leaves torch's default
    triplets: TripletConfig = field(default_factory=TripletConfig)

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        if self.triplets.patch_size != RECEPTIVE_FIELD:
            raise ValueError(
                f"patch_size must equal the network's receptive field {RECEPTIVE_FIELD} (one feature per "
                f"patch), got {self.triplets.patch_size}"
            )
        for name in ("h", "rounds", "epochs", "triplets_per_round", "batch_size", "val_triplets"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")

    def to_dict(self) -> dict[str, Any]:
        """Plain types only (a checkpoint loads with ``torch.load(weights_only=True)``)."""
        d = dataclasses.asdict(self)
        d["triplets"] = {k: list(v) if isinstance(v, tuple) else v for k, v in d["triplets"].items()}
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        trip = {k: tuple(v) if isinstance(v, list) else v for k, v in d.get("triplets", {}).items()}
        return cls(**{**d, "triplets": TripletConfig(**trip)})


@dataclass(frozen=True)
class EpochRecord:
    round: int  # 1-based
    epoch: int  # 1-based within the round
    step: int  # optimiser steps so far
    train_loss: float
    train_accuracy: float
    val_loss: float
    val_accuracy: float
    triplets_per_s: float
    elapsed_s: float
    val_accuracy_by_kind: dict[str, float] = field(default_factory=dict)

    def csv_row(self) -> dict[str, Any]:
        row = {k: v for k, v in dataclasses.asdict(self).items() if k != "val_accuracy_by_kind"}
        for kind in NEGATIVE_KINDS:
            value = self.val_accuracy_by_kind.get(kind)
            row[f"val_accuracy_{kind}"] = "" if value is None else f"{value:.4f}"
        return row


CSV_FIELDS = [f.name for f in dataclasses.fields(EpochRecord) if f.name != "val_accuracy_by_kind"] + [
    f"val_accuracy_{kind}" for kind in NEGATIVE_KINDS
]


@dataclass
class TrainResult:
    model: FeatureNet
    config: TrainConfig
    history: list[EpochRecord]
    checkpoint: Path | None  # backbone.pt when out_dir was given
    val_held_back: bool  # validation triplets come from images never trained on
    elapsed_s: float

    @property
    def final_loss(self) -> float:
        return self.history[-1].train_loss

    @property
    def val_loss(self) -> float:
        return self.history[-1].val_loss

    @property
    def val_accuracy(self) -> float:
        return self.history[-1].val_accuracy

    @property
    def triplets_per_s(self) -> float:
        return float(np.mean([r.triplets_per_s for r in self.history]))

    def summary(self) -> dict[str, Any]:
        last = self.history[-1]
        return {
            "train_loss": last.train_loss,
            "val_loss": last.val_loss,
            "val_accuracy": last.val_accuracy,
            "val_accuracy_by_kind": last.val_accuracy_by_kind,
            "val_held_back": self.val_held_back,
            "rounds": last.round,
            "epochs": last.epoch,
            "steps": last.step,
            "triplets_per_s": self.triplets_per_s,
            "elapsed_s": self.elapsed_s,
        }


# ---------------------------------------------------------------------------------------- losses


def triplet_distances(
    net: FeatureNet, anchor: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(d1, d2): Euclidean feature distances anchor–positive and anchor–negative, one pass for all three."""
    n = anchor.shape[0]
    features = net(torch.cat([anchor, positive, negative])).flatten(1)
    fa, fb, fc = features[:n], features[n : 2 * n], features[2 * n :]
    # The epsilon keeps the gradient of the square root finite where two features coincide.
    d1 = torch.sqrt(torch.sum((fa - fb) ** 2, dim=1) + 1e-12)
    d2 = torch.sqrt(torch.sum((fa - fc) ** 2, dim=1) + 1e-12)
    return d1, d2


def softmax_mae_loss(d1: torch.Tensor, d2: torch.Tensor) -> torch.Tensor:
    """The paper's loss: mean absolute error between softmax([d1, d2]) and the target [0, 1]."""
    p = torch.softmax(torch.stack([d1, d2], dim=1), dim=1)
    target = torch.tensor([0.0, 1.0], dtype=p.dtype, device=p.device).expand_as(p)
    return torch.mean(torch.abs(p - target))


def margin_loss(d1: torch.Tensor, d2: torch.Tensor, margin: float) -> torch.Tensor:
    """The standard triplet margin loss: mean of max(0, d1 − d2 + margin)."""
    return torch.mean(F.relu(d1 - d2 + margin))


def loss_fn(config: TrainConfig, d1: torch.Tensor, d2: torch.Tensor) -> torch.Tensor:
    return softmax_mae_loss(d1, d2) if config.loss == "softmax_mae" else margin_loss(d1, d2, config.margin)


# ---------------------------------------------------------------------------------------- data


def split_validation(
    classes: Sequence[ImageClass], fraction: float, rng: np.random.Generator
) -> tuple[list[ImageClass], list[ImageClass], bool]:
    """(train classes, validation classes, held_back): hold back ``fraction`` of each class's images
    (at least one) where a class has 3 or more; smaller classes serve both (then held_back is False)."""
    train_classes, val_classes = [], []
    held_back = fraction > 0
    for cls in classes:
        n = len(cls.images)
        k = max(1, round(n * fraction)) if fraction > 0 else 0
        if n >= 3 and k > 0:
            order = rng.permutation(n)
            val_idx, train_idx = sorted(order[:k]), sorted(order[k:])
            train_classes.append(dataclasses.replace(cls, images=[cls.images[i] for i in train_idx]))
            val_classes.append(dataclasses.replace(cls, images=[cls.images[i] for i in val_idx]))
        else:
            held_back = False
            train_classes.append(cls)
            val_classes.append(cls)
    return train_classes, val_classes, held_back


def _batch(array: np.ndarray, index: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(array[index].astype(np.float32)).unsqueeze(1)


def evaluate(
    net: FeatureNet, triplets: Triplets, config: TrainConfig
) -> tuple[float, float, dict[str, float]]:
    """(loss, accuracy d1 < d2, accuracy per negative kind) on a triplet set, without gradients."""
    net.eval()
    d1s, d2s = [], []
    with torch.no_grad():
        for start in range(0, len(triplets), _EVAL_BATCH):
            idx = np.arange(start, min(len(triplets), start + _EVAL_BATCH))
            d1, d2 = triplet_distances(
                net,
                _batch(triplets.anchor, idx),
                _batch(triplets.positive, idx),
                _batch(triplets.negative, idx),
            )
            d1s.append(d1)
            d2s.append(d2)
    net.train()
    d1, d2 = torch.cat(d1s), torch.cat(d2s)
    correct = (d1 < d2).numpy()
    by_kind = {
        kind: float(correct[triplets.negative_kind == code].mean())
        for code, kind in enumerate(NEGATIVE_KINDS)
        if np.any(triplets.negative_kind == code)
    }
    return float(loss_fn(config, d1, d2)), float(correct.mean()), by_kind


# ---------------------------------------------------------------------------------------- checkpoints


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Write atomically (a crash mid-write leaves the previous checkpoint intact)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """A trainer checkpoint (plain types and tensors only: loaded with ``weights_only=True``)."""
    payload: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or "state_dict" not in payload or "h" not in payload:
        raise ValueError(f"{path}: not a trainer checkpoint (needs 'state_dict' and 'h')")
    return payload


def code_provenance() -> dict[str, Any]:
    """Code version, git revision (if the package runs from a checkout) and library versions."""
    import subprocess

    import trainer

    info: dict[str, Any] = {
        "trainer_version": trainer.__version__,
        "torch_version": str(torch.__version__),
        "numpy_version": np.__version__,
        "python_version": sys.version.split()[0],
    }
    repo = Path(__file__).resolve().parents[1]
    try:
        rev = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        info["git_revision"] = rev
        info["git_dirty"] = bool(dirty)
    except (OSError, subprocess.SubprocessError):
        info["git_revision"] = None
    return info


# ---------------------------------------------------------------------------------------- progress


class ProgressBar:
    """A one-line bar on a terminal (redrawn at most 5×/s); silent when stderr is not a terminal."""

    def __init__(self, total: int, stream: TextIO | None = None, enabled: bool = True) -> None:
        self.total = total
        self.stream = stream or sys.stderr
        self.enabled = enabled and self.stream.isatty()
        self._last = 0.0

    def update(self, done: int, text: str) -> None:
        now = time.monotonic()
        if not self.enabled or (now - self._last < 0.2 and done < self.total):
            return
        self._last = now
        width = 30
        filled = int(width * done / max(1, self.total))
        self.stream.write(
            f"\r[{'#' * filled}{'.' * (width - filled)}] {100 * done / max(1, self.total):5.1f}% {text}"
        )
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()


# ---------------------------------------------------------------------------------------- the loop


def train(
    config: TrainConfig,
    classes: Sequence[ImageClass],
    out_dir: Path | None = None,
    *,
    resume: bool = False,
    val_classes: Sequence[ImageClass] | None = None,
    provenance: dict[str, Any] | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train a FeatureNet on triplets from ``classes``; validation triplets come from ``val_classes``
    or, by default, from images held back from each class (``config.val_fraction``)."""
    started = time.monotonic()
    if config.threads:
        torch.set_num_threads(config.threads)
    if val_classes is None:
        train_classes, val_classes, held_back = split_validation(
            classes, config.val_fraction, np.random.default_rng([config.seed, _VAL_SEED])
        )
    else:
        train_classes, held_back = list(classes), True
    sampler = TripletSampler(train_classes, config.triplets)
    val_set = TripletSampler(val_classes, config.triplets).sample(
        config.val_triplets, np.random.default_rng([config.seed, _VAL_SEED, 1])
    )

    torch.manual_seed(config.seed)
    net = FeatureNet(config.h)
    optimizer = torch.optim.Adam(net.parameters(), lr=config.lr)
    history: list[EpochRecord] = []
    start_round, start_epoch, step = 0, 0, 0
    provenance = dict(provenance or {})
    provenance.setdefault("classes", {c.name: len(c.images) for c in classes})
    provenance.setdefault("seed", config.seed)
    provenance.setdefault("code", code_provenance())
    provenance.setdefault("val_held_back", held_back)

    last_path = out_dir / "last.pt" if out_dir else None
    if resume and last_path is not None and last_path.is_file():
        state = load_checkpoint(last_path)
        _check_resumable(TrainConfig.from_dict(state["config"]), config, last_path)
        net.load_state_dict(state["state_dict"])
        optimizer.load_state_dict(state["optimizer"])
        start_round, start_epoch, step = state["next_round"], state["next_epoch"], state["step"]
        history = [EpochRecord(**row) for row in state["history"]]
        log.info("resuming %s at round %d epoch %d", last_path, start_round + 1, start_epoch + 1)
    elif resume:
        log.info("nothing to resume in %s; starting afresh", out_dir)

    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        _write_csv(out_dir / "log.csv", history)

    steps_per_epoch = math.ceil(config.triplets_per_round / config.batch_size)
    total_epochs = config.rounds * config.epochs
    bar = ProgressBar(total_epochs * steps_per_epoch, enabled=progress)
    net.train()
    for rnd in range(start_round, config.rounds):
        triplets = sampler.sample(config.triplets_per_round, np.random.default_rng([config.seed, rnd]))
        for epoch in range(start_epoch if rnd == start_round else 0, config.epochs):
            order = np.random.default_rng([config.seed, rnd, epoch]).permutation(len(triplets))
            loss_sum, correct, seen, busy_s = 0.0, 0, 0, 0.0
            for b in range(steps_per_epoch):
                idx = order[b * config.batch_size : (b + 1) * config.batch_size]
                t0 = time.perf_counter()
                d1, d2 = triplet_distances(
                    net,
                    _batch(triplets.anchor, idx),
                    _batch(triplets.positive, idx),
                    _batch(triplets.negative, idx),
                )
                loss = loss_fn(config, d1, d2)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                busy_s += time.perf_counter() - t0
                step += 1
                loss_sum += float(loss.detach()) * idx.size
                correct += int((d1 < d2).sum())
                seen += idx.size
                done = (rnd * config.epochs + epoch) * steps_per_epoch + b + 1
                bar.update(
                    done,
                    f"round {rnd + 1}/{config.rounds} epoch {epoch + 1}/{config.epochs} "
                    f"loss {loss_sum / seen:.4f} {seen / max(busy_s, 1e-9):.0f} triplets/s",
                )
            val_loss, val_acc, by_kind = evaluate(net, val_set, config)
            record = EpochRecord(
                round=rnd + 1,
                epoch=epoch + 1,
                step=step,
                train_loss=loss_sum / seen,
                train_accuracy=correct / seen,
                val_loss=val_loss,
                val_accuracy=val_acc,
                triplets_per_s=seen / max(busy_s, 1e-9),
                elapsed_s=time.monotonic() - started,
                val_accuracy_by_kind=by_kind,
            )
            history.append(record)
            log.info(
                "round %d/%d epoch %d/%d: loss %.4f, val loss %.4f, val accuracy %.4f (%.0f triplets/s)",
                rnd + 1,
                config.rounds,
                epoch + 1,
                config.epochs,
                record.train_loss,
                val_loss,
                val_acc,
                record.triplets_per_s,
            )
            if out_dir is not None and last_path is not None:
                _append_csv(out_dir / "log.csv", record)
                next_round, next_epoch = (rnd, epoch + 1) if epoch + 1 < config.epochs else (rnd + 1, 0)
                save_checkpoint(
                    last_path,
                    {
                        **_backbone_payload(net, config, provenance),
                        "optimizer": optimizer.state_dict(),
                        "next_round": next_round,
                        "next_epoch": next_epoch,
                        "step": step,
                        "history": [dataclasses.asdict(r) for r in history],
                    },
                )
    bar.close()
    if not history:
        raise ValueError(f"nothing to train: {last_path} has already completed {config.rounds} rounds")

    result = TrainResult(net.eval(), config, history, None, held_back, time.monotonic() - started)
    if out_dir is not None:
        result.checkpoint = out_dir / "backbone.pt"
        save_checkpoint(
            result.checkpoint, {**_backbone_payload(net, config, provenance), "summary": result.summary()}
        )
    log.info(
        "done: loss %.4f, validation loss %.4f, validation triplet accuracy %.4f (%s), %.0f s",
        result.final_loss,
        result.val_loss,
        result.val_accuracy,
        "held-back images" if held_back else "training images, too few to hold back",
        result.elapsed_s,
    )
    return result


def _backbone_payload(net: FeatureNet, config: TrainConfig, provenance: dict[str, Any]) -> dict[str, Any]:
    return {
        "format": CHECKPOINT_FORMAT,
        "state_dict": {k: v.detach().clone() for k, v in net.state_dict().items()},
        "h": net.h,
        "config": config.to_dict(),
        "provenance": provenance,
    }


def _check_resumable(saved: TrainConfig, requested: TrainConfig, path: Path) -> None:
    """Resuming may add rounds (or change threads); anything else would silently mix two runs."""
    a = dataclasses.replace(saved, rounds=1, threads=None)
    b = dataclasses.replace(requested, rounds=1, threads=None)
    if a != b:
        diff = [f.name for f in dataclasses.fields(a) if getattr(a, f.name) != getattr(b, f.name)]
        raise ValueError(f"{path}: cannot resume, the configuration differs in {', '.join(diff)}")


def _write_csv(path: Path, history: list[EpochRecord]) -> None:
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for record in history:
            writer.writerow(record.csv_row())


def _append_csv(path: Path, record: EpochRecord) -> None:
    with path.open("a", newline="") as fh:
        csv.DictWriter(fh, fieldnames=CSV_FIELDS).writerow(record.csv_row())

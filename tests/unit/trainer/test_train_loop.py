"""The training loop: loss values, checkpoints and exact resume, backbone loading, one short real run."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from linewatch.surfaces import FAMILIES, render_surface
from trainer.backbone import BackboneError, load_backbone, read_backbone
from trainer.model import FeatureNet
from trainer.train import (
    TrainConfig,
    margin_loss,
    softmax_mae_loss,
    train,
    triplet_distances,
)
from trainer.triplets import ImageClass, TripletConfig


@pytest.fixture(autouse=True)
def one_thread() -> None:
    torch.set_num_threads(1)


def surface_classes(n_classes: int, n_images: int, size: int) -> list[ImageClass]:
    return [
        ImageClass(
            f"{family}-{k}",
            [
                render_surface(family, size, size, np.random.default_rng([k, i]), style_seed=k)
                for i in range(n_images)
            ],
        )
        for k, family in enumerate(FAMILIES[:n_classes])
    ]


def test_softmax_mae_loss_values() -> None:
    d = torch.tensor
    # Equal distances: p = [0.5, 0.5], |0.5 − 0| and |0.5 − 1| average to 0.5.
    assert float(softmax_mae_loss(d([2.0]), d([2.0]))) == pytest.approx(0.5)
    # d1 = 1, d2 = 0: p1 = e / (1 + e), and the mean absolute error equals p1.
    assert float(softmax_mae_loss(d([1.0]), d([0.0]))) == pytest.approx(math.e / (1 + math.e))
    # A well-separated triplet costs almost nothing; the batch loss is the mean.
    assert float(softmax_mae_loss(d([0.0]), d([20.0]))) < 1e-8
    assert float(softmax_mae_loss(d([2.0, 0.0]), d([2.0, 20.0]))) == pytest.approx(0.25)
    # The gradient pulls the positive closer and pushes the negative away.
    d1, d2 = d([1.0], requires_grad=True), d([1.5], requires_grad=True)
    softmax_mae_loss(d1, d2).backward()
    assert d1.grad is not None and d2.grad is not None
    assert float(d1.grad[0]) > 0 > float(d2.grad[0])


def test_margin_loss_values() -> None:
    d = torch.tensor
    assert float(margin_loss(d([1.0]), d([3.0]), margin=1.0)) == 0.0
    assert float(margin_loss(d([2.0]), d([1.5]), margin=1.0)) == pytest.approx(1.5)
    assert float(margin_loss(d([2.0, 1.0]), d([1.5, 3.0]), margin=1.0)) == pytest.approx(0.75)


def test_triplet_distances_are_euclidean_feature_distances() -> None:
    torch.manual_seed(0)
    net = FeatureNet(4).eval()
    a, c = torch.rand(3, 1, 32, 32), torch.rand(3, 1, 32, 32)
    with torch.no_grad():
        d1, d2 = triplet_distances(net, a, a.clone(), c)
        expected = torch.linalg.vector_norm(net(a).flatten(1) - net(c).flatten(1), dim=1)
    assert torch.all(d1 < 1e-5)
    torch.testing.assert_close(d2, expected)


def test_config_is_validated() -> None:
    with pytest.raises(ValueError, match="loss"):
        TrainConfig(loss="hinge")
    with pytest.raises(ValueError, match="receptive field"):
        TrainConfig(triplets=TripletConfig(patch_size=16, scales=(64,)))
    with pytest.raises(ValueError, match="batch_size"):
        TrainConfig(batch_size=0)


def _tiny_config(rounds: int, **kw: object) -> TrainConfig:
    return TrainConfig(
        h=4,
        rounds=rounds,
        epochs=2,
        triplets_per_round=384,
        batch_size=128,
        lr=1e-3,
        seed=3,
        val_triplets=128,
        val_fraction=0.25,
        triplets=TripletConfig(scales=(96, 48)),
        **kw,  # type: ignore[arg-type]
    )


def test_checkpoint_resume_continues_exactly(tmp_path: Path) -> None:
    classes = surface_classes(3, 4, 96)
    straight = train(_tiny_config(rounds=2), classes, tmp_path / "straight", progress=False)

    interrupted = tmp_path / "interrupted"
    train(_tiny_config(rounds=1), classes, interrupted, progress=False)
    resumed = train(_tiny_config(rounds=2), classes, interrupted, resume=True, progress=False)

    for key, value in straight.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[key], value, rtol=0, atol=1e-6)
    assert [r.step for r in resumed.history] == [3, 6, 9, 12]
    assert resumed.final_loss == pytest.approx(straight.final_loss, abs=1e-6)
    with (interrupted / "log.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["round"], r["epoch"]) for r in rows] == [("1", "1"), ("1", "2"), ("2", "1"), ("2", "2")]
    assert float(rows[-1]["val_accuracy"]) == pytest.approx(resumed.val_accuracy)

    with pytest.raises(ValueError, match="lr"):
        train(
            dataclass_replace(_tiny_config(rounds=3), lr=5e-4),
            classes,
            interrupted,
            resume=True,
            progress=False,
        )


def dataclass_replace(config: TrainConfig, **changes: object) -> TrainConfig:
    import dataclasses

    return dataclasses.replace(config, **changes)  # type: ignore[arg-type]


def test_backbone_checkpoint_loads_with_provenance(tmp_path: Path) -> None:
    result = train(
        _tiny_config(rounds=1), surface_classes(2, 3, 96), tmp_path, progress=False, provenance={"data": "x"}
    )
    assert result.checkpoint == tmp_path / "backbone.pt"
    payload = torch.load(result.checkpoint, weights_only=True)
    assert {"state_dict", "h", "provenance", "config", "summary"} <= set(payload)
    assert payload["h"] == 4 and payload["provenance"]["data"] == "x" and payload["provenance"]["seed"] == 3
    assert "trainer_version" in payload["provenance"]["code"]
    assert set(payload["provenance"]["classes"]) == {f"{FAMILIES[0]}-0", f"{FAMILIES[1]}-1"}

    net, meta = read_backbone(result.checkpoint)
    x = torch.rand(2, 1, 40, 40)
    with torch.no_grad():
        torch.testing.assert_close(net(x), result.model(x))
    assert meta["summary"]["val_accuracy"] == pytest.approx(result.val_accuracy)
    assert load_backbone(str(result.checkpoint), h=4).h == 4

    with pytest.raises(BackboneError, match="h=4"):
        load_backbone(result.checkpoint, h=16)
    with pytest.raises(BackboneError, match="not found"):
        load_backbone(tmp_path / "nope.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(BackboneError, match=r"junk\.pt"):
        load_backbone(tmp_path / "junk.pt")
    with pytest.raises(BackboneError, match="default backbone"):
        load_backbone("default", h=7)  # no default of that width is ever shipped


@pytest.mark.slow
def test_short_training_run_learns_held_back_synthetic_triplets(tmp_path: Path) -> None:
    """The paper's objective and negatives (Gaussian-noise patches + cross-class) on five synthetic surface
    families: the loss falls and held-back triplets are ordered correctly."""
    config = TrainConfig(
        h=8,
        rounds=3,
        epochs=2,
        triplets_per_round=4096,
        lr=3e-3,  # larger than the paper's 1e-4 so that a few seconds suffice
        seed=0,
        val_triplets=1024,
        val_fraction=0.34,
        triplets=TripletConfig(scales=(128, 64), p_noise=0.5, noise_size_px=(8, 16), noise_sigma=(0.3, 0.6)),
    )
    result = train(config, surface_classes(5, 6, 128), tmp_path, progress=False)
    losses = [r.train_loss for r in result.history]
    assert result.val_held_back
    assert losses[-1] < 0.5 * losses[0]
    assert result.val_accuracy > 0.95, result.summary()
    assert set(result.history[-1].val_accuracy_by_kind) == {"cross_class", "noise"}

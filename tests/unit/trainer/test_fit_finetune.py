"""``trainer fit --finetune-steps``: a copy of the backbone tuned on the product's own good images, with
synthetic local defects as negatives, before the prototype is built."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from fit_support import synthetic_product, tiny_backbone

from trainer.evaluate import evaluate_bundle
from trainer.finetune import square_tiles
from trainer.fit import FitOptions, backbone_sha256, fit_product


@pytest.fixture(scope="module")
def product(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthetic_product(tmp_path_factory.mktemp("synth") / "fractal", family="fractal")


def test_finetuning_makes_the_products_defects_stand_out(product: Path, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    backbone = tiny_backbone()
    before = backbone_sha256(backbone)
    plain = fit_product(product / "train" / "good", "plain", tmp_path / "p", backbone, FitOptions(threads=1))
    tuned = fit_product(product / "train" / "good", "tuned", tmp_path / "p", backbone,
                        FitOptions(threads=1, finetune_steps=80))
    assert backbone_sha256(backbone) == before  # the caller's network is not touched
    notes = tuned.manifest.provenance.notes
    assert notes["finetune_steps"] == "80" and "validation triplet loss" in notes["finetune"]
    assert tuned.manifest.provenance.backbone_sha256 != plain.manifest.provenance.backbone_sha256
    assert "fine-tuned 80 steps" in tuned.manifest.provenance.backbone
    # the tuned network has seen every prototype image: its threshold comes from held-out ones
    assert notes["split"].startswith("holdout: 24 prototype / 6 calibration")
    # the held-out triplet loss fell, and the product's real (synthetic) defects score higher than goods
    losses = notes["finetune"].split("validation triplet loss ")[1].split(",")[0]
    loss_before, loss_after = (float(v) for v in losses.split(" -> "))
    assert loss_after < loss_before
    auroc_plain = evaluate_bundle(plain.path, product, tmp_path / "r1", threads=1)["image_auroc"]
    auroc_tuned = evaluate_bundle(tuned.path, product, tmp_path / "r2", threads=1)["image_auroc"]
    assert auroc_tuned > auroc_plain


def test_square_tiles_cover_the_image() -> None:
    image = np.arange(100 * 40, dtype=np.uint32).reshape(100, 40).astype(np.uint8)
    tiles = square_tiles(image)
    assert [t.shape for t in tiles] == [(40, 40)] * 3
    assert np.array_equal(tiles[-1], image[60:100])
    assert [t.shape for t in square_tiles(image.T.copy())] == [(40, 40)] * 3
    assert len(square_tiles(np.zeros((32, 32), np.uint8))) == 1


def test_a_stacked_backbone_is_not_fine_tuned_as_one_network(product: Path, tmp_path: Path) -> None:
    """Tuning a stack would train its untrained member too (and the line bank has nothing to tune), on a
    distance the head does not use: refused by name, before any image is read for the prototype, and no
    bundle is written."""
    from trainer.fit import FitError
    from trainer.linebank import LineBank
    from trainer.model import Backbone, FeatureNet

    pair = FeatureNet.stack([tiny_backbone(), tiny_backbone()])
    with pytest.raises(FitError, match=r"2 members \(2 network\(s\)\): fine-tune with --backbone default-tr"):
        fit_product(product / "train" / "good", "p", tmp_path / "p", pair,
                    FitOptions(threads=1, finetune_steps=5))
    with pytest.raises(FitError, match=r"2 members \(1 network\(s\) and the line bank\)"):
        fit_product(product / "train" / "good", "p", tmp_path / "p", Backbone(tiny_backbone(), LineBank()),
                    FitOptions(threads=1, finetune_steps=5))
    assert not (tmp_path / "p" / "p").exists()

"""Backbone names: the shipped default pair, its members, checkpoint paths and '+' stacks."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from trainer.backbone import (
    BackboneError,
    load_backbone,
    read_backbone,
    untrained_backbone_path,
    untrained_checkpoint,
)
from trainer.model import FeatureNet
from trainer.train import save_checkpoint


def _checkpoint(path: Path, h: int, seed: int) -> FeatureNet:
    torch.manual_seed(seed)
    net = FeatureNet(h).eval()
    save_checkpoint(path, {"state_dict": net.state_dict(), "h": h, "provenance": {"seed": seed}})
    return net


def test_default_is_the_trained_and_the_untrained_network_stacked() -> None:
    pair, meta = read_backbone("default")
    trained, untrained = load_backbone("default-trained"), load_backbone("default-untrained")
    assert (pair.h, pair.members, pair.feature_dim) == (16, 2, 32)
    assert meta["path"].endswith("default_h16.pt+" + str(untrained_backbone_path(16)))
    assert meta["members"][1]["provenance"]["untrained"] is True
    x = torch.rand(1, 1, 40, 56)
    with torch.no_grad():
        torch.testing.assert_close(pair(x), torch.cat([trained(x), untrained(x)], 1), atol=1e-4, rtol=1e-4)
    # the shipped untrained weights are exactly what untrained_checkpoint draws (seed 0)
    fresh = untrained_checkpoint(16)["state_dict"]
    for name, tensor in untrained.state_dict().items():
        torch.testing.assert_close(tensor, fresh[name], atol=0.0, rtol=0.0)
    assert load_backbone("default", h=32).feature_dim == 64


def test_checkpoints_stack_with_plus(tmp_path: Path) -> None:
    a = _checkpoint(tmp_path / "a.pt", 16, 1)
    b = _checkpoint(tmp_path / "b.pt", 16, 2)
    net, meta = read_backbone(f"{tmp_path / 'a.pt'}+{tmp_path / 'b.pt'}+default-untrained", h=None)
    assert net.members == 3 and [m["provenance"].get("seed") for m in meta["members"]][:2] == [1, 2]
    assert meta["path"].count("+") == 2
    ab = load_backbone(f"{tmp_path / 'a.pt'}+{tmp_path / 'b.pt'}")
    x = torch.rand(2, 1, 36, 36)
    with torch.no_grad():
        torch.testing.assert_close(ab(x), torch.cat([a(x), b(x)], 1), atol=1e-4, rtol=1e-4)
    _checkpoint(tmp_path / "wide.pt", 8, 3)
    with pytest.raises(BackboneError, match="one width"):
        load_backbone(f"{tmp_path / 'a.pt'}+{tmp_path / 'wide.pt'}")
    with pytest.raises(BackboneError, match="empty name"):
        load_backbone(f"{tmp_path / 'a.pt'}+")
    with pytest.raises(BackboneError, match="not found"):
        load_backbone(f"{tmp_path / 'a.pt'}+{tmp_path / 'missing.pt'}")
    with pytest.raises(BackboneError, match="default backbone"):
        load_backbone("default", h=7)

"""Backbone names: the shipped default (two networks, the line bank, the whitened and the context member), its
members, checkpoint paths and '+' stacks."""

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
from trainer.fit import backbone_sha256
from trainer.linebank import LineBank
from trainer.model import FeatureNet
from trainer.train import save_checkpoint

UNTRAINED_H16_SHA256 = "3da50eaf5852307fae59dd314705bca55a674924bfc2ff0740878305e03172fc"


def _checkpoint(path: Path, h: int, seed: int) -> FeatureNet:
    torch.manual_seed(seed)
    net = FeatureNet(h).eval()
    save_checkpoint(path, {"state_dict": net.state_dict(), "h": h, "provenance": {"seed": seed}})
    return net


def test_default_is_the_trained_and_the_untrained_network_stacked_with_the_line_bank_and_context() -> None:
    default, meta = read_backbone("default")
    trained, untrained = load_backbone("default-trained"), load_backbone("default-untrained")
    assert (default.h, default.members, default.feature_dim) == (16, 2, 39)
    assert default.member_dims == (16, 16, 4, 1, 1, 1)
    assert meta["path"].endswith("default_h16.pt+" + str(untrained_backbone_path(16))
                                 + "+lines+whitened+extremes+context")
    assert meta["members"][1]["provenance"]["untrained"] is True
    assert meta["line_bank"] == LineBank().describe()
    # the per-product members come unfitted: trainer fit fits them on the product's good images
    assert default.context is not None and not default.context.fitted and meta["context"]["fitted"] is False
    assert default.whitened is not None and meta["whitened"]["fitted"] is False
    assert default.extremes is not None and meta["extremes"]["fitted"] is False
    assert default.unfitted == ["whitened", "extremes", "context"]
    assert default.fixed_members == (3, 4, 5)
    x = torch.rand(1, 1, 80, 56)
    with torch.no_grad():
        torch.testing.assert_close(
            default(x), torch.cat([trained(x), untrained(x), LineBank()(x), default.whitened(x),
                                   default.extremes(x), default.context(x)], 1),
            atol=1e-4, rtol=1e-4)
    assert load_backbone("default-trained+context").member_dims == (16, 1)
    assert load_backbone("default-trained+whitened").fixed_members == (1,)
    assert load_backbone("default-trained+lines+whitened").member_dims == (16, 4, 1)
    assert load_backbone("default-trained+lines+context").member_dims == (16, 4, 1)
    assert load_backbone("default-trained+whitened+extremes").fixed_members == (1, 2)
    pair = load_backbone("default-trained+default-untrained")  # the default without the bank
    assert pair.lines is None and pair.member_dims == (16, 16)
    assert load_backbone("default-trained+lines").member_dims == (16, 4)
    # the shipped untrained weights are the ones the accuracy figures were measured with (a file, so a PyTorch
    # with another initialisation cannot change them), and drawing them again leaves torch's random state be
    assert backbone_sha256(untrained) == UNTRAINED_H16_SHA256
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    untrained_checkpoint(16)
    torch.testing.assert_close(torch.rand(3), expected_next)
    assert load_backbone("default", h=32).feature_dim == 71


def test_members_beside_the_networks_come_after_them_once_each_in_order() -> None:
    order = (r"beside the networks \(lines, whitened, extremes, context\) come after them, each once, in "
             "that order")
    for alone in ("lines", "context", "whitened", "extremes", "lines+context"):
        with pytest.raises(BackboneError, match="not a backbone on its own"):
            load_backbone(alone)
    for wrong in ("default-trained+context+lines", "default-trained+context+whitened",
                  "lines+default-trained", "default-trained+lines+default-untrained",
                  "default-trained+whitened+whitened", "default-trained+extremes+whitened",
                  "default-trained+context+extremes"):
        with pytest.raises(BackboneError, match=order):
            load_backbone(wrong)
    for twice in ("default+context", "default+lines", "default+whitened", "default+extremes"):
        with pytest.raises(BackboneError, match=order + r" \('default' already includes them\)"):
            load_backbone(twice)


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
    in_stack = r"missing\.pt: backbone checkpoint not found \(.*\) \(in the stack .*a\.pt\+"
    with pytest.raises(BackboneError, match=in_stack):
        load_backbone(f"{tmp_path / 'a.pt'}+{tmp_path / 'missing.pt'}")
    with pytest.raises(BackboneError, match="at most 16"):
        load_backbone("+".join([str(tmp_path / "a.pt")] * 17))


def test_unusable_backbone_files_are_named_with_what_was_expected(tmp_path: Path) -> None:
    names = (r"default, default-trained, default-untrained, "
             r"A\+B\[\+lines\]\[\+whitened\]\[\+extremes\]\[\+context\]\)")
    not_found = r"bogus: backbone checkpoint not found \(a checkpoint file .*"
    with pytest.raises(BackboneError, match=not_found + names):
        load_backbone("bogus")
    with pytest.raises(BackboneError, match="a directory, not a backbone checkpoint file"):
        load_backbone(tmp_path)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x00\x01 not a checkpoint" * 10)
    unreadable = r"junk\.pt: not a readable backbone checkpoint \(a file written by trainer pretrain"
    with pytest.raises(BackboneError, match=unreadable + r" is expected; \w+Error: "):
        load_backbone(junk)
    net = FeatureNet(16)
    for bad in ("abc", 0, 2.5):
        save_checkpoint(tmp_path / "bad_h.pt", {"state_dict": net.state_dict(), "h": bad, "provenance": {}})
        with pytest.raises(BackboneError, match=r"bad_h\.pt: the checkpoint's feature width h=.* is not a "):
            load_backbone(tmp_path / "bad_h.pt")


def test_names_and_paths_with_a_plus_in_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A '+' splits a stack only where the whole name is not a file: checkpoints and installations under
    directories like c++/ keep working."""
    import trainer.backbone as backbones

    plus = tmp_path / "c++" / "tools"
    plus.mkdir(parents=True)
    single = _checkpoint(plus / "x.pt", 16, 4)
    x = torch.rand(1, 1, 36, 36)
    with torch.no_grad():
        torch.testing.assert_close(load_backbone(plus / "x.pt")(x), single(x))
    monkeypatch.setattr(backbones, "BACKBONE_DIR", plus)
    _checkpoint(plus / "default_h16.pt", 16, 5)
    _checkpoint(plus / "untrained_h16.pt", 16, 6)
    assert load_backbone("default").members == 2
    (plus / "untrained_h16.pt").unlink()
    with pytest.raises(BackboneError, match=r"write_untrained_backbone .* or fit with --backbone default-tr"):
        load_backbone("default")
    with pytest.raises(BackboneError, match="default backbone"):
        load_backbone("default", h=7)

"""The line bank (trainer/linebank.py): a fixed member of the default backbone that sees long thin lines."""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from trainer.linebank import ORIENTATIONS, LineBank, line_kernels
from trainer.model import Backbone, FeatureNet, feature_map_size


def surface(height: int = 160, width: int = 160, seed: int = 0) -> np.ndarray:
    """A mildly noisy flat surface in [-1, 1]."""
    return (0.02 * np.random.default_rng(seed).normal(size=(height, width))).astype(np.float32)


def with_line(img: np.ndarray, angle_deg: float, contrast: float, length: int, width: int = 2,
              shift: float = 0.0) -> np.ndarray:
    """``img`` with a straight, anti-aliased line through its centre moved ``shift`` px along the line's
    normal (drawn 8× larger and area-averaged, so it is equally wide at every angle): ``contrast`` < 0 is a
    dark line."""
    ss = 8
    big = np.zeros((img.shape[0] * ss, img.shape[1] * ss), np.uint8)
    normal = np.array([-math.sin(math.radians(angle_deg)), math.cos(math.radians(angle_deg))])
    c = (np.array(img.shape[::-1]) / 2 + shift * normal) * ss
    d = np.array([math.cos(math.radians(angle_deg)), math.sin(math.radians(angle_deg))]) * length * ss / 2
    cv2.line(big, tuple(int(v) for v in c - d), tuple(int(v) for v in c + d), 255, width * ss)
    mask = cv2.resize(big, img.shape[::-1], interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0
    return (img + contrast * mask).astype(np.float32)


def run(bank: LineBank, img: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return bank(torch.from_numpy(img)[None, None]).numpy()[0]


def at_centre(channel: np.ndarray) -> float:
    """The strongest answer (by magnitude, signed) in the 3×3 cells around the image centre (a 2-px line
    falls between cell centres at some angles)."""
    r, c = channel.shape[0] // 2, channel.shape[1] // 2
    window = channel[r - 1 : r + 2, c - 1 : c + 2]
    return float(window.flat[np.abs(window).argmax()])


@pytest.mark.parametrize(("height", "width"),
                         [(32, 32), (40, 90), (64, 64), (160, 96), (257, 131), (406, 1024)])
def test_the_bank_answers_on_the_networks_grid(height: int, width: int) -> None:
    """Its map must line up cell for cell with FeatureNet's, whatever the input size (odd sides too)."""
    bank = LineBank()
    out = run(bank, surface(height, width))
    net = FeatureNet(4)(torch.zeros(1, 1, height, width))
    assert out.shape == (bank.feature_dim, feature_map_size(height), feature_map_size(width))
    assert out.shape[1:] == tuple(net.shape[2:])


def test_kernels_are_zero_mean_so_a_flat_surface_gives_nothing() -> None:
    for kernels in (line_kernels(0.75, 3.0), line_kernels(1.0, 8.0)):
        assert kernels.shape[0] == ORIENTATIONS
        assert abs(float(kernels.sum(dim=(1, 2, 3)).abs().max())) < 1e-6
    flat = np.full((96, 96), 0.3, np.float32)
    assert float(np.abs(run(LineBank(), flat)).max()) < 1e-5


@pytest.mark.parametrize("angle", [0.0, 22.5, 37.0, 90.0, 135.0])
def test_a_faint_dark_line_stands_out_at_any_angle(angle: float) -> None:
    """A dark line of 0.1 contrast (noise σ 0.02 per pixel) lights the dark-line channels at its cells above
    every cell of the plain surface, wherever it points; the bright-line channels answer less."""
    bank = LineBank()
    base = run(bank, surface())
    lined = run(bank, with_line(surface(), angle, -0.1, 120))
    for scale in range(len(bank.scales)):
        dark, bright = 2 * scale, 2 * scale + 1
        assert at_centre(lined[dark]) > 2 * np.abs(base[dark]).max()
        assert abs(at_centre(lined[bright])) < 0.9 * at_centre(lined[dark])  # only its flanks answer


def test_responses_turn_little_with_the_line() -> None:
    """The maximum over 16 orientations makes the long filters' answer nearly rotation-invariant (with 8, a
    line midway between two of them got a third of the best answer): a prototype of good parts then learns
    how line-like a surface is, not where its streaks point."""
    bank = LineBank()
    peaks = []
    for angle in np.arange(0.0, 180.0, 7.5):
        # a thin line answers differently as it falls on one pooled pixel or straddles two: both phases
        out = [run(bank, with_line(surface(), float(angle), -0.1, 120, shift=s))[2] for s in (0.0, 1.0)]
        peaks.append(np.mean([at_centre(o) for o in out]))  # the long scale's dark-line channel
    assert min(peaks) > 0.55 * max(peaks)


def test_bright_lines_go_to_their_own_channels() -> None:
    bank = LineBank()
    out = run(bank, with_line(surface(), 60.0, +0.1, 120))
    for scale in range(len(bank.scales)):
        assert at_centre(out[2 * scale + 1]) < -2 * abs(at_centre(out[2 * scale]))  # the dark ones: flanks


def test_the_long_scale_integrates_a_line_over_its_length() -> None:
    """Why the bank exists: the long filters' answer grows with a faint line's length far beyond the
    networks' 32-px field, so a long faint crack scores above a short mark of the same contrast."""
    bank = LineBank()
    short = run(bank, with_line(surface(), 0.0, -0.06, 12))
    long = run(bank, with_line(surface(), 0.0, -0.06, 120))
    assert at_centre(long[2]) > 2.5 * at_centre(short[2])


def test_a_line_lands_in_the_cell_whose_field_it_crosses() -> None:
    """Cell (i, j) is centred on input pixel 2i + 15.5, as FeatureNet's: a horizontal 2-px line on rows 81
    and 82 (centre 81.5) peaks at cell row 33 in both scales, and one on rows 83 and 84 at row 34."""
    for top, cell in ((81, 33), (83, 34)):
        img = surface(160, 160)
        img[top : top + 2, 20:140] -= 0.1
        out = run(LineBank(), img)
        for channel in (0, 2):
            assert int(np.argmax(out[channel][:, out.shape[2] // 2])) == cell


def test_a_backbone_with_the_bank_puts_its_channels_last() -> None:
    torch.manual_seed(0)
    nets = FeatureNet.stack([FeatureNet(4), FeatureNet(4)])
    backbone = Backbone(nets, LineBank()).eval()
    x = torch.from_numpy(with_line(surface(96, 128), 30.0, -0.1, 60))[None, None]
    with torch.no_grad():
        out = backbone(x)
        torch.testing.assert_close(out[:, :8], nets(x))
        torch.testing.assert_close(out[:, 8:], LineBank()(x))
    assert backbone.member_dims == (4, 4, 4) and backbone.feature_dim == 12 and backbone.members == 2
    assert Backbone.of(nets).member_dims == (4, 4) and Backbone.of(backbone) is backbone


def test_bad_bank_descriptions_are_refused() -> None:
    with pytest.raises(ValueError, match="at least one scale"):
        LineBank(scales=())
    with pytest.raises(ValueError, match="elongation"):
        LineBank(scales=((1.0, 0.5),))
    with pytest.raises(ValueError, match="orientations"):
        LineBank(orientations=0)


def test_the_manifest_describes_the_bank_and_export_refuses_another() -> None:
    """The bundle names the bank it was fitted with (scales, orientations, its channels last); a scoring
    section for another bank, or for none, is not exported with this backbone."""
    from pydantic import ValidationError

    from linewatch.bundle.manifest import LineBankSpec
    from trainer.export import export_for_scoring
    from trainer.fit import scoring_spec

    torch.manual_seed(0)
    backbone = Backbone(FeatureNet.stack([FeatureNet(4), FeatureNet(4)]), LineBank())
    spec = backbone.line_bank
    assert spec is not None and spec.channels == 4 and spec.scales == LineBank().scales
    scoring = scoring_spec(12, 96, 96, prototype_mode="clusters", standardised=True, clusters=4, members=2,
                           line_bank=spec)
    assert scoring.member_dims == (4, 4, 4) and scoring.network_dim == 8
    assert scoring.features_label == "12 features, 2 members of 4 and 4 line-filter channels (maps averaged)"
    assert export_for_scoring(backbone, scoring, 96, 96)[:4]  # an ONNX model
    shorter = LineBankSpec(scales=((1.5, 4.0), (2.0, 6.0)), orientations=8)
    other = scoring.model_copy(update={"line_bank": shorter})
    with pytest.raises(ValueError, match="line bank"):
        export_for_scoring(backbone, other, 96, 96)
    with pytest.raises(ValueError, match="members of 4\\+4 features"):
        export_for_scoring(backbone, scoring.model_copy(update={"line_bank": None, "feature_dim": 8}), 96, 96)
    with pytest.raises(ValidationError, match=r"greater than or equal to 1"):
        LineBankSpec(scales=((1.0, 0.5),), orientations=8)
    with pytest.raises(ValidationError, match="do not split"):
        scoring_spec(13, 96, 96, members=2, line_bank=spec)  # 9 network channels for 2 members


def test_networks_without_the_bank_export_the_graph_they_always_had() -> None:
    """Wrapping in a Backbone must not rename weights or change the head's ops: bundles refitted on the same
    weights keep one backbone_id (one compiled model for several products)."""
    import onnx

    from trainer.export import export_onnx

    torch.manual_seed(0)
    single, pair = FeatureNet(4), FeatureNet.stack([FeatureNet(4), FeatureNet(4)])
    for net in (single, pair):
        bare = export_onnx(net, 64, 64, "l2", 1, clusters=4)
        assert export_onnx(Backbone(net), 64, 64, "l2", 1, clusters=4) == bare
        graph = onnx.load_from_string(bare).graph
        assert not any(i.name.startswith("backbone.nets") for i in graph.initializer)
        assert "Split" not in {n.op_type for n in graph.node}  # equal members are sliced, as before


@pytest.mark.parametrize("prototype", ["clusters", "global"])
def test_a_fit_puts_every_member_on_the_scale_of_its_own_good_parts(tmp_path: Path, prototype: str) -> None:
    """With a holdout the levels come from the calibration images scored by the final prototype, member by
    member: scored again, each member's median over those images is 1, so the line bank and each network
    count alike in the mean (unlevelled, the bank's 4 channels give distances about half a network's)."""
    from fit_support import synthetic_product, tiny_backbone

    from linewatch.bundle.registry import load_bundle
    from linewatch.inference.preprocessing import preprocess
    from trainer.data.images import list_images, read_image
    from trainer.export import export_for_scoring
    from trainer.fit import FitOptions, fit_product, split_images
    from trainer.scorer import OnnxruntimeScorer

    product = synthetic_product(tmp_path / "stripes", n_train=20)
    backbone = Backbone(FeatureNet.stack([tiny_backbone(), tiny_backbone()]), LineBank())
    opts = FitOptions(prototype=prototype, clusters=16, calibration="holdout", calibration_fraction=0.4,
                      threads=1)  # type: ignore[arg-type]
    result = fit_product(product / "train" / "good", "p", tmp_path / "out", backbone, opts)
    bundle = load_bundle(result.path)
    levels = bundle.manifest.provenance.notes["member_levels"]
    assert len(levels.split(" (")[0].split(", ")) == 3 and "did not see" in levels
    _, cal = split_images(list_images(product / "train" / "good"), 0.4, opts.seed)
    m = bundle.manifest
    images = np.stack([preprocess(read_image(p), m.input, m.preprocessing) for p in cal])
    scorer = OnnxruntimeScorer(export_for_scoring(backbone, m.scoring, m.input.height, m.input.width,
                                                  member_scores=True),
                               bundle.prototype_mean, bundle.prototype_scale, threads=1)
    np.testing.assert_allclose(np.median(scorer.member_scores(images), axis=0), 1.0, rtol=1e-4)


def test_a_manifest_whose_bank_leaves_no_network_channels_says_so() -> None:
    from pydantic import ValidationError

    from trainer.fit import scoring_spec

    bank = line_bank_spec_of(LineBank())
    with pytest.raises(ValidationError, match="feature_dim 4 leaves no network channels beside the line"):
        scoring_spec(4, 96, 96, line_bank=bank)


def line_bank_spec_of(bank: LineBank):  # type: ignore[no-untyped-def]
    return Backbone(FeatureNet(4), bank).line_bank

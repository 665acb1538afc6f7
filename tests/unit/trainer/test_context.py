"""The context member (trainer/context.py): a prototype that depends on a place's surroundings, fitted per
product on good images, exported inside model.onnx."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from trainer.context import ContextMember, collect_samples, ring_offsets, train_member
from trainer.export import export_onnx
from trainer.model import Backbone, FeatureNet, feature_map_size

STEPS = 150  # enough for these small textures; the product trains 600


def striped(rng: np.random.Generator, size: int = 112, stain: bool = False) -> np.ndarray:
    """Stripes 12 px apart at a random phase and angle, with fine noise: every dark place of this texture is
    predicted by its surroundings. ``stain``: a disc of radius 4 px at the centre, darker by a third of the
    stripes' swing: no darker than the stripes' own dark bands, only not where they put dark."""
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    angle, phase = rng.uniform(0, np.pi), rng.uniform(0, 2 * np.pi)
    u = xx * np.cos(angle) + yy * np.sin(angle)
    img = 0.4 * np.sin(2 * np.pi * u / 12 + phase) + rng.normal(0.0, 0.05, (size, size))
    if stain:
        img[(yy - size // 2) ** 2 + (xx - size // 2) ** 2 <= 16] -= 0.25
    return img.astype(np.float32)


def fitted(images: list[np.ndarray], steps: int = STEPS, seed: int = 0, radii: tuple[float, ...] = (2.0, 4.0)
           ) -> ContextMember:
    """A member fitted on ``images``. The default leaves out the product's 8-px radius: a dozen 112-px images
    hold too few independent 8-px discs to learn what predicts them (it learns the training images)."""
    batch = np.stack(images)[:, None]
    samples = collect_samples(ContextMember(radii), [batch], len(images), seed=seed)
    return train_member(samples, list(range(len(images))), radii, seed=seed, steps=steps)


def run(member: ContextMember, img: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return member(torch.from_numpy(img[None, None])).numpy()[0, 0]


@pytest.fixture(scope="module")
def member() -> ContextMember:
    rng = np.random.default_rng(0)
    return fitted([striped(rng) for _ in range(12)])


def test_a_spot_no_darker_than_the_textures_own_dark_bands_stands_out(member: ContextMember) -> None:
    """The point of the member: a global prototype knows "this dark" from the stripes' own bands; the member
    asks whether the surroundings predict dark here."""
    rng = np.random.default_rng(1)
    good = [run(member, striped(rng)).max() for _ in range(6)]
    stained = [run(member, striped(rng, stain=True)) for _ in range(6)]
    assert min(m.max() for m in stained) > 2.0 * max(good)
    # and the map peaks on the spot: cell (i, j) is centred on input pixel 2i + 15.5, the spot's radius is
    # 4 px and the larger disc's blur σ 4 px more
    for m in stained:
        i, j = np.unravel_index(np.argmax(m), m.shape)
        assert np.hypot(2 * i + 15.5 - 112 // 2, 2 * j + 15.5 - 112 // 2) <= 8.0


@pytest.mark.parametrize(("height", "width"), [(112, 112), (96, 160), (40, 34)])
def test_the_member_answers_on_the_networks_grid_at_any_size(member: ContextMember, height: int, width: int
                                                            ) -> None:
    """The smallest inputs (below the pad) repeat their edge instead of reflecting, and still give one value
    per FeatureNet cell."""
    out = run(member, np.zeros((height, width), np.float32) + np.float32(0.1))
    assert out.shape == (feature_map_size(height), feature_map_size(width))
    assert np.all(np.isfinite(out))


def test_a_bright_dot_lands_in_the_cell_it_is_centred_on() -> None:
    """The disc brightness at cell (i, j) is the σ-r blur at input pixel (2i + 15.5, 2j + 15.5)."""
    for top, cell in ((47, 16), (49, 17)):
        img = np.zeros((112, 112), np.float32)
        img[top : top + 2, 55:57] = 1.0
        centre, _ = ContextMember().descriptors(torch.from_numpy(img[None, None]))[0]
        assert int(np.argmax(centre[0, 0, :, 20].numpy())) == cell


def test_rings_are_two_circles_of_the_given_angles_in_cells() -> None:
    offsets = ring_offsets(4.0, 12)
    assert len(offsets) == 24 and offsets[0] == (0, 5) and offsets[12] == (0, 9)  # 10 and 18 px, in cells
    assert ContextMember(angles=12).context_channels == 49


def test_training_is_seeded_and_leaves_the_callers_torch_state_alone() -> None:
    rng = np.random.default_rng(2)
    images = [striped(rng, 80) for _ in range(4)]
    torch.manual_seed(5)
    expected = torch.rand(2)
    threads = torch.get_num_threads()
    torch.manual_seed(5)
    a = fitted(images, steps=20, seed=3)
    assert torch.get_num_threads() == threads
    torch.testing.assert_close(torch.rand(2), expected)
    b = fitted(images, steps=20, seed=3)
    probe = striped(np.random.default_rng(9), 80)
    np.testing.assert_array_equal(run(a, probe), run(b, probe))
    assert a.fitted and not ContextMember().fitted


def test_bad_member_shapes_are_refused() -> None:
    with pytest.raises(ValueError, match="radii must be positive"):
        ContextMember(radii=())
    with pytest.raises(ValueError, match="need a larger pad"):
        ContextMember(radii=(16.0,))
    with pytest.raises(ValueError, match="angles and hidden must be >= 1"):
        ContextMember(angles=0)
    with pytest.raises(ValueError, match="at least one good image"):
        train_member([], [])


def test_an_unfitted_member_is_never_exported(member: ContextMember) -> None:
    torch.manual_seed(0)
    net = FeatureNet(4)
    with pytest.raises(ValueError, match="context member is not fitted"):
        export_onnx(Backbone(net, None, ContextMember()), 96, 96, "l2", 1, clusters=2)
    # fitted, the exported graph gives what PyTorch gives
    from fit_support import assert_exports_as_two_members

    x = np.random.default_rng(3).normal(0, 0.3, (2, 1, 96, 128)).astype(np.float32)
    assert_exports_as_two_members(Backbone(net, None, member), x)


def test_a_fit_refuses_a_context_member_without_training_steps(tmp_path: Path) -> None:
    from fit_support import synthetic_product

    from trainer.fit import FitError, FitOptions, fit_product

    product = synthetic_product(tmp_path / "p", n_train=4, n_test_good=1, n_test_defect=1)
    with pytest.raises(FitError, match="at least 1 training step, got 0"):
        fit_product(product / "train" / "good", "p", tmp_path / "out", "default", FitOptions(context_steps=0))

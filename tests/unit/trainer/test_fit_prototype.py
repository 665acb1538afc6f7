import numpy as np
import pytest
import torch

from trainer.model import nearest_centre_distance
from trainer.prototype import PrototypeAccumulator, member_clusters


def _features(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    # offset far from zero: naive sum-of-squares in float32 would lose the spread here
    return (rng.normal(size=(23, 4, 5, 6)) * rng.uniform(0.1, 2.0, size=(1, 4, 5, 6)) + 1000.0).astype(
        np.float32
    )


@pytest.mark.parametrize("batches", [[23], [1] * 23, [5, 7, 11]])
def test_streamed_spatial_prototype_equals_direct_statistics(batches: list[int]) -> None:
    f = _features()
    acc = PrototypeAccumulator("spatial")
    start = 0
    for n in batches:
        acc.add(f[start : start + n])
        start += n
    proto = acc.finish(standardise=True, scale_floor=0.0)
    f64 = f.astype(np.float64)
    np.testing.assert_allclose(proto.mean[0], f64.mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(proto.scale[0], f64.std(axis=0), rtol=1e-4)
    assert proto.mean.shape == proto.scale.shape == (1, 4, 5, 6) and proto.mean.dtype == np.float32
    assert proto.n_images == 23


@pytest.mark.parametrize("mode", ["spatial", "global", "clusters"])
def test_merged_fold_accumulators_equal_one_stream_of_their_images(mode: str) -> None:
    f = _features(2)
    folds = [f[0:8], f[8:15], f[15:23]]
    parts = []
    for i, fold in enumerate(folds):
        acc = PrototypeAccumulator(mode, clusters=3, seed=i)  # type: ignore[arg-type]
        acc.add(fold)
        parts.append(acc)
    direct = PrototypeAccumulator(mode, clusters=3)  # type: ignore[arg-type]
    direct.add(np.concatenate([folds[0], folds[2]]))
    merged = PrototypeAccumulator.merged([parts[0], parts[2]])
    a = merged.finish(standardise=True, scale_floor=0.0)
    b = direct.finish(standardise=True, scale_floor=0.0)
    assert a.n_images == 16 and a.mean.shape == b.mean.shape
    np.testing.assert_allclose(a.scale, b.scale, rtol=1e-5)
    if mode != "clusters":  # k-means sees another (seeded) sample of the same vectors
        np.testing.assert_allclose(a.mean, b.mean, rtol=1e-7)
    before = [(p.n_images, len(p._samples), p._chan_mean.copy()) for p in parts]  # type: ignore[union-attr]
    everything = PrototypeAccumulator.merged(parts)
    assert everything.n_images == 23
    if mode == "clusters":  # every part's samples, none dropped
        assert len(everything._samples) == sum(len(p._samples) for p in parts) == 23
    for p, (n, samples, chan_mean) in zip(parts, before, strict=True):  # the parts are left as they were
        assert p.n_images == n and len(p._samples) == samples
        np.testing.assert_array_equal(p._chan_mean, chan_mean)
    empty = PrototypeAccumulator(mode, clusters=3)  # type: ignore[arg-type]
    empty.add(f[:0])
    assert PrototypeAccumulator.merged([empty, parts[1]]).n_images == 7
    with pytest.raises(ValueError, match="different prototype modes"):
        other = PrototypeAccumulator("global" if mode != "global" else "spatial")
        PrototypeAccumulator.merged([parts[0], other])


def test_global_prototype_is_one_vector_broadcast_to_every_position() -> None:
    f = _features(1)
    acc = PrototypeAccumulator("global")
    acc.add(f[:10])
    acc.add(f[10:])
    proto = acc.finish(standardise=True, scale_floor=0.0)
    f64 = f.astype(np.float64).transpose(1, 0, 2, 3).reshape(4, -1)
    for c in range(4):
        assert np.all(proto.mean[0, c] == proto.mean[0, c, 0, 0])
        assert proto.mean[0, c, 0, 0] == pytest.approx(f64[c].mean(), rel=1e-7)
        assert proto.scale[0, c, 0, 0] == pytest.approx(f64[c].std(), rel=1e-5)
    unstandardised = acc.finish(standardise=False)
    assert np.all(unstandardised.scale == 1.0) and unstandardised.scale_floors == (0.0,)


def test_scale_floor_guards_dead_channels_and_constant_positions() -> None:
    f = _features(2)
    f[:, 1] = 3.0  # a dead channel: no spread at all
    f[:, 2, 0, 0] = 7.0  # one position that never varied
    for mode in ("global", "spatial"):
        acc = PrototypeAccumulator(mode)  # type: ignore[arg-type]
        acc.add(f)
        proto = acc.finish(standardise=True, scale_floor=0.1)
        assert proto.scale_floors[0] > 0
        assert np.all(proto.scale >= np.float32(proto.scale_floors[0]))
        assert np.isfinite(proto.scale).all()


def test_shape_changes_and_empty_accumulators_are_errors() -> None:
    acc = PrototypeAccumulator("spatial")
    with pytest.raises(ValueError, match="at least one"):
        acc.finish(standardise=False)
    acc.add(np.zeros((1, 4, 5, 6), np.float32))
    with pytest.raises(ValueError, match="differs"):
        acc.add(np.zeros((1, 4, 5, 7), np.float32))
    with pytest.raises(ValueError, match="global"):
        PrototypeAccumulator("local")  # type: ignore[arg-type]


def test_each_member_of_a_stack_is_clustered_on_its_own_channels() -> None:
    """Two members: member m's centres are what a one-member accumulator finds on member m's channels alone
    (with that member's seed), and its spreads and their floor are its own. Member 1 spreads 50× less than
    member 0, as an untrained network beside a trained one does: a floor from the median of both would
    replace every one of its spreads."""
    rng = np.random.default_rng(5)
    f = np.concatenate([rng.normal(size=(6, 3, 8, 8)), 5.0 + 0.02 * rng.normal(size=(6, 3, 8, 8))],
                       axis=1).astype(np.float32)
    pair = PrototypeAccumulator("clusters", clusters=4, seed=7, member_dims=(3, 3))
    pair.add(f)
    got = pair.finish(standardise=True, scale_floor=0.1)
    assert got.levels == ()  # levels are the fit's to measure, on images the prototype did not see
    np.testing.assert_allclose(got.scale.ravel(), f.astype(np.float64).std(axis=(0, 2, 3)), rtol=1e-4)
    assert got.scale_floors[1] < 0.1 * got.scale_floors[0]
    assert got.mean.shape == (4, 6, 1, 1) and got.scale.shape == (1, 6, 1, 1)
    for m, own in enumerate((slice(0, 3), slice(3, 6))):
        alone = PrototypeAccumulator("clusters", clusters=4, seed=7)
        alone.add(f[:, own])
        ref = alone.finish(standardise=True, scale_floor=0.1)
        assert ref.scale_floors[0] == pytest.approx(got.scale_floors[m])
        np.testing.assert_allclose(got.scale[:, own], ref.scale, rtol=1e-6)
        if m == 0:  # member 0 clusters with the accumulator's own seed: exactly the one-member result
            np.testing.assert_allclose(got.mean[:, own], ref.mean, rtol=1e-5, atol=1e-6)
        # every centre of a member lies where that member's features are (member 1 sits near 5)
        assert abs(float(got.mean[:, own].mean()) - float(f[:, own].mean())) < 0.5
    with pytest.raises(ValueError, match="members have 8"):
        PrototypeAccumulator("clusters", member_dims=(4, 4)).add(f)
    with pytest.raises(ValueError, match="member counts"):
        PrototypeAccumulator.merged([pair, PrototypeAccumulator("clusters", clusters=4)])


def test_a_narrower_member_gets_proportionally_fewer_centres_and_levels_divide_its_distances() -> None:
    """A 6-channel and a 2-channel member (a network beside the line bank): the narrow one gets a third of
    the 32 centres (11), repeated to fill its rows; ``levelled`` divides each member's distances by its level
    and leaves the centres where they are."""
    rng = np.random.default_rng(11)
    f = np.concatenate([3.0 * rng.normal(size=(40, 6, 16, 16)), rng.normal(size=(40, 2, 16, 16))],
                       axis=1).astype(np.float32)
    acc = PrototypeAccumulator("clusters", clusters=32, seed=0, member_dims=(6, 2))
    acc.add(f)
    proto = acc.finish(standardise=True)
    assert proto.mean.shape == (32, 8, 1, 1)
    assert len(np.unique(proto.mean[:, 6:, 0, 0], axis=0)) == 11 == member_clusters(32, (6, 2), 1)
    assert len(np.unique(proto.mean[:, :6, 0, 0], axis=0)) == 32 == member_clusters(32, (6, 2), 0)
    levelled = proto.levelled((2.0, 0.5), (6, 2))
    x, mean = torch.from_numpy(f[:3]), torch.from_numpy(proto.mean)
    for g, level in ((slice(0, 6), 2.0), (slice(6, 8), 0.5)):
        before = nearest_centre_distance(x[:, g], mean[:, g], torch.from_numpy(proto.scale[:, g]))
        after = nearest_centre_distance(x[:, g], mean[:, g], torch.from_numpy(levelled.scale[:, g]))
        torch.testing.assert_close(after, before / level, rtol=1e-4, atol=1e-6)
    assert levelled.levels == (2.0, 0.5) and np.array_equal(levelled.mean, proto.mean)
    with pytest.raises(ValueError, match="one positive level per member"):
        proto.levelled((1.0,), (6, 2))

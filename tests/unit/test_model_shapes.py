import pytest
import torch

from trainer.linebank import LineBank
from trainer.model import FeatureNet, ScoringHead, feature_map_size, nearest_centre_distance


@pytest.mark.parametrize("h", [16, 32, 5])
def test_patch_gives_one_feature_and_512_gives_241(h: int) -> None:
    net = FeatureNet(h).eval()
    with torch.no_grad():
        assert net(torch.zeros(2, 1, 32, 32)).shape == (2, h, 1, 1)
        assert net(torch.zeros(1, 1, 512, 512)).shape == (1, h, 241, 241)
    assert feature_map_size(512) == 241


def test_network_has_no_batch_norm_and_rejects_non_positive_h() -> None:
    net = FeatureNet(16)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())
    with pytest.raises(ValueError):
        FeatureNet(0)


def test_scoring_head_score_is_max_of_distance_map() -> None:
    feats = torch.zeros(1, 4, 6, 6)
    feats[0, :, 2, 3] = 1.0  # one deviating position: L2 distance 2, L1 distance 4
    mean, scale = torch.zeros(1, 4, 6, 6), torch.ones(1, 4, 6, 6)
    heatmap, score = ScoringHead("l2", 1)(feats, mean, scale)
    assert heatmap.shape == (1, 6, 6) and float(score[0]) == pytest.approx(2.0)
    _, score_l1 = ScoringHead("l1", 1)(feats, mean, scale)
    assert float(score_l1[0]) == pytest.approx(4.0)
    _, pooled = ScoringHead("l2", 2)(feats, mean, scale)
    assert float(pooled[0]) == pytest.approx(0.5)  # a single hot pixel is averaged over the 2×2 window


def test_a_stack_computes_its_members_side_by_side() -> None:
    """FeatureNet.stack: one grouped network whose channels are the members' outputs in order; split gives
    the members back; no weight connects two members."""
    torch.manual_seed(0)
    a, b = FeatureNet(6).eval(), FeatureNet(6).eval()
    pair = FeatureNet.stack([a, b])
    assert (pair.h, pair.members, pair.feature_dim) == (6, 2, 12)
    x = torch.rand(2, 1, 48, 40)
    with torch.no_grad():
        torch.testing.assert_close(pair(x), torch.cat([a(x), b(x)], dim=1), atol=1e-4, rtol=1e-4)
        for member, original in zip(pair.split(), (a, b), strict=True):
            torch.testing.assert_close(member(x), original(x))
    triple = FeatureNet.stack([pair, a])  # stacks flatten: three members, not a pair and one
    assert triple.members == 3 and triple.feature_dim == 18
    with pytest.raises(ValueError, match="one width"):
        FeatureNet.stack([a, FeatureNet(8)])
    with pytest.raises(ValueError):
        FeatureNet(6, members=0)


@pytest.mark.parametrize("mode", ["l2", "l1", "clusters"])
def test_a_members_heatmap_is_the_mean_of_each_members_own_distance(mode: str) -> None:
    torch.manual_seed(3)
    feats = torch.rand(2, 8, 5, 7)
    halves = (slice(0, 4), slice(4, 8))
    if mode == "clusters":
        mean, scale = torch.rand(4, 8, 1, 1), torch.rand(1, 8, 1, 1) + 0.5
        own = [nearest_centre_distance(feats[:, s], mean[:, s], scale[:, s]) for s in halves]
    else:
        mean, scale = torch.rand(1, 8, 5, 7), torch.rand(1, 8, 5, 7) + 0.5
        own = [ScoringHead(mode)(feats[:, s], mean[:, s], scale[:, s])[0] for s in halves]
    head = ScoringHead("l2" if mode == "clusters" else mode, clusters=mode == "clusters", member_dims=(4, 4))
    heatmap, score = head(feats, mean, scale)
    torch.testing.assert_close(heatmap, (own[0] + own[1]) / 2)
    torch.testing.assert_close(score, heatmap.amax(dim=(1, 2)))
    # the members are measured apart, not as one vector of all 8 channels
    single = ScoringHead("l2" if mode == "clusters" else mode, clusters=mode == "clusters")
    joint = single(feats, mean, scale)[0]
    assert not torch.allclose(joint, heatmap)


@pytest.mark.parametrize(("h", "members", "lines"),
                         [(16, 1, False), (16, 2, False), (8, 3, False), (16, 2, True)])
def test_bench_counts_the_flops_the_network_really_has(h: int, members: int, lines: bool) -> None:
    """`linewatch bench` derives GFLOP/frame from the manifest alone; it must agree with the weights of the
    network the bundle came from (a stack's grouped convolutions cost members × h², not (members·h)²; the
    line bank's filters run on the 2×2-pooled image)."""
    from daemon_support import make_manifest

    from linewatch.service.bench import model_gflop

    net = FeatureNet.stack([FeatureNet(h) for _ in range(members)])
    height, width = 96, 128
    manifest = make_manifest(height, width, h=h)
    bank = LineBank() if lines else None
    spec = bank.spec() if bank else None
    scoring = manifest.scoring.model_copy(update={
        "feature_dim": net.feature_dim + (bank.feature_dim if bank else 0),
        "members": members,
        "line_bank": spec,
    })
    flops, x = 0.0, torch.zeros(1, 1, height, width)
    with torch.no_grad():
        for layer in [net.stem, net.pool, *(c for b in net.blocks for c in (b.conv5, b.conv1)), net.head]:
            x = layer(x)  # the residual adds keep the shape, so the chain gives every output size
            if isinstance(layer, torch.nn.Conv2d):  # multiply-adds per output value: one output's weights
                flops += 2.0 * layer.weight[0].numel() * x.numel()
    if bank is not None:
        for kernels in bank.buffers():  # one output per cell of the grid, all orientations
            flops += 2.0 * kernels.numel() * x.shape[2] * x.shape[3]
    assert scoring.prototype_mode != "clusters"
    counted = model_gflop(manifest.model_copy(update={"scoring": scoring}))
    assert counted == pytest.approx(flops / 1e9, rel=1e-9)
    # a clusters head adds one (channels + 1) × K product per member and cell: every member, the bank too
    clustered = scoring.model_copy(update={"prototype_mode": "clusters", "clusters": 256})
    head = model_gflop(manifest.model_copy(update={"scoring": clustered})) - counted
    widths = [h] * members + ([bank.feature_dim] if bank else [])
    assert head == pytest.approx(2 * 256 * sum(w + 1 for w in widths) * x.shape[2] * x.shape[3] / 1e9)


def test_bench_counts_the_context_members_networks_and_blurs() -> None:
    """The context member's cost (trainer/context.py) is its per-radius networks on every cell plus the image
    blurs; ``linewatch bench`` counts both from the manifest's description."""
    from daemon_support import make_manifest

    from linewatch.service.bench import model_gflop
    from trainer.context import ContextMember

    member = ContextMember()
    manifest = make_manifest(96, 128, h=16)
    without = model_gflop(manifest)
    scoring = manifest.scoring.model_copy(update={"feature_dim": 17, "context": member.spec()})
    extra = model_gflop(manifest.model_copy(update={"scoring": scoring})) - without
    cells = scoring.heatmap_height * scoring.heatmap_width
    weights = sum(c.weight.numel() for mlp in member.mlps for c in mlp if isinstance(c, torch.nn.Conv2d))
    networks = 2.0 * weights * cells / 1e9
    assert networks < extra < 1.25 * networks  # the blurs are the rest: 12 % at this small size

import pytest
import torch

from trainer.model import FeatureNet, ScoringHead, feature_map_size


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

"""Score drift: good parts creeping toward the threshold turn the assessment degraded, with the figures."""

from __future__ import annotations

import numpy as np
from daemon_support import CollectingSink, make_manifest

from linewatch.bundle.manifest import BundleManifest, Calibration
from linewatch.frames import Verdict, VerdictKind
from linewatch.products.drift import DriftConfig, DriftMonitor, DriftSink


def manifest(product: str = "alpha", good_scores: dict[str, float] | None = None,
             threshold: float = 1.0) -> BundleManifest:
    m = make_manifest(threshold=threshold, product_id=product)
    cal = Calibration(method="gumbel", target_frr=0.005, n_images=40, threshold=threshold,
                      good_scores=good_scores if good_scores is not None else {"p50": 0.3, "p95": 0.5,
                                                                               "p99": 0.6})
    return m.model_copy(update={"calibration": cal, "bundle_id": f"{product}@{product[:1] * 12}"})


def verdict(seq: int, score: float, bundle: BundleManifest, kind: VerdictKind = VerdictKind.PASS) -> Verdict:
    return Verdict(seq=seq, frame_id=seq, verdict=kind, product_id=bundle.product_id,
                   bundle_id=bundle.bundle_id, score=score, threshold=bundle.threshold, location=None,
                   timestamp_ns=0, acquired_ns=0)


class Known:
    """manifest_for: the bundles the line has run."""

    def __init__(self, *manifests: BundleManifest) -> None:
        self.by_id = {m.bundle_id: m for m in manifests}

    def __call__(self, bundle_id: str) -> BundleManifest | None:
        return self.by_id.get(bundle_id)


def feed(monitor: DriftMonitor, bundle: BundleManifest, scores: np.ndarray, start: int = 0) -> int:
    for i, s in enumerate(scores):
        monitor.observe(verdict(start + i, float(s), bundle))
    return start + len(scores)


def test_good_parts_near_their_calibration_are_fine_and_creeping_ones_degrade() -> None:
    alpha = manifest()
    monitor = DriftMonitor(DriftConfig(window=200, min_samples=50), Known(alpha))
    rng = np.random.default_rng(0)
    seq = feed(monitor, alpha, rng.normal(0.3, 0.08, 200))  # like calibration: p95 ≈ 0.43
    fine = monitor.assess()
    assert not fine.degraded and fine.reason is None
    assert fine.stats is not None and fine.stats.window == 200 and fine.stats.calibration_good_p95 == 0.5
    assert 0.38 < (fine.stats.good_score_p95 or 0) < 0.5 and fine.stats.threshold == 1.0
    # The light dims: good parts score higher; p95 ≈ 0.83 uses ~66 % of the 0.5 headroom.
    seq = feed(monitor, alpha, rng.normal(0.7, 0.08, 200), seq)
    drift = monitor.assess()
    assert drift.degraded
    assert drift.reason is not None and "p95" in drift.reason and "threshold 1" in drift.reason
    assert "50% of its headroom at calibration (0.5)" in drift.reason
    # The figures move; the reason (the retained status) does not.
    seq = feed(monitor, alpha, rng.normal(0.72, 0.08, 20), seq)
    assert monitor.assess().reason == drift.reason
    assert drift.stats is not None and 0.75 < (drift.stats.margin_ratio or 0) < 0.95
    # Fails do not count (they are what the threshold is for): the window still holds the passes.
    for i in range(100):
        monitor.observe(verdict(seq + i, 5.0, alpha, VerdictKind.FAIL))
    assert monitor.assess().stats.window == 200  # type: ignore[union-attr]


def test_too_few_passes_are_not_judged_and_a_switch_starts_a_new_window() -> None:
    alpha, beta = manifest("alpha"), manifest("beta", {"p95": 0.9}, threshold=2.0)
    monitor = DriftMonitor(DriftConfig(window=100, min_samples=30), Known(alpha, beta))
    seq = feed(monitor, alpha, np.full(20, 0.95))
    early = monitor.assess()
    assert not early.degraded and early.stats is not None and early.stats.window == 20
    seq = feed(monitor, alpha, np.full(20, 0.95), seq)
    assert monitor.assess().degraded
    feed(monitor, beta, np.full(40, 1.0), seq)  # beta's own calibration: 0.9 → 1.0 of 2.0 is fine
    after = monitor.assess()
    assert not after.degraded and after.stats is not None and after.stats.window == 40
    assert after.stats.threshold == 2.0


def test_verdicts_of_an_unknown_bundle_are_not_counted() -> None:
    alpha = manifest()
    monitor = DriftMonitor(DriftConfig(min_samples=1), Known())
    feed(monitor, alpha, np.full(10, 0.99))
    assert monitor.assess().stats is None and monitor.observed == 0


def test_without_a_calibration_record_the_first_passes_are_the_reference() -> None:
    fixed = manifest(good_scores={})
    monitor = DriftMonitor(DriftConfig(window=50, min_samples=20, quantile="p50"), Known(fixed))
    seq = feed(monitor, fixed, np.full(20, 0.2))
    assert not monitor.assess().degraded
    seq = feed(monitor, fixed, np.full(50, 0.3), seq)  # 0.1 of 0.8 headroom
    assert not monitor.assess().degraded
    feed(monitor, fixed, np.full(50, 0.7), seq)  # 0.5 of 0.8 headroom: over half
    drift = monitor.assess()
    assert drift.degraded and drift.reason is not None and "first passes" in drift.reason


def test_no_headroom_at_calibration_degrades_only_at_the_threshold() -> None:
    tight = manifest(good_scores={"p99": 1.2})
    monitor = DriftMonitor(DriftConfig(window=20, min_samples=10, quantile="p99"), Known(tight))
    seq = feed(monitor, tight, np.full(20, 0.95))
    assert not monitor.assess().degraded
    feed(monitor, tight, np.full(20, 1.0), seq)  # a pass at exactly the threshold
    assert monitor.assess().degraded


def test_disabled_monitor_observes_nothing() -> None:
    alpha = manifest()
    monitor = DriftMonitor(DriftConfig(enabled=False, min_samples=1), Known(alpha))
    feed(monitor, alpha, np.full(10, 0.99))
    assert monitor.assess() == monitor.assess() and not monitor.assess().degraded and monitor.observed == 0


def test_the_sink_hands_every_verdict_on_and_feeds_the_monitor() -> None:
    alpha = manifest()
    inner = CollectingSink(heatmaps_for=("fail",))
    monitor = DriftMonitor(DriftConfig(min_samples=1), Known(alpha))
    sink = DriftSink(inner, monitor)
    for i in range(5):
        sink.publish_result(verdict(i, 0.2, alpha))
    sink.publish_heatmap(4, b"png")
    assert [v.seq for v in inner.verdicts] == list(range(5)) and inner.heatmaps == [(4, b"png")]
    assert sink.heatmap_wanted(VerdictKind.FAIL) and not sink.heatmap_wanted(VerdictKind.PASS)
    assert monitor.observed == 5

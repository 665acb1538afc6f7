"""The Pipeline with a protocol-true scripted source and a darkness 'model' backend: every frame gets
exactly one verdict, consecutive seq, in order, whatever happens on the way."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
from daemon_support import (
    CollectingSink,
    DarknessBackend,
    Disconnect,
    Gap,
    ScriptedSource,
    Timeout,
    Unreadable,
    frames_with_truth,
    make_manifest,
)

from linewatch.acquisition.reconnect import Backoff
from linewatch.bundle.manifest import Exposure
from linewatch.bundle.registry import LoadedBundle
from linewatch.errors import BundleIntegrityError, CameraNotFoundError
from linewatch.frames import GroundTruth, Verdict, VerdictKind
from linewatch.inference.backend import InferenceBackend
from linewatch.pipeline.pipeline import Pipeline, PipelineStartError
from linewatch.pipeline.stages import REASON_DROPPED, REASON_EXPOSURE, REASON_SHUTDOWN

SIZE = 64
# DarknessBackend scores = mean darkness of the darkest 32×32 window: plain frames ≈ 0.08, a 12×12
# square of value 20 inside ≈ 0.2. The threshold sits between.
THRESHOLD = 0.14


def bundle(product_id: str = "widget", backbone: str = "a" * 64, offset: float = 0.0) -> LoadedBundle:
    manifest = make_manifest(SIZE, SIZE, threshold=THRESHOLD, product_id=product_id)
    ids = {"backbone_id": backbone, "bundle_id": f"{product_id}@{backbone[:12]}"}
    manifest = manifest.model_copy(update=ids)
    sc = manifest.scoring
    shape = (1, sc.feature_dim, sc.heatmap_height, sc.heatmap_width)
    return LoadedBundle(
        path=Path("/nonexistent") / product_id,
        manifest=manifest,
        prototype_mean=np.full(shape, offset, dtype=np.float32),
        prototype_scale=np.ones(shape, dtype=np.float32),
    )


class Factory:
    """Backend factory recording every backend it made (and on which thread)."""

    def __init__(self, **kwargs: object) -> None:
        self.kwargs = kwargs
        self.made: list[DarknessBackend] = []
        self.threads: set[int] = set()

    def __call__(self, b: LoadedBundle) -> InferenceBackend:
        self.threads.add(threading.get_ident())
        backend = DarknessBackend(b.manifest, **self.kwargs)  # type: ignore[arg-type]
        self.made.append(backend)
        return backend


def run_to_end(pipeline: Pipeline, timeout_s: float = 30.0) -> None:
    pipeline.start()
    deadline = time.monotonic() + timeout_s
    while not pipeline.finished:
        assert time.monotonic() < deadline, "source not exhausted in time"
        time.sleep(0.01)
    assert pipeline.stop(drain_timeout_s=10.0)


def assert_one_verdict_each(sink: CollectingSink, first_seq: int, n: int) -> None:
    seqs = [v.seq for v in sink.verdicts]
    assert seqs == list(range(first_seq, first_seq + n))


def test_every_frame_one_verdict_in_order_with_the_product_named() -> None:
    events = frames_with_truth(120, SIZE)
    source = ScriptedSource(list(events))
    sink = CollectingSink()
    factory = Factory()
    pipeline = Pipeline(source, factory, sink, bundle=bundle(), queue_size=4, overflow="block", first_seq=0)
    run_to_end(pipeline)
    assert_one_verdict_each(sink, 0, 120)
    for verdict, (_, truth) in zip(sink.verdicts, events, strict=True):
        assert verdict.verdict is (VerdictKind.FAIL if truth.defective else VerdictKind.PASS)
        assert verdict.product_id == "widget" and verdict.bundle_id == "widget@aaaaaaaaaaaa"
        assert verdict.threshold == THRESHOLD and verdict.score is not None
        assert set(verdict.latencies_ms) == {"queue", "inference", "scoring", "total"}
        assert verdict.latencies_ms["total"] >= verdict.latencies_ms["inference"] >= 0
    # The defect sits at x 20..31, y 30..41 → its location lies on the square's neighbourhood.
    fails = [v for v in sink.verdicts if v.verdict is VerdictKind.FAIL]
    assert all(abs(v.location.x - 26) <= 12 and abs(v.location.y - 36) <= 12 for v in fails)
    # The backend was made, used and closed on the inference thread only, never on the caller's.
    backend = factory.made[0]
    assert backend.closed and backend.warmed
    assert len(backend.thread_ids) == 1 and threading.get_ident() not in backend.thread_ids
    assert factory.threads == backend.thread_ids
    # The source was opened, read and closed on one (acquisition) thread.
    assert len(source.thread_ids) == 1 and source.closes == 1
    # A heatmap for every fail, right after its result; none for passes.
    assert [seq for seq, _ in sink.heatmaps] == [v.seq for v in fails]
    for seq, png in sink.heatmaps:
        assert png[:4] == b"\x89PNG"
        i = sink.events.index(("heatmap", seq))
        assert sink.events[i - 1] == ("result", seq)
    snap = pipeline.snapshot()
    assert (snap.frames_in, snap.frames_out, snap.passed, snap.failed) == (120, 120, 80, 40)
    assert snap.latency["total"].p50_ms is not None


def test_numbering_continues_from_first_seq() -> None:
    sink = CollectingSink()
    pipeline = Pipeline(ScriptedSource(frames_with_truth(10, SIZE)), Factory(), sink, bundle=bundle(),
                        first_seq=1234)
    run_to_end(pipeline)
    assert_one_verdict_each(sink, 1234, 10)
    assert pipeline.last_seq == 1243


def test_drop_oldest_reports_every_drop_as_not_inspected() -> None:
    sink = CollectingSink(heatmaps_for=())
    # A slow model (20 ms per frame) behind a fast camera and a queue of 2: most frames are dropped.
    pipeline = Pipeline(
        ScriptedSource(frames_with_truth(60, SIZE)), Factory(delay_s=0.02), sink, bundle=bundle(),
        queue_size=2, overflow="drop_oldest",
    )
    run_to_end(pipeline)
    assert_one_verdict_each(sink, 0, 60)
    dropped = [v for v in sink.verdicts if v.reason == REASON_DROPPED]
    assert len(dropped) > 20
    assert all(v.verdict is VerdictKind.NOT_INSPECTED and v.product_id == "widget" for v in dropped)
    snap = pipeline.snapshot()
    assert snap.dropped == len(dropped) == pipeline.frames.counters().dropped
    assert snap.passed + snap.failed + snap.not_inspected == 60


def test_block_policy_loses_nothing_behind_a_slow_model() -> None:
    sink = CollectingSink(heatmaps_for=())
    pipeline = Pipeline(
        ScriptedSource(frames_with_truth(30, SIZE)), Factory(delay_s=0.01), sink, bundle=bundle(),
        queue_size=2, overflow="block",
    )
    run_to_end(pipeline)
    assert_one_verdict_each(sink, 0, 30)
    assert all(v.verdict is not VerdictKind.NOT_INSPECTED for v in sink.verdicts)
    assert pipeline.snapshot().dropped == 0


def test_a_backend_fault_costs_exactly_that_frame() -> None:
    sink = CollectingSink()
    factory = Factory(fail_on=lambda call: call == 7)  # warm-up is not a call to infer here
    pipeline = Pipeline(ScriptedSource(frames_with_truth(20, SIZE)), factory, sink, bundle=bundle())
    run_to_end(pipeline)
    assert_one_verdict_each(sink, 0, 20)
    bad = [v for v in sink.verdicts if v.verdict is VerdictKind.NOT_INSPECTED]
    assert [v.seq for v in bad] == [7]
    assert bad[0].reason is not None and "injected fault" in bad[0].reason
    assert bad[0].product_id == "widget"
    assert pipeline.snapshot().inference_failures == 1


def test_frames_outside_the_good_exposure_are_not_inspected_with_the_figures() -> None:
    """With the image mean removed, a blank frame looks like a calm good part: the bundle's exposure range
    catches black and saturated frames before they could pass; more contrast than any good part (a large
    defect, noise) is left to the score."""
    good = bundle()
    exposure = Exposure(level_min=0.3, level_max=0.85, contrast_min=0.0, contrast_max=0.25, level_margin=0.1,
                        contrast_factor=2.0, n_images=30)
    checked = LoadedBundle(path=good.path, manifest=good.manifest.model_copy(update={"exposure": exposure}),
                           prototype_mean=good.prototype_mean, prototype_scale=good.prototype_scale)
    checker = (np.indices((SIZE, SIZE)).sum(axis=0) % 2).astype(np.uint8)
    odd = {
        3: np.zeros((SIZE, SIZE), np.uint8),  # lamp off
        5: np.full((SIZE, SIZE), 255, np.uint8),  # saturated
        7: (90 + 160 * checker).astype(np.uint8),  # mean 170, contrast 80 grey levels: scored, not skipped
    }
    events: list[object] = list(frames_with_truth(10, SIZE))
    for i, image in odd.items():
        events[i] = (image, GroundTruth(defective=False))
    sink = CollectingSink()
    pipeline = Pipeline(ScriptedSource(events), Factory(), sink, bundle=checked)
    run_to_end(pipeline)
    assert_one_verdict_each(sink, 0, 10)
    skipped = {v.seq: v.reason for v in sink.verdicts if v.verdict is VerdictKind.NOT_INSPECTED}
    assert sorted(skipped) == [3, 5]
    assert all(r is not None and r.startswith(REASON_EXPOSURE) for r in skipped.values())
    assert "image mean -1.000 outside the good parts' 0.200..0.950" in str(skipped[3])
    assert all(v.score is not None for v in sink.verdicts if v.seq not in (3, 5))  # the rest were scored
    snap = pipeline.snapshot()
    assert snap.exposure_rejects == 2 and snap.not_inspected_reasons[REASON_EXPOSURE] == 2


def test_camera_gaps_unreadable_frames_and_timeouts_are_never_silent() -> None:
    img = np.full((SIZE, SIZE), 235, dtype=np.uint8)
    events = [img, img, Gap(3), img, Timeout(), Unreadable(), img, Timeout(), img]
    sink = CollectingSink()
    pipeline = Pipeline(ScriptedSource(events), Factory(), sink, bundle=bundle(), read_timeout_s=0.05)
    run_to_end(pipeline)
    v = sink.verdicts
    # frame ids: 0, 1, (2, 3, 4 lost), 5, 6 unreadable, 7, 8 → nine results.
    assert [x.frame_id for x in v] == list(range(9))
    assert_one_verdict_each(sink, 0, 9)
    kinds = [x.verdict for x in v]
    assert kinds[2:5] == [VerdictKind.NOT_INSPECTED] * 3
    assert all("frame id gap" in (x.reason or "") for x in v[2:5])
    assert kinds[6] is VerdictKind.NOT_INSPECTED and "unreadable" in (v[6].reason or "")
    assert [kinds[i] for i in (0, 1, 5, 7, 8)] == [VerdictKind.PASS] * 5
    acq = pipeline.snapshot().acquisition
    assert (acq.camera_gaps, acq.unreadable, acq.timeouts) == (3, 1, 2)


def test_disconnect_reconnects_with_backoff_and_keeps_counting() -> None:
    img = np.full((SIZE, SIZE), 235, dtype=np.uint8)
    events = [img, img, Disconnect(), img, img]
    source = ScriptedSource(events)
    sink = CollectingSink()
    pipeline = Pipeline(source, Factory(), sink, bundle=bundle(), backoff=Backoff(0.01, 0.05))
    run_to_end(pipeline)
    assert_one_verdict_each(sink, 0, 4)
    assert all(v.verdict is VerdictKind.PASS for v in sink.verdicts)
    acq = pipeline.snapshot().acquisition
    assert (acq.disconnects, acq.reconnects) == (1, 1)
    assert source.opens == 2 and source.closes == 2


def test_camera_state_says_reconnecting_while_the_device_is_away() -> None:
    img = np.full((SIZE, SIZE), 235, dtype=np.uint8)
    source = ScriptedSource([img], loop=True, interval_s=0.01, fail_open_times=1000)
    source.fail_open_times = 0
    pipeline = Pipeline(source, Factory(), CollectingSink(), bundle=bundle(), backoff=Backoff(0.02, 0.02))
    pipeline.start()
    try:
        time.sleep(0.1)
        assert pipeline.snapshot().camera_state == "streaming"
        source.fail_open_times = 10**9  # every reopen fails from now on
        source.events = [Disconnect()]
        source._pos = 0
        deadline = time.monotonic() + 5
        while pipeline.snapshot().camera_state != "reconnecting":
            assert time.monotonic() < deadline
            time.sleep(0.01)
        snap = pipeline.snapshot()
        assert "not reachable" in (snap.camera_reason or "") or "lost" in (snap.camera_reason or "")
        assert pipeline.heartbeats_fresh(1.0)  # reconnecting is alive, not stuck
    finally:
        assert pipeline.stop(drain_timeout_s=5)


def test_stop_drains_in_flight_frames() -> None:
    sink = CollectingSink(heatmaps_for=())
    img = np.full((SIZE, SIZE), 235, dtype=np.uint8)
    source = ScriptedSource([img], loop=True)
    pipeline = Pipeline(source, Factory(delay_s=0.005), sink, bundle=bundle(), queue_size=8)
    pipeline.start()
    sink.wait_for(20)
    assert pipeline.stop(drain_timeout_s=10)
    last = pipeline.last_seq
    assert last >= 19
    assert_one_verdict_each(sink, 0, last + 1)
    assert all(v.verdict is VerdictKind.PASS for v in sink.verdicts)  # drained, not abandoned
    assert all(not s.alive for s in pipeline.stages)


def test_stop_past_the_drain_time_reports_the_rest_not_inspected() -> None:
    sink = CollectingSink(heatmaps_for=())
    img = np.full((SIZE, SIZE), 235, dtype=np.uint8)
    pipeline = Pipeline(ScriptedSource([img], loop=True), Factory(delay_s=0.1), sink, bundle=bundle(),
                        queue_size=8)
    pipeline.start()
    deadline = time.monotonic() + 5
    while len(pipeline.frames) < 8:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    pipeline.stop(drain_timeout_s=0.05)
    last = pipeline.last_seq
    assert_one_verdict_each(sink, 0, last + 1)
    abandoned = [v for v in sink.verdicts if v.reason == REASON_SHUTDOWN]
    assert len(abandoned) >= 5
    assert all(v.verdict is VerdictKind.NOT_INSPECTED for v in abandoned)


def test_activate_switches_between_two_frames() -> None:
    sink = CollectingSink(heatmaps_for=())
    img = np.full((SIZE, SIZE), 235, dtype=np.uint8)
    factory = Factory()
    observed: list[Verdict] = []
    pipeline = Pipeline(ScriptedSource([img], loop=True, interval_s=0.002), factory, sink,
                        bundle=bundle("alpha", offset=0.0), observer=observed.append)
    pipeline.start()
    try:
        sink.wait_for(10)
        assert pipeline.snapshot().product_switches == 0  # the first product is not a switch
        # Same backbone: only the prototype changes (offset 1.0 raises every score by 1 → fails).
        product = pipeline.holder.activate(bundle("beta", offset=1.0)).result(5)
        assert product.product_id == "beta"
        n = len(sink.verdicts)
        sink.wait_for(n + 10)
        # Another backbone: a second backend is made, the first closed.
        pipeline.holder.activate(bundle("gamma", backbone="c" * 64)).result(5)
        n = len(sink.verdicts)
        sink.wait_for(n + 10)
        # A refitted bundle of the running product is a new bundle, not a product switch.
        pipeline.holder.activate(bundle("gamma", backbone="d" * 64)).result(5)
        n = len(sink.verdicts)
        sink.wait_for(n + 5)
        assert pipeline.snapshot().bundle_id == "gamma@dddddddddddd"
    finally:
        assert pipeline.stop(drain_timeout_s=5)
    snap = pipeline.snapshot()
    assert snap.product_switches == 2
    # The counts per product (what stats and /metrics show) are the verdicts the sink was given ...
    per_product: dict[str, dict[str, int]] = {}
    for v in sink.verdicts:
        counts = per_product.setdefault(v.product_id or "", {})
        counts[v.verdict.value] = counts.get(v.verdict.value, 0) + 1
    assert snap.verdicts == per_product
    # ... and the observer saw each of them after the sink, with the time the sink took added.
    assert [v.seq for v in observed] == [v.seq for v in sink.verdicts]
    for seen, given in zip(observed, sink.verdicts, strict=True):
        assert seen.latencies_ms == {**given.latencies_ms, "publish": seen.latencies_ms["publish"]}
        assert "publish" not in given.latencies_ms and seen.latencies_ms["publish"] >= 0
    assert snap.latency["publish"].p50_ms is not None
    names = [v.product_id for v in sink.verdicts]
    first_beta, first_gamma = names.index("beta"), names.index("gamma")
    assert set(names[:first_beta]) == {"alpha"}
    assert set(names[first_beta:first_gamma]) == {"beta"}
    assert set(names[first_gamma:]) == {"gamma"}
    for v in sink.verdicts:
        expected = VerdictKind.FAIL if v.product_id == "beta" else VerdictKind.PASS
        assert v.verdict is expected, (v.seq, v.product_id, v.score)
        assert v.bundle_id is not None and v.bundle_id.startswith(v.product_id + "@")
    assert_one_verdict_each(sink, 0, len(sink.verdicts))
    assert len(factory.made) == 3 and all(b.closed for b in factory.made)  # alpha(+beta), gamma, gamma refit


def test_a_failed_activation_leaves_the_running_product() -> None:
    sink = CollectingSink(heatmaps_for=())
    img = np.full((SIZE, SIZE), 235, dtype=np.uint8)

    def factory(b: LoadedBundle) -> InferenceBackend:
        if b.product_id == "broken":
            raise BundleIntegrityError("model.onnx: sha256 does not match")
        return DarknessBackend(b.manifest)

    pipeline = Pipeline(ScriptedSource([img], loop=True, interval_s=0.002), factory, sink, bundle=bundle())
    pipeline.start()
    try:
        sink.wait_for(5)
        with pytest.raises(BundleIntegrityError, match="sha256"):
            pipeline.holder.activate(bundle("broken", backbone="b" * 64)).result(5)
        n = len(sink.verdicts)
        sink.wait_for(n + 5)
    finally:
        pipeline.stop(drain_timeout_s=5)
    assert {v.product_id for v in sink.verdicts} == {"widget"}
    assert all(v.verdict is VerdictKind.PASS for v in sink.verdicts)
    assert pipeline.snapshot().product_switches == 0


def test_start_fails_clearly_without_a_camera() -> None:
    class Missing(ScriptedSource):
        def open(self) -> None:
            raise CameraNotFoundError("no device with serial 'nope' (found: viky#0)")

    pipeline = Pipeline(Missing([]), Factory(), CollectingSink(), bundle=bundle())
    with pytest.raises(PipelineStartError, match="no device with serial"):
        pipeline.start()
    assert all(not s.alive for s in pipeline.stages)


def test_start_fails_clearly_when_the_first_backend_cannot_load() -> None:
    def factory(b: LoadedBundle) -> InferenceBackend:
        raise BundleIntegrityError("model.onnx: sha256 abc… does not match bundle.json")

    source = ScriptedSource(frames_with_truth(3, SIZE))
    pipeline = Pipeline(source, factory, CollectingSink(), bundle=bundle())
    with pytest.raises(PipelineStartError, match="does not match"):
        pipeline.start()
    assert source.opens == 0  # the camera is not touched when there is nothing to inspect with
    assert all(not s.alive for s in pipeline.stages)


def test_without_a_product_every_frame_is_not_inspected() -> None:
    sink = CollectingSink()
    pipeline = Pipeline(ScriptedSource(frames_with_truth(5, SIZE)), Factory(), sink, bundle=None)
    run_to_end(pipeline)
    assert_one_verdict_each(sink, 0, 5)
    assert all(v.verdict is VerdictKind.NOT_INSPECTED for v in sink.verdicts)
    assert {v.reason for v in sink.verdicts} == {"no active product"}


def test_heartbeats_are_fresh_while_idle_and_stale_when_a_stage_hangs() -> None:
    img = np.full((SIZE, SIZE), 235, dtype=np.uint8)
    factory = Factory(delay_s=1.5)
    # Two frames, then a camera that has nothing to send (timeouts): a waiting stage is a live stage.
    source = ScriptedSource([img, img] + [Timeout()] * 10_000)
    pipeline = Pipeline(source, factory, CollectingSink(), bundle=bundle(), read_timeout_s=0.05)
    pipeline.start()
    try:
        time.sleep(0.6)  # the inference thread is inside a 1.5 s 'hang'
        assert not pipeline.heartbeats_fresh(0.5)
        assert pipeline.snapshot().heartbeat_age_s["inference"] > 0.5
        time.sleep(2.5)  # done; every stage idles and beats
        assert pipeline.heartbeats_fresh(0.5)
    finally:
        pipeline.stop(drain_timeout_s=5)


class RecordingImageStore:
    """An ImageStore like the journal's: every reject (and every 2nd pass) kept, after its result."""

    def __init__(self, sink: CollectingSink) -> None:
        self.sink = sink
        self.stored: list[tuple[int, tuple[int, ...]]] = []
        self.passes = 0
        self.published_before: list[bool] = []

    def image_wanted(self, verdict: VerdictKind) -> bool:
        if verdict is VerdictKind.PASS:
            self.passes += 1
            return self.passes % 2 == 0
        return True

    def store_image(self, seq: int, image: np.ndarray) -> Path | None:
        self.published_before.append(("result", seq) in self.sink.events)
        self.stored.append((seq, image.shape))
        return Path(f"/images/{seq}.png")


def test_reject_frames_go_to_the_image_store_after_their_result() -> None:
    sink = CollectingSink(heatmaps_for=())
    store = RecordingImageStore(sink)
    events = frames_with_truth(12, SIZE)
    pipeline = Pipeline(ScriptedSource(list(events)), Factory(), sink, bundle=bundle(), image_store=store)
    run_to_end(pipeline)
    fails = [v.seq for v in sink.verdicts if v.verdict is VerdictKind.FAIL]
    passes = [v.seq for v in sink.verdicts if v.verdict is VerdictKind.PASS]
    assert [seq for seq, _ in store.stored] == sorted(fails + passes[1::2])
    assert all(shape == (SIZE, SIZE) for _, shape in store.stored)
    assert all(store.published_before)
    assert pipeline.publishing.images_stored == len(store.stored)


def test_latency_percentiles_cover_only_the_window() -> None:
    from linewatch.pipeline.stages import LatencyWindow

    window = LatencyWindow()
    now = time.monotonic_ns()
    for i in range(100):
        window.add(1000.0, now - 30_000_000_000 + i)  # 30 s ago: outside a 10 s window
    for i in range(101):
        window.add(float(i), now - 5_000_000_000 + i)
    p50, p99 = window.percentiles(10.0)
    assert p50 == pytest.approx(50.0) and p99 == pytest.approx(99.0)
    assert LatencyWindow().percentiles(10.0) == (None, None)


def test_latency_window_lets_go_of_samples_older_than_its_horizon() -> None:
    """A daemon's memory must not grow with the time it has run: with a horizon, the window holds what the
    longest snapshot needs (frame rate × horizon) and no more."""
    from linewatch.pipeline.stages import LatencyWindow

    window = LatencyWindow(horizon_s=60.0)
    start = time.monotonic_ns() - 3_600_000_000_000
    for i in range(3600 * 25):  # an hour at 25 frames/s
        window.add(float(i % 100), start + i * 40_000_000)
    assert len(window) == 60 * 25 + 1
    p50, _ = window.percentiles(3600.0)  # what is asked beyond the horizon comes from the horizon only
    assert p50 == pytest.approx(49.5, abs=1.0)

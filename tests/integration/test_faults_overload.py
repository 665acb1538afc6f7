"""Overload: frames arrive faster than inference can take them (real ONNX Runtime held to 25 frames/s by
SlowBackend, so the overload does not depend on this machine's speed). The configured overflow policy
decides, and every drop is visible: a ``not_inspected`` result per dropped frame, the same number in the
pipeline's counters and in the daemon's ``stats`` payload.

* ``drop_oldest``: the oldest waiting frame makes room; it is reported with reason ``dropped: queue full``.
* ``block``: the acquisition waits for room. A source that can wait (a synthetic camera) simply slows down
  and nothing is dropped; a real camera cannot wait (viky.cti runs free), so its buffers overflow and the
  frames it lost show up as frame-id gaps, each reported ``not_inspected``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fault_support import (
    WHITE_PRODUCT,
    SlowBackend,
    all_results,
    camera_config,
    fit_white_product,
    load_stripes_product,
    ort_factory,
    running_line,
    thread_names,
    viky_camera_config,
    wait_for_threads,
    wait_until,
)
from harness import Broker
from mqtt_support import Subscriber, fast_config, first_seen_seqs

from linewatch.acquisition import GenicamSource, SyntheticSource
from linewatch.bundle.registry import LoadedBundle, load_product
from linewatch.inference.backend import InferenceBackend
from linewatch.pipeline.pipeline import PipelineSnapshot
from linewatch.pipeline.queues import QueueCounters
from linewatch.pipeline.stages import REASON_DROPPED
from linewatch.service.daemon import stats_payload

pytestmark = pytest.mark.mosquitto

INFERENCE_S = 0.04  # 25 frames/s at most
FRAMES = 150
GAP_REASON = "camera lost the frame (frame id gap)"


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> LoadedBundle:
    return load_stripes_product(tmp_path_factory.mktemp("faults-overload") / "products")


def slow_factory(b: LoadedBundle) -> InferenceBackend:
    return SlowBackend(ort_factory()(b), INFERENCE_S)


@dataclass
class Run:
    results: list[dict[str, Any]]  # as the subscriber received them
    snap: PipelineSnapshot  # the pipeline's counters at the end
    queue: QueueCounters  # the inference queue's own counters
    seconds: float


def run_finite(broker: Broker, bundle: LoadedBundle, tmp_path: Path, overflow: str, rate_hz: float) -> Run:
    """FRAMES synthetic frames at ``rate_hz`` through a queue of 4 in front of the slow inference."""
    sub = Subscriber(broker.port, ["linewatch/faults/result"])
    source = SyntheticSource(camera_config(rate_hz=rate_hz, frame_count=FRAMES))
    try:
        start = time.monotonic()
        with running_line(source, slow_factory, bundle, tmp_path / "state", fast_config(broker.port),
                          queue_size=4, overflow=overflow) as line:  # fmt: skip
            wait_until(lambda: line.pipeline.finished, 60.0, "the source to run out")
            wait_until(lambda: line.pipeline.publishing.processed == FRAMES, 60.0, "every verdict")
            seconds = time.monotonic() - start
            snap = line.pipeline.snapshot()
            queue = line.pipeline.frames.counters()
        sub.wait_for(lambda: len(first_seen_seqs(sub.json("result"))) == FRAMES, 10.0, "every result")
        return Run(sub.json("result"), snap, queue, seconds)
    finally:
        sub.close()


def test_drop_oldest_reports_every_dropped_frame(
    broker: Broker, bundle: LoadedBundle, tmp_path: Path
) -> None:
    before = thread_names()
    run = run_finite(broker, bundle, tmp_path, "drop_oldest", rate_hz=100.0)
    snap = run.snap
    by_seq = {r["seq"]: r for r in run.results}
    assert sorted(by_seq) == list(range(FRAMES))  # one result per frame, dropped ones included
    dropped = [r for r in by_seq.values() if r["verdict"] == "not_inspected"]
    assert all(r["reason"] == REASON_DROPPED for r in dropped)
    inspected = [r for r in by_seq.values() if r["verdict"] in ("pass", "fail")]
    n_dropped = len(dropped)
    # 100 frames/s into 25 frames/s of inference: most frames must be dropped, and each one is reported.
    assert n_dropped >= FRAMES // 2, n_dropped
    print(f"figures: drop_oldest {FRAMES} frames: {n_dropped} dropped+reported, {len(inspected)} inspected")
    assert len(inspected) + n_dropped == FRAMES
    assert snap.dropped == snap.acquisition.dropped == run.queue.dropped == n_dropped
    assert snap.not_inspected_reasons == {"dropped": n_dropped}
    stats = stats_payload(snap, None)
    assert stats.dropped == stats.not_inspected_count == n_dropped
    assert stats.pass_count + stats.fail_count == len(inspected)
    # The newest frames survive: the last frame of the run is always inspected.
    assert by_seq[FRAMES - 1]["verdict"] in ("pass", "fail")
    assert wait_for_threads(before) == []


def test_block_slows_a_source_that_can_wait_and_drops_nothing(
    broker: Broker, bundle: LoadedBundle, tmp_path: Path
) -> None:
    run = run_finite(broker, bundle, tmp_path, "block", rate_hz=100.0)
    assert sorted(r["seq"] for r in run.results) == list(range(FRAMES))
    assert all(r["verdict"] in ("pass", "fail") for r in run.results)  # nothing dropped, nothing lost
    assert run.snap.dropped == run.queue.dropped == 0
    assert run.queue.blocked_s > 1.0 and run.queue.max_depth == 4
    # The line ran at the inference rate, not the camera's 100 frames/s.
    assert run.seconds >= FRAMES * INFERENCE_S * 0.9
    print(f"figures: block {FRAMES} frames in {run.seconds:.1f} s, blocked {run.queue.blocked_s:.1f} s")


@pytest.mark.genicam
@pytest.mark.slow
def test_block_with_a_free_running_camera_reports_the_frames_it_lost(
    broker: Broker, viky_cti: Path, tmp_path: Path
) -> None:
    products = tmp_path / "products"
    fit_white_product(products)
    bundle = load_product(products, WHITE_PRODUCT)
    camera = GenicamSource(viky_camera_config(viky_cti, 100.0, num_buffers=4))
    sub = Subscriber(broker.port, ["linewatch/faults/result"])
    try:
        with running_line(camera, slow_factory, bundle, tmp_path / "state", fast_config(broker.port),
                          queue_size=4, overflow="block", read_timeout_s=2.0) as line:  # fmt: skip
            wait_until(lambda: line.pipeline.publishing.processed >= 200, 60.0, "200 results")
            snap = line.pipeline.snapshot()
        last_seq = line.pipeline.last_seq
        results = all_results(sub, last_seq)
    finally:
        sub.close()
    by_seq = {r["seq"]: r for r in results}
    assert sorted(by_seq) == list(range(last_seq + 1))
    lost = [r for r in by_seq.values() if r["verdict"] == "not_inspected"]
    assert lost and all(r["reason"] == GAP_REASON for r in lost)
    assert snap.dropped == 0 and snap.acquisition.camera_gaps >= len(lost) > 0
    # Every camera frame id between the first and the last has exactly one result: inspected or lost.
    frame_ids = [by_seq[s]["frame_id"] for s in sorted(by_seq)]
    assert frame_ids == list(range(frame_ids[0], frame_ids[0] + len(frame_ids)))
    print(f"figures: block on viky, {len(by_seq)} results, {len(lost)} camera-lost frames reported")

"""Camera faults on a running daemon (``Daemon`` in-process with its camera wrapped by FaultySource, real ONNX
Runtime, real mosquitto): fetch timeouts that lost frames, a source that raises, a device that disappears
and comes back.

Promises: the triggers the pipeline can know were lost (frame-id gaps) get ``not_inspected`` results; every
seq still reaches the subscriber in order; ``status`` goes ``degraded`` (with the reason) while the camera is
away and ``online`` again by itself; no thread is left behind.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from daemon_support import DaemonThread, daemon_config
from fault_support import (
    STRIPES_PRODUCT,
    WHITE_PRODUCT,
    FaultyCameras,
    LoseFrames,
    Raise,
    Timeout,
    Vanish,
    all_results,
    camera_config,
    fit_stripes_product,
    fit_white_product,
    thread_names,
    viky_camera_config,
    wait_for_threads,
    wait_until,
)
from harness import Broker
from mqtt_support import Subscriber, first_seen_seqs

from linewatch.errors import AcquisitionError
from linewatch.pipeline.pipeline import PipelineSnapshot

pytestmark = pytest.mark.mosquitto

GAP_REASON = "camera lost the frame (frame id gap)"
STATION = "faults"


@pytest.fixture(scope="module")
def products(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("faults-camera") / "products"
    fit_stripes_product(root)
    return root


def statuses(sub: Subscriber) -> list[dict[str, object]]:
    return [json.loads(m.payload) for m in sub.on("status")]


def line_config(path: Path, camera: dict[str, object], products: Path, active: str, broker: Broker) -> Path:
    """The daemon's config: this camera and product, a queue of 8 that blocks when full."""
    return daemon_config(path, camera=camera, products_dir=products, active=active, mqtt_port=broker.port,
                         station=STATION, queue={"size": 8, "overflow": "block"})  # fmt: skip


@dataclass
class Run:
    snap: PipelineSnapshot  # the pipeline's counters once the status was online again
    last_seq: int  # the last seq the daemon numbered
    results: list[dict[str, Any]]  # every result the subscriber received, all seqs up to last_seq among them


def run_until_recovered(config: Path, cameras: FaultyCameras, sub: Subscriber, reads: int) -> Run:
    """Run the daemon with ``cameras`` until its camera has been read ``reads`` times (the faults are past)
    and the status is online again, then stop it (exit 0) and collect the results."""
    daemon = DaemonThread(config, source_factory=cameras)
    try:
        pipeline = daemon.pipeline()
        wait_until(lambda: cameras.reads > reads, 60.0, f"{reads} reads")
        assert pipeline.acquisition.alive, f"acquisition died: {pipeline.failed_stages}"
        wait_until(lambda: bool(statuses(sub)) and statuses(sub)[-1]["state"] == "online", 10.0, "online")
        snap = pipeline.snapshot()
    finally:
        exit_code = daemon.stop()
    assert exit_code == 0
    last_seq = pipeline.last_seq  # stopped and drained: nothing is numbered after this
    return Run(snap, last_seq, all_results(sub, last_seq))


def test_timeouts_raises_and_a_vanished_device_are_survived(
    broker: Broker, products: Path, tmp_path: Path
) -> None:
    before = thread_names()
    cameras = FaultyCameras({
        15: LoseFrames(3),  # a fetch timeout during which the camera lost 3 frames
        25: Timeout(),  # a timeout, nothing lost
        35: Raise(AcquisitionError("driver: transport error (injected)")),
        50: Raise(RuntimeError("an exception nobody translated (injected)")),
        65: Vanish(absent_opens=3),  # unplugged: not found for 3 attempts, then back
    })  # fmt: skip
    camera = camera_config(rate_hz=20.0).model_dump(mode="json")
    config = line_config(tmp_path / "linewatch.toml", camera, products, STRIPES_PRODUCT, broker)
    sub = Subscriber(broker.port, [f"linewatch/{STATION}/#"])
    try:
        run = run_until_recovered(config, cameras, sub, reads=90)
    finally:
        sub.close()

    source, results, last_seq = cameras.source, run.results, run.last_seq
    seqs = first_seen_seqs(results)
    assert seqs == list(range(last_seq + 1))  # every seq, in order, none lost
    by_seq = {r["seq"]: r for r in results}
    gaps = [r for r in by_seq.values() if r["verdict"] == "not_inspected"]
    # The 3 frames lost in the timeout are the only triggers the pipeline can know about: after a
    # reconnect the camera's frame counter starts again, so nothing is invented there.
    assert [r["frame_id"] for r in gaps] == source.log.lost_frame_ids == [15, 16, 17]
    assert all(r["reason"] == GAP_REASON for r in gaps)
    rejects = first_seen_seqs(sub.json("reject"))
    assert {r["seq"] for r in gaps} <= set(rejects)  # not_inspected counts as a reject

    acq = run.snap.acquisition
    assert (acq.timeouts, acq.camera_gaps, acq.disconnects) == (2, 3, 1)
    assert acq.errors >= 2 and acq.reconnects == 3  # two raises + one vanish, each reopened
    assert source.log.refused_opens == 3

    states = statuses(sub)
    degraded = [s for s in states if s["state"] == "degraded"]
    assert degraded, f"no degraded status in {[s['state'] for s in states]}"
    reasons = [str(s["reason"]) for s in degraded]
    assert any("camera reconnecting" in r and "not found" in r for r in reasons), reasons
    # Recovered by itself: online after the last degraded, before the final stopped.
    names = [s["state"] for s in states]
    assert names[-1] == "stopped"
    assert "online" in names[max(i for i, n in enumerate(names) if n == "degraded") :]
    leaked = wait_for_threads(before)
    assert leaked == [], f"threads left behind: {leaked}"


@pytest.mark.genicam
@pytest.mark.slow
def test_viky_frames_lost_and_device_unplugged(broker: Broker, viky_cti: Path, tmp_path: Path) -> None:
    """The same faults around the real GenicamSource on viky.cti: lost frames carry viky's own frame ids;
    an unplugged device is closed (harvesters released) and reopened by the pipeline."""
    products = tmp_path / "products"
    fit_white_product(products)
    before = thread_names()
    cameras = FaultyCameras({10: LoseFrames(2), 20: Vanish(absent_opens=2), 45: LoseFrames(1)})
    camera = viky_camera_config(viky_cti, 20.0, reconnect={"initial_s": 0.2, "max_s": 0.5})
    config = line_config(tmp_path / "linewatch.toml", camera.model_dump(mode="json"), products, WHITE_PRODUCT,
                         broker)  # fmt: skip
    sub = Subscriber(broker.port, [f"linewatch/{STATION}/#"])
    try:
        run = run_until_recovered(config, cameras, sub, reads=60)
    finally:
        sub.close()
    source = cameras.source
    assert first_seen_seqs(run.results) == list(range(run.last_seq + 1))
    gaps = sorted(r["frame_id"] for r in {r["seq"]: r for r in run.results}.values()
                  if r["verdict"] == "not_inspected")  # fmt: skip
    assert gaps == sorted(source.log.lost_frame_ids) and len(gaps) == 3
    assert run.snap.acquisition.reconnects == 1 and source.log.refused_opens == 2
    names = [s["state"] for s in statuses(sub)]
    assert "degraded" in names and names[-1] == "stopped"
    assert wait_for_threads(before) == []

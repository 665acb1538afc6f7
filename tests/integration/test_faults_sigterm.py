"""SIGTERM under load: ``linewatch run`` (a subprocess) on a synthetic camera asked for 1000 frames/s,
faster than inference, so the queue in front of inference is full when the signal comes. Promise: the frames
already acquired are inspected (not dropped, not reported as unfinished) and published, the subscriber's
last seq is the daemon's last acquired seq, status says ``stopped``, and the process exits 0 within the
stop timeout (``service.drain_timeout_s``)."""

from __future__ import annotations

import json
import re
import signal
import time
from pathlib import Path

import pytest
from daemon_support import DaemonProcess, daemon_config, journal_records
from fault_support import camera_config, fit_stripes_product
from harness import Broker
from mqtt_support import Subscriber, first_seen_seqs

from linewatch.pipeline.stages import REASON_SHUTDOWN

pytestmark = [pytest.mark.mosquitto, pytest.mark.slow]

DRAIN_TIMEOUT_S = 10.0
QUEUE_SIZE = 8
FINAL = re.compile(r"over the whole run: .*pass (\d+) fail (\d+) not_inspected (\d+)")


def test_sigterm_under_load_finishes_in_flight_frames_and_exits_0(broker: Broker, tmp_path: Path) -> None:
    products = tmp_path / "products"
    fit_stripes_product(products, input_size=(384, 384))  # 9× the pixels: inference is the bottleneck
    config = daemon_config(
        tmp_path / "linewatch.toml",
        camera=camera_config(rate_hz=1000.0).model_dump(mode="json"),  # far beyond inference
        products_dir=products, active="stripes-part", mqtt_port=broker.port, station="load",
        queue={"size": QUEUE_SIZE, "overflow": "block"},
        service={"drain_timeout_s": DRAIN_TIMEOUT_S, "stats_interval_s": 0.5},
    )  # fmt: skip
    sub = Subscriber(broker.port, ["linewatch/load/#"])
    daemon = DaemonProcess(config)
    try:
        sub.wait_for(lambda: len(sub.on("result")) >= 60, 60, "60 results")
        sub.wait_for(lambda: len(sub.on("stats")) >= 2, 10, "two stats messages")
        loaded = json.loads(sub.on("stats")[-1].payload)
        sent = time.monotonic()
        daemon.signal(signal.SIGTERM)
        code = daemon.wait(DRAIN_TIMEOUT_S + 20)
        stop_s = time.monotonic() - sent
        assert code == 0, daemon.output()
        sub.wait_for(lambda: any(json.loads(m.payload)["state"] == "stopped" for m in sub.on("status")), 5,
                     "status stopped")  # fmt: skip
    finally:
        daemon.stop()
        sub.close()

    # Under load: inference is the bottleneck, frames wait in the queue.
    assert loaded["queue_depth"] >= QUEUE_SIZE - 1, loaded
    assert stop_s <= DRAIN_TIMEOUT_S, f"took {stop_s:.1f} s to stop"
    records = journal_records(tmp_path / "state")
    last_acquired = records[-1].result.seq
    assert [r.result.seq for r in records] == list(range(last_acquired + 1))
    assert all(r.published_unix_ns is not None for r in records)
    seqs = first_seen_seqs(sub.json("result"))
    assert seqs == list(range(last_acquired + 1))  # the subscriber's last seq is the last acquired one
    # In-flight frames were inspected, not cut short.
    assert all(r.result.verdict in ("pass", "fail") for r in records), {
        r.result.seq: r.result.reason for r in records if r.result.verdict == "not_inspected"
    }
    assert not any(r.result.reason == REASON_SHUTDOWN for r in records)
    match = FINAL.search(daemon.output())
    assert match, daemon.output()
    assert sum(int(g) for g in match.groups()) == last_acquired + 1  # the daemon's own final count
    states = [json.loads(m.payload) for m in sub.on("status")]
    assert states[-1]["state"] == "stopped" and states[-1]["reason"] == "signal"
    print(f"figures: SIGTERM with {loaded['queue_depth']}/{QUEUE_SIZE} queued at "
          f"{loaded['fps_out']:.0f} fps out; exit 0 after {stop_s:.2f} s; last seq {last_acquired} "
          "published")  # fmt: skip

"""Broker faults: mosquitto restarts in the middle of a 20 frames/s stream, and stays away for longer than the
publisher's in-memory bound. Promise: every ``seq`` reaches a QoS 1 subscriber with a persistent session, in
order (duplicates allowed: the subscriber keeps the first copy of each seq), and the journal holds whatever
the broker has not acknowledged, on disk, until it does."""

from __future__ import annotations

import signal
import time
from collections import Counter
from pathlib import Path

import pytest
from daemon_support import DaemonProcess, daemon_config, journal_records
from fault_support import (
    STRIPES_PRODUCT,
    all_results,
    camera_config,
    fit_stripes_product,
    ort_factory,
    running_line,
    thread_names,
    wait_for_threads,
    wait_until,
)
from harness import Broker
from mqtt_support import Subscriber, fast_config, first_seen_seqs

from linewatch.acquisition import SyntheticSource
from linewatch.bundle.registry import load_product

pytestmark = pytest.mark.mosquitto


@pytest.fixture(scope="module")
def products(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("faults-broker") / "products"
    fit_stripes_product(root)
    return root


def duplicates(seqs: list[int]) -> int:
    return sum(n - 1 for n in Counter(seqs).values())


@pytest.mark.slow
def test_broker_restart_mid_stream_every_seq_reaches_a_persistent_subscriber(
    broker: Broker, products: Path, tmp_path: Path
) -> None:
    camera = camera_config(rate_hz=20.0).model_dump(mode="json")
    config = daemon_config(
        tmp_path / "linewatch.toml", camera=camera, products_dir=products, active=STRIPES_PRODUCT,
        mqtt_port=broker.port, station="restart",  # reconnects every 1 s (daemon_config's mqtt section)
        service={"drain_timeout_s": 10.0},
    )  # fmt: skip
    sub = Subscriber(broker.port, ["linewatch/restart/result"], persistent=True)
    daemon = DaemonProcess(config)
    try:
        sub.wait_for(lambda: len(sub.on("result")) >= 30, 60, "30 results before the restart")
        broker.stop()
        down_unix_ns = time.time_ns()
        time.sleep(3.0)  # ~60 frames while the broker is away
        broker.start()
        up_unix_ns = time.time_ns()
        outage_s = (up_unix_ns - down_unix_ns) / 1e9
        sub.wait_for(lambda: sub.client.is_connected(), 10, "the subscriber's reconnection")
        time.sleep(2.0)  # the stream goes on after the restart
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(30) == 0, daemon.output()
    finally:
        daemon.stop()

    records = journal_records(tmp_path / "state")
    n = len(records)
    assert [r.result.seq for r in records] == list(range(n))
    assert all(r.published_unix_ns is not None for r in records), "unacknowledged results left"
    try:
        sub.wait_for(lambda: len(first_seen_seqs(sub.json("result"))) >= n, 15, f"{n} results")
    finally:
        sub.close()
    received = [p["seq"] for p in sub.json("result")]
    # No gap, and the first copies arrive in order (monotonic); re-sent copies may repeat a seq.
    assert first_seen_seqs(sub.json("result")) == list(range(n))
    during = [r for r in records if down_unix_ns <= r.result.acquired_unix_ns <= up_unix_ns]
    assert len(during) >= outage_s * 20 * 0.5, "the stream did not go on during the outage"
    print(f"figures: broker restart, outage {outage_s:.1f} s, {len(during)} frames acquired meanwhile, "
          f"{n} results, {duplicates(received)} duplicates, 0 gaps")  # fmt: skip


def test_broker_away_longer_than_the_memory_bound_journal_holds_and_replays(
    broker: Broker, products: Path, tmp_path: Path
) -> None:
    """max_pending = 5 results in memory; the broker is away for ~4 s of a 20 frames/s stream (~80)."""
    before = thread_names()
    bundle = load_product(products, STRIPES_PRODUCT)
    mqtt = fast_config(broker.port, max_pending=5, max_inflight=5)
    sub = Subscriber(broker.port, ["linewatch/faults/result"], persistent=True)
    pending_seen: list[int] = []
    try:
        source = SyntheticSource(camera_config(rate_hz=20.0))
        with running_line(source, ort_factory(), bundle, tmp_path / "state", mqtt) as line:
            publisher, journal = line.publisher, line.journal
            wait_until(lambda: line.pipeline.publishing.processed >= 20, 30.0, "20 results")
            broker.stop()
            deadline = time.monotonic() + 4.0
            while time.monotonic() < deadline:
                pending_seen.append(publisher.stats().pending)
                time.sleep(0.05)
            journal.flush()
            held = journal.unpublished_count()
            backlog = publisher.stats().backlog
            produced = line.pipeline.publishing.processed
            broker.start()
            wait_until(lambda: publisher.connected, 10.0, "the reconnection")
            time.sleep(1.0)
        # Stopped: the pipeline drained and the publisher flushed before saying "stopped".
        last_seq = line.pipeline.last_seq
        results = all_results(sub, last_seq, timeout_s=15.0)
    finally:
        sub.close()
    assert max(pending_seen) <= 5  # never more than the bound in memory
    assert held >= 60 and backlog >= 60, (held, backlog)  # far beyond the bound: on disk
    assert produced - 20 >= 60
    assert first_seen_seqs(results) == list(range(last_seq + 1))  # replayed, in order
    records = journal_records(tmp_path / "state")
    assert len(records) == last_seq + 1 and all(r.published_unix_ns is not None for r in records)
    assert wait_for_threads(before) == []
    print(f"figures: broker away 4 s, bound 5, {held} held on disk, {last_seq + 1} delivered in order")

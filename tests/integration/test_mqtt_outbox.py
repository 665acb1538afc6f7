"""The journal as outbox: results survive a broker outage and a daemon restart, in order."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from harness import Broker
from mqtt_support import Subscriber, fast_config, first_seen_seqs, make_verdict, running_publisher

from linewatch.frames import VerdictKind
from linewatch.publish.journal import Journal, JournalConfig
from linewatch.publish.mqtt import MqttPublisher

pytestmark = pytest.mark.mosquitto


def wait_disconnected(publisher: MqttPublisher) -> None:
    deadline = time.monotonic() + 5.0
    while publisher.connected and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not publisher.connected


def test_broker_outage_delivers_every_result_in_order(broker: Broker, tmp_path: Path) -> None:
    sub = Subscriber(broker.port, ["linewatch/st1/result", "linewatch/st1/reject"], persistent=True)
    config = fast_config(broker.port)
    try:
        with running_publisher(tmp_path, config) as (publisher, journal):
            for seq in range(20):
                publisher.publish_result(make_verdict(seq))
            assert publisher.flush(5.0)
            broker.stop()
            wait_disconnected(publisher)
            for seq in range(20, 220):
                publisher.publish_result(
                    make_verdict(seq, VerdictKind.FAIL if seq % 10 == 0 else VerdictKind.PASS)
                )
            stats = publisher.stats()  # all 200 wait on disk only, none in memory
            assert (stats.pending, stats.backlog, stats.spilled) == (0, 200, 200)
            broker.start()
            assert publisher.flush(8.0), publisher.stats()
            sub.wait_for(lambda: len(first_seen_seqs(sub.json("result"))) >= 220, 8.0, "220 results")
            received = sub.json("result")
            assert first_seen_seqs(received) == list(range(220))  # nothing lost, order kept
            # Duplicates are allowed (at-least-once; the broker also re-delivers to the persistent session).
            rejects = first_seen_seqs(sub.json("reject"))
            assert rejects == list(range(20, 220, 10))
            journal.flush()
            assert journal.unpublished_count() == 0
    finally:
        sub.close()


def test_restart_sends_the_previous_runs_unpublished_rows_first(broker: Broker, tmp_path: Path) -> None:
    state = tmp_path / "state"
    broker.stop()
    # First run: the broker is away; 30 results stay unpublished in the journal when the daemon stops.
    with running_publisher(state, fast_config(broker.port), wait_connected=False) as (first, journal):
        for seq in range(30):
            first.publish_result(make_verdict(seq, VerdictKind.FAIL if seq == 29 else VerdictKind.PASS))
        assert not first.flush(0.2)
    stopped = Journal(JournalConfig(state_dir=state))
    try:
        assert stopped.unpublished_count() == 30 and stopped.last_seq() == 29
    finally:
        stopped.close()

    broker.start()
    sub = Subscriber(broker.port, ["linewatch/st1/result", "linewatch/st1/reject"])
    try:
        # Second run: numbering continues after the journal's last seq; new results are published at once,
        # even before the connection is up, and still arrive after the old ones.
        with running_publisher(state, fast_config(broker.port), wait_connected=False) as (second, journal):
            next_seq = (journal.last_seq() or 0) + 1
            assert next_seq == 30
            for seq in range(next_seq, next_seq + 30):
                second.publish_result(make_verdict(seq))
            assert second.flush(8.0), second.stats()
            sub.wait_for(lambda: len(first_seen_seqs(sub.json("result"))) >= 60, 8.0, "60 results")
            assert first_seen_seqs(sub.json("result")) == list(range(60))
            assert first_seen_seqs(sub.json("reject")) == [29]
            journal.flush()
            assert journal.unpublished_count() == 0
    finally:
        sub.close()


def test_outage_in_the_middle_of_a_stream_keeps_order(broker: Broker, tmp_path: Path) -> None:
    """Results keep coming while the broker dies and returns; in-flight ones are re-sent, none lost."""
    sub = Subscriber(broker.port, ["linewatch/st1/result"], persistent=True)
    config = fast_config(broker.port, max_pending=40, max_inflight=10)
    try:
        with running_publisher(tmp_path, config) as (publisher, journal):
            seq = 0
            for _ in range(3):
                for _ in range(100):  # no pause: some are on the wire when the broker goes
                    publisher.publish_result(make_verdict(seq))
                    seq += 1
                broker.stop()
                for _ in range(50):
                    publisher.publish_result(make_verdict(seq))
                    seq += 1
                broker.start()
                for _ in range(30):  # while reconnecting
                    publisher.publish_result(make_verdict(seq))
                    seq += 1
            assert publisher.flush(9.0), publisher.stats()
            sub.wait_for(lambda: len(first_seen_seqs(sub.json("result"))) >= seq, 9.0, f"{seq} results")
            assert first_seen_seqs(sub.json("result")) == list(range(seq))
            journal.flush()
            assert journal.unpublished_count() == 0
    finally:
        sub.close()

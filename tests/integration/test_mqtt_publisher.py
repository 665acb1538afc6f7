"""MqttPublisher against a real mosquitto: status with last will, ordered results, rejects, heatmaps,
commands. A plain paho client subscribes, as a line integrator would."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from harness import Broker
from mqtt_support import Subscriber, fast_config, make_verdict, running_publisher
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from linewatch.errors import CommandError
from linewatch.frames import VerdictKind
from linewatch.publish.payloads import Command, FeedbackPayload, ProductCommand, ProductStatePayload

pytestmark = pytest.mark.mosquitto

REPO = Path(__file__).resolve().parents[2]


def test_late_subscriber_sees_retained_online(broker: Broker, tmp_path: Path) -> None:
    with running_publisher(tmp_path, fast_config(broker.port)) as (publisher, _):
        publisher.set_status("online", product="widget", bundle="widget-b1", backend="onnxruntime")
        publisher.publish_product_state(ProductStatePayload(active="widget", active_bundle="widget-b1"))
        assert publisher.flush(5.0)
        time.sleep(0.2)  # the status publish above is QoS 1 but untracked by flush
        late = Subscriber(broker.port, ["linewatch/st1/status", "linewatch/st1/product"])
        try:
            late.wait_for(
                lambda: late.on("status") and late.on("product"), what="retained status and product"
            )
            status = late.on("status")[-1]
            assert status.retain
            data = json.loads(status.payload)
            assert data["schema"] == "linewatch.status/1"
            assert (data["state"], data["product"], data["backend"]) == ("online", "widget", "onnxruntime")
            assert json.loads(late.on("product")[-1].payload)["active"] == "widget"
        finally:
            late.close()
    # An orderly close leaves "stopped" retained, not the last will.
    after = Subscriber(broker.port, ["linewatch/st1/status"])
    try:
        after.wait_for(lambda: bool(after.on("status")), what="retained status after close")
        assert json.loads(after.on("status")[-1].payload)["state"] == "stopped"
    finally:
        after.close()


def test_results_in_order_with_a_reject_for_every_non_pass(broker: Broker, tmp_path: Path) -> None:
    sub = Subscriber(broker.port, ["linewatch/st1/result", "linewatch/st1/reject"])
    kinds = [
        VerdictKind.FAIL if i % 7 == 3 else VerdictKind.NOT_INSPECTED if i % 11 == 5 else VerdictKind.PASS
        for i in range(300)
    ]
    try:
        with running_publisher(tmp_path, fast_config(broker.port)) as (publisher, journal):
            for seq, kind in enumerate(kinds):
                publisher.publish_result(make_verdict(seq, kind))
            assert publisher.flush(5.0)
            sub.wait_for(lambda: len(sub.on("result")) >= 300, what="300 results")
            results = sub.json("result")
            assert [r["seq"] for r in results] == list(range(300))
            assert [r["verdict"] for r in results] == [k.value for k in kinds]
            assert all(r["product"] == "widget" and r["threshold"] == 1.0 for r in results)
            expected_rejects = [s for s, k in enumerate(kinds) if k is not VerdictKind.PASS]
            sub.wait_for(lambda: len(sub.on("reject")) >= len(expected_rejects), what="rejects")
            rejects = sub.json("reject")
            assert [r["seq"] for r in rejects] == expected_rejects
            assert {r["verdict"] for r in rejects} == {"fail", "not_inspected"}
            journal.flush()
            assert journal.unpublished_count() == 0  # every row acknowledged and marked
            assert publisher.stats().results_published == 300
    finally:
        sub.close()


def _png(seed: int) -> tuple[np.ndarray, bytes]:
    image = np.random.default_rng(seed).integers(0, 256, size=(48, 64, 3), dtype=np.uint8)
    ok, encoded = cv2.imencode(".png", image)
    assert ok
    return image, encoded.tobytes()


def test_heatmap_png_with_content_type_and_seq_properties(broker: Broker, tmp_path: Path) -> None:
    sub = Subscriber(broker.port, ["linewatch/st1/heatmap/#"])
    config = fast_config(broker.port, heatmap_every_nth_pass=2, heatmap_max_per_s=100.0)
    try:
        with running_publisher(tmp_path, config) as (publisher, _):
            assert publisher.heatmap_wanted(VerdictKind.FAIL)
            assert not publisher.heatmap_wanted(VerdictKind.NOT_INSPECTED)
            assert [publisher.heatmap_wanted(VerdictKind.PASS) for _ in range(4)] == [
                False,
                True,
                False,
                True,
            ]
            image, png = _png(5)
            publisher.publish_heatmap(41, png)
            sub.wait_for(lambda: bool(sub.on("heatmap")), what="heatmap")
            message = sub.on("heatmap")[0]
            assert message.topic == "linewatch/st1/heatmap"
            assert message.properties.ContentType == "image/png"
            assert ("seq", "41") in message.properties.UserProperty
            decoded = cv2.imdecode(np.frombuffer(message.payload, np.uint8), cv2.IMREAD_UNCHANGED)
            assert decoded is not None and np.array_equal(decoded, image)
    finally:
        sub.close()


def test_heatmap_rate_limit(broker: Broker, tmp_path: Path) -> None:
    config = fast_config(broker.port, heatmap_max_per_s=3.0)
    with running_publisher(tmp_path, config) as (publisher, _):
        granted = sum(publisher.heatmap_wanted(VerdictKind.FAIL) for _ in range(20))
        assert granted == 3  # burst of one second's worth, then the bucket is empty
        assert publisher.stats().heatmaps_skipped == 17
        time.sleep(0.5)
        assert publisher.heatmap_wanted(VerdictKind.FAIL)  # refilled at 3/s


def test_heatmap_seq_in_topic_on_mqtt_311(broker: Broker, tmp_path: Path) -> None:
    sub = Subscriber(broker.port, ["linewatch/st1/heatmap/#"], protocol="3.1.1")
    try:
        with running_publisher(tmp_path, fast_config(broker.port, protocol="3.1.1")) as (publisher, _):
            image, png = _png(6)
            assert publisher.heatmap_wanted(VerdictKind.FAIL)
            publisher.publish_heatmap(7, png)
            publisher.publish_result(make_verdict(0, VerdictKind.FAIL))
            assert publisher.flush(5.0)
            sub.wait_for(lambda: bool(sub.on("heatmap/7")), what="heatmap/7")
            decoded = cv2.imdecode(
                np.frombuffer(sub.on("heatmap/7")[0].payload, np.uint8), cv2.IMREAD_UNCHANGED
            )
            assert np.array_equal(decoded, image)
    finally:
        sub.close()


_KILLABLE = """
import sys, time
from pathlib import Path
from linewatch.publish.journal import Journal, JournalConfig
from linewatch.publish.mqtt import MqttConfig, MqttPublisher
journal = Journal(JournalConfig(state_dir=Path(sys.argv[2])))
publisher = MqttPublisher(MqttConfig(host="127.0.0.1", port=int(sys.argv[1])), "victim", journal)
publisher.start()
publisher.set_status("online")
while not publisher.connected:
    time.sleep(0.01)
publisher.set_status("online", product="widget")
print("connected", flush=True)
time.sleep(60)
"""


def test_offline_via_last_will_when_killed(broker: Broker, tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", _KILLABLE, str(broker.port), str(tmp_path / "state")],
        stdout=subprocess.PIPE,
        cwd=REPO,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == b"connected"
        sub = Subscriber(broker.port, ["linewatch/victim/status"])
        try:
            sub.wait_for(lambda: any(json.loads(m.payload)["state"] == "online" for m in sub.on("status")),
                         what="retained online")  # fmt: skip
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)
            sub.wait_for(lambda: json.loads(sub.on("status")[-1].payload)["state"] == "offline", what="will")
            will = json.loads(sub.on("status")[-1].payload)
            assert will["schema"] == "linewatch.status/1" and "last will" in will["reason"]
        finally:
            sub.close()
        late = Subscriber(broker.port, ["linewatch/victim/status"])
        try:
            late.wait_for(lambda: bool(late.on("status")), what="retained status")
            assert late.on("status")[-1].retain
            assert json.loads(late.on("status")[-1].payload)["state"] == "offline"
        finally:
            late.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def test_commands_are_answered_and_malformed_ones_never_disturb_publishing(
    broker: Broker, tmp_path: Path
) -> None:
    received: list[Command] = []

    def handler(command: Command) -> None:
        if isinstance(command, ProductCommand) and command.product_id == "missing":
            raise CommandError("no bundle for product 'missing' in /srv/products")
        received.append(command)

    sub = Subscriber(broker.port, ["linewatch/st1/product/response", "linewatch/st1/result"])
    requests: list[tuple[str, bytes]] = [
        ("product/set", b"{not json"),
        ("product/set", json.dumps({"product_id": "a", "pad": "x" * 20_000}).encode()),
        ("product/set", b'{"product_id": 42, "request_id": "wrong-type"}'),
        ("product/prepare", b'{"product_id": "a", "action": "explode", "request_id": "unknown-action"}'),
        ("product/set", b'{"product_id": "../../etc", "request_id": "traversal"}'),
        ("feedback", b'{"seq": "3", "label": "good"}'),
        ("product/set", b'{"product_id": "missing", "request_id": "refused"}'),
        ("product/prepare", b'{"product_id": "widget-2", "request_id": "ok-prepare"}'),
        ("feedback", b'{"seq": 3, "label": "defect", "note": "missed scratch", "request_id": "ok-fb"}'),
    ]
    try:
        with running_publisher(tmp_path, fast_config(broker.port)) as (publisher, _):
            publisher.subscribe_commands(handler)
            time.sleep(0.3)  # SUBACK
            for i, (suffix, payload) in enumerate(requests):
                sub.client.publish(f"linewatch/st1/{suffix}", payload, qos=1)
                publisher.publish_result(make_verdict(i))  # inspection continues meanwhile
            sub.wait_for(lambda: len(sub.on("product/response")) >= len(requests), what="all answers")
            answers = sub.json("product/response")
            assert len(answers) == len(requests)  # exactly one answer each
            assert [a["ok"] for a in answers] == [False] * 7 + [True, True]
            assert "invalid set command" in answers[0]["error"]
            assert "exceeds the limit of 4096 bytes" in answers[1]["error"]
            by_id = {a["request_id"]: a for a in answers if a["request_id"]}
            assert "product_id" in by_id["wrong-type"]["error"]
            assert "action" in by_id["unknown-action"]["error"]
            assert "product_id" in by_id["traversal"]["error"]
            assert by_id["refused"]["error"] == "no bundle for product 'missing' in /srv/products"
            assert by_id["ok-prepare"]["command"] == "prepare"
            assert answers[5]["command"] == "feedback" and not answers[5]["ok"]
            # Only the valid commands reached the handler.
            assert [type(c) for c in received] == [ProductCommand, FeedbackPayload]
            assert isinstance(received[0], ProductCommand) and received[0].action == "prepare"
            # MQTT 5 request/response: CorrelationData comes back on the answer.
            props = Properties(PacketTypes.PUBLISH)
            props.CorrelationData = b"corr-17"
            sub.client.publish(
                "linewatch/st1/product/set", b'{"product_id": "widget"}', qos=1, properties=props
            )
            sub.wait_for(lambda: len(sub.on("product/response")) > len(requests), what="correlated answer")
            assert sub.on("product/response")[-1].properties.CorrelationData == b"corr-17"
            assert publisher.flush(5.0)
            sub.wait_for(lambda: len(sub.on("result")) == len(requests), what="results")
            assert [r["seq"] for r in sub.json("result")] == list(range(len(requests)))
            assert publisher.stats().commands_refused == 7
    finally:
        sub.close()


def test_stats_carry_the_publisher_counters(broker: Broker, tmp_path: Path) -> None:
    from linewatch.publish.payloads import StatsPayload

    sub = Subscriber(broker.port, ["linewatch/st1/stats"])
    try:
        with running_publisher(tmp_path, fast_config(broker.port)) as (publisher, _):
            publisher.publish_result(make_verdict(0))
            assert publisher.flush(5.0)
            publisher.publish_stats(
                StatsPayload(
                    interval_s=1.0,
                    fps_in=1.0,
                    fps_out=1.0,
                    frames_in=1,
                    frames_out=1,
                    dropped=0,
                    queue_depth=0,
                    latency_p50_ms=1.0,
                    latency_p99_ms=2.0,
                    pass_count=1,
                    fail_count=0,
                    not_inspected_count=0,
                )
            )
            sub.wait_for(lambda: bool(sub.on("stats")), what="stats")
            stats = sub.json("stats")[0]
            assert stats["schema"] == "linewatch.stats/1"
            assert stats["publisher"]["results_published"] == 1 and stats["publisher"]["connected"]
    finally:
        sub.close()


def test_commands_waiting_at_close_are_still_answered(broker: Broker, tmp_path: Path) -> None:
    """Commands received before ``close()`` (SIGTERM) but still queued behind a slow one are carried out
    and answered before the publisher disconnects: exactly one answer each, none lost at shutdown."""
    handled: list[str] = []
    first_started, release_first = threading.Event(), threading.Event()

    def handler(command: Command) -> None:
        first_started.set()
        release_first.wait(10.0)  # a command that takes a moment (a switch, a feedback write)
        handled.append(command.request_id or "")

    n = 4
    sub = Subscriber(broker.port, ["linewatch/st1/product/response"])
    try:
        with running_publisher(tmp_path, fast_config(broker.port)) as (publisher, _):
            publisher.subscribe_commands(handler)
            time.sleep(0.3)  # SUBACK
            for i in range(n):
                sub.client.publish(
                    "linewatch/st1/feedback", json.dumps({"seq": i, "label": "good", "request_id": f"c{i}"}),
                    qos=1,
                )  # fmt: skip
            assert first_started.wait(5.0)
            wait_until = time.monotonic() + 5.0
            while publisher.commands_waiting < n - 1 and time.monotonic() < wait_until:
                time.sleep(0.01)
            assert publisher.commands_waiting == n - 1
            threading.Timer(0.2, release_first.set).start()
            publisher.close(timeout_s=5.0)  # the first is being handled, the rest wait in the queue
        assert handled == [f"c{i}" for i in range(n)]
        sub.wait_for(lambda: len(sub.on("product/response")) >= n, timeout_s=3.0, what="every answer")
        time.sleep(0.3)
        answers = sub.json("product/response")
        assert sorted(a["request_id"] for a in answers) == [f"c{i}" for i in range(n)]
        assert all(a["ok"] for a in answers)
    finally:
        sub.close()

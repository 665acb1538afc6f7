"""Helpers for MQTT tests: a plain paho subscriber (what a line integrator runs) and publisher factories.

Importable from any test: tests/ is on sys.path (pytest's default "prepend" import mode).
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from linewatch.frames import DefectLocation, Verdict, VerdictKind
from linewatch.publish.journal import Journal, JournalConfig
from linewatch.publish.mqtt import MqttConfig, MqttPublisher


class Subscriber:
    """A plain paho client subscribed (QoS 1) to ``topics``; collects every message it receives.

    ``persistent=True`` keeps an MQTT 5 session (clean_start=False, session expiry 1 h) so messages
    published while it reconnects are queued for it by the broker.
    """

    def __init__(
        self,
        port: int,
        topics: list[str],
        *,
        persistent: bool = False,
        protocol: str = "5",
        client_id: str | None = None,
    ) -> None:
        self.topics = topics
        self.mqtt5 = protocol == "5"
        self.messages: list[paho.MQTTMessage] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id or f"test-{uuid.uuid4().hex[:8]}",
            protocol=MQTTProtocolVersion.MQTTv5 if self.mqtt5 else MQTTProtocolVersion.MQTTv311,
            clean_session=None if self.mqtt5 else not persistent,
        )
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *args: self._subscribed.set()
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(1, 1)
        props = None
        if self.mqtt5 and persistent:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = 3600
        if self.mqtt5:
            self.client.connect("127.0.0.1", port, clean_start=not persistent, properties=props)
        else:
            self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        if not self._subscribed.wait(5.0):
            raise TimeoutError("subscriber did not get its SUBACK within 5 s")

    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        client.subscribe([(t, 1) for t in self.topics])

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        with self._lock:
            self.messages.append(message)

    def on(self, suffix: str) -> list[paho.MQTTMessage]:
        with self._lock:
            return [m for m in self.messages if m.topic.endswith("/" + suffix)]

    def json(self, suffix: str) -> list[dict[str, Any]]:
        return [json.loads(m.payload) for m in self.on(suffix)]

    def wait_for(
        self, condition: Callable[[], bool], timeout_s: float = 5.0, what: str = "condition"
    ) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if condition():
                return
            time.sleep(0.02)
        raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def first_seen_seqs(payloads: list[dict[str, Any]]) -> list[int]:
    """seqs in arrival order with duplicates (at-least-once re-sends) removed, as a subscriber would."""
    seen: set[int] = set()
    out = []
    for p in payloads:
        if p["seq"] not in seen:
            seen.add(p["seq"])
            out.append(p["seq"])
    return out


def make_verdict(seq: int, kind: VerdictKind = VerdictKind.PASS) -> Verdict:
    return Verdict(
        seq=seq,
        frame_id=seq,
        verdict=kind,
        product_id="widget",
        bundle_id="widget-b1",
        score=2.0 if kind is VerdictKind.FAIL else (None if kind is VerdictKind.NOT_INSPECTED else 0.5),
        threshold=1.0,
        location=None if kind is VerdictKind.NOT_INSPECTED else DefectLocation(x=seq % 500, y=7),
        timestamp_ns=time.monotonic_ns(),
        acquired_ns=time.monotonic_ns(),
        latencies_ms={"inference": 1.0},
        reason="dropped: queue full" if kind is VerdictKind.NOT_INSPECTED else None,
    )


def fast_config(port: int, **overrides: Any) -> MqttConfig:
    """Reconnect quickly so outage tests stay short."""
    values: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": port,
        "reconnect_min_delay_s": 1,
        "reconnect_max_delay_s": 1,
        "keepalive_s": 5,
    }
    values.update(overrides)
    return MqttConfig(**values)


@contextmanager
def running_publisher(
    state_dir: Path, config: MqttConfig, station: str = "st1", wait_connected: bool = True
) -> Iterator[tuple[MqttPublisher, Journal]]:
    journal = Journal(JournalConfig(state_dir=state_dir, batch_ms=10))
    publisher = MqttPublisher(config, station, journal)
    try:
        publisher.start()
        if wait_connected:
            deadline = time.monotonic() + 5.0
            while not publisher.connected and time.monotonic() < deadline:
                time.sleep(0.01)
            assert publisher.connected, "publisher did not connect within 5 s"
        yield publisher, journal
    finally:
        publisher.close(timeout_s=2.0)
        journal.close()

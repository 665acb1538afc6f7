"""`linewatch run` serves Prometheus metrics that count exactly what an MQTT subscriber received, its `stats`
message carries the same figures, and the broker password appears in neither."""

from __future__ import annotations

import signal
import time
import urllib.request
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from daemon_support import DaemonProcess, DaemonThread, daemon_config, fit_stripes_product
from harness import Broker, free_port
from mqtt_support import Subscriber
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

pytestmark = [pytest.mark.mosquitto, pytest.mark.slow]

SIZE = 128
# Slow enough that the line is often idle between two parts: a scrape then sees a settled count.
CAMERA = {"kind": "synthetic", "family": "stripes", "width": SIZE, "height": SIZE, "rate_hz": 3.0,
          "defect_rate": 0.4, "defect_kinds": ["noise_patch", "crack", "spot"], "seed": 21}
RESULTS = 12
STAGES = {"queue", "inference", "scoring", "publish", "total"}

Sample = tuple[str, dict[str, str], float]


@pytest.fixture(scope="module")
def products(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("products") / "products"
    fit_stripes_product(root, SIZE, n_good=30)
    return root


def scrape(port: int) -> tuple[str, list[Sample]]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return text, parse(text)


def parse(text: str) -> list[Sample]:
    families = text_string_to_metric_families(text)
    return [(s.name, s.labels, s.value) for f in families for s in f.samples]


def value(samples: list[Sample], name: str, **labels: str) -> float:
    found = [v for n, lab, v in samples if n == name and all(lab.get(k) == x for k, x in labels.items())]
    assert len(found) == 1, f"{name}{labels}: {found}"
    return found[0]


def settled(samples: list[Sample]) -> bool:
    """A scrape taken while no part was in flight: every acquired frame published and observed."""
    published = sum(v for n, _, v in samples if n == "linewatch_verdicts_total")
    return (
        published >= RESULTS
        and value(samples, "linewatch_frames_acquired_total") == published
        and value(samples, "linewatch_stage_latency_seconds_count", stage="total") == published
        and value(samples, "linewatch_stage_latency_seconds_count", stage="publish") == published
    )


def first_results(sub: Subscriber, count: int) -> list[dict[str, Any]]:
    """Results seq 0..count-1 (the first copy of each), waiting until they are all there."""
    def have() -> dict[int, dict[str, Any]]:
        out: dict[int, dict[str, Any]] = {}
        for r in sub.json("result"):
            out.setdefault(r["seq"], r)
        return out

    sub.wait_for(lambda: all(s in have() for s in range(count)), 30, f"results 0..{count - 1}")
    by_seq = have()
    return [by_seq[s] for s in range(count)]


def per_product(results: list[dict[str, Any]]) -> Counter[tuple[str, str]]:
    return Counter((r["product"] or "", r["verdict"]) for r in results)


def test_metrics_and_stats_count_what_the_subscriber_received(
    broker: Broker, products: Path, tmp_path: Path
) -> None:
    secret = f"pw-{uuid.uuid4().hex}"
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "mqtt_password").write_text(secret + "\n")
    port = free_port()
    config = daemon_config(
        tmp_path / "linewatch.toml", camera=CAMERA, products_dir=products, active="stripes-part",
        mqtt_port=broker.port, mqtt={"username": "linewatch"}, metrics={"port": port},
        service={"stats_interval_s": 0.5},
    )
    sub = Subscriber(broker.port, ["linewatch/e2e/#"])
    daemon = DaemonProcess(config, env={"CREDENTIALS_DIRECTORY": str(credentials)})
    scrapes: list[str] = []
    try:
        sub.wait_for(lambda: len({r["seq"] for r in sub.json("result")}) >= RESULTS, 120,
                     f"{RESULTS} results")
        deadline = time.monotonic() + 60
        while True:
            text, samples = scrape(port)
            scrapes.append(text)
            if settled(samples):
                break
            assert time.monotonic() < deadline, f"no settled scrape within 60 s; last:\n{text}"
            time.sleep(0.05)
        sub.wait_for(lambda: any(s["frames_out"] >= RESULTS for s in sub.json("stats")), 30, "stats")
        stats = [s for s in sub.json("stats") if s["frames_out"] >= RESULTS][-1]
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(60) == 0, daemon.output()
    finally:
        daemon.stop()
        sub.close()

    # /metrics against the subscriber: every published result counted once, per product and verdict.
    published = int(sum(v for n, _, v in samples if n == "linewatch_verdicts_total"))
    results = first_results(sub, published)
    expected = per_product(results)
    counted = Counter({(lab["product"], lab["verdict"]): v for n, lab, v in samples
                       if n == "linewatch_verdicts_total" and v})
    assert counted == expected and {k[0] for k in expected} == {"stripes-part"}
    assert {k[1] for k in expected} >= {"pass", "fail"}, "this camera makes passes and fails"
    decided = expected[("stripes-part", "pass")] + expected[("stripes-part", "fail")]
    assert value(samples, "linewatch_frames_acquired_total") == published
    assert value(samples, "linewatch_frames_inspected_total") == decided
    assert value(samples, "linewatch_frames_not_inspected_total") == published - decided
    assert value(samples, "linewatch_frames_dropped_total") == 0
    # One latency observation per stage the result reports, plus publish for every result.
    for stage in STAGES:
        reported = published if stage == "publish" else sum(stage in r["latencies_ms"] for r in results)
        assert value(samples, "linewatch_stage_latency_seconds_count", stage=stage) == reported, stage
    bundle = results[0]["bundle"]
    assert value(samples, "linewatch_bundle_info", product="stripes-part", bundle=bundle) == 1
    assert value(samples, "linewatch_product_switches_total") == 0
    assert value(samples, "linewatch_broker_connected") == 1
    assert value(samples, "linewatch_camera_state", state="streaming") == 1
    assert value(samples, "linewatch_status", linewatch_status="online") == 1
    assert value(samples, "linewatch_queue_depth", queue="inference") >= 0
    assert value(samples, "linewatch_journal_backlog") >= 0

    # stats mirrors the same figures, counted up to its own frames_out.
    frames_out = stats["frames_out"]
    mirrored = per_product(first_results(sub, frames_out))
    assert stats["verdicts"] == {p: {v: n for (q, v), n in mirrored.items() if q == p} for p, _ in mirrored}
    assert stats["frames_inspected"] + stats["not_inspected_count"] == frames_out
    assert stats["frames_inspected"] == stats["pass_count"] + stats["fail_count"]
    assert stats["frames_acquired"] >= frames_out and stats["dropped"] == 0
    assert set(stats["latency_ms"]) == STAGES
    assert all(stats["latency_ms"][s]["p50_ms"] is not None for s in STAGES)
    assert stats["camera"] == "streaming" and stats["publisher"]["connected"] is True
    assert stats["product_switches"] == 0 and stats["bundle"] == bundle
    assert isinstance(stats["journal_backlog"], int)

    # The password went to the broker only: not into /metrics, stats, any message or the log.
    assert all(secret not in text for text in scrapes)
    assert all(secret.encode() not in m.payload for m in sub.messages)
    assert secret not in daemon.output()


def test_bundle_info_is_cleared_when_the_daemon_stops(broker: Broker, products: Path, tmp_path: Path) -> None:
    """While the daemon runs, /metrics names the active bundle; once it has stopped, it names none."""
    port = free_port()
    config = daemon_config(tmp_path / "linewatch.toml", camera=CAMERA, products_dir=products,
                           active="stripes-part", mqtt_port=broker.port, metrics={"port": port})  # fmt: skip
    daemon = DaemonThread(config)
    try:
        daemon.pipeline()  # made after the endpoint is up
        deadline = time.monotonic() + 60
        while True:
            _, samples = scrape(port)
            running = [lab for n, lab, v in samples if n == "linewatch_bundle_info" and v == 1]
            if running and running[0].get("product") == "stripes-part":
                break
            assert time.monotonic() < deadline, f"no bundle named within 60 s: {running}"
            time.sleep(0.1)
    finally:
        assert daemon.stop() == 0
    assert running[0]["bundle"].startswith("stripes-part@")
    assert running[0]["backend"].startswith("onnxruntime")

    # The endpoint is down with the daemon: read the registry it served.
    metrics = daemon.daemon.metrics
    assert metrics is not None
    stopped = parse(generate_latest(metrics.registry).decode())
    assert [lab for n, lab, _ in stopped if n == "linewatch_bundle_info"] == [
        {"product": "", "bundle": "", "backend": ""}
    ]
    assert value(stopped, "linewatch_status", linewatch_status="stopped") == 1
    assert value(stopped, "linewatch_frames_acquired_total") >= 1

"""`linewatch run` as a user runs it (a subprocess), against a real mosquitto: retained online, every result
in order, a reject for every non-pass, heatmaps that decode, stopped on SIGTERM after a drain, offline via
the last will on SIGKILL, and numbering that continues across restarts."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import cv2
import numpy as np
import pytest
from daemon_support import DaemonProcess, daemon_config, fit_stripes_product, journal_records
from harness import Broker
from mqtt_support import Subscriber, first_seen_seqs

pytestmark = [pytest.mark.mosquitto, pytest.mark.slow]

TOPICS = "linewatch/e2e/#"
# Stripes with the defects a plain random-feature network sees best: this test is about the daemon, not
# about accuracy (benchmarks/accuracy.py is).
CAMERA = {"kind": "synthetic", "family": "stripes", "width": 192, "height": 192, "rate_hz": 25.0,
          "defect_rate": 0.3, "defect_kinds": ["noise_patch", "crack", "spot"], "seed": 11}


@pytest.fixture(scope="module")
def products(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The product fitted on good parts of the camera's own family (another seed than the camera's)."""
    root = tmp_path_factory.mktemp("products") / "products"
    fit_stripes_product(root, 192)
    return root


def status_states(sub: Subscriber) -> list[str]:
    return [json.loads(m.payload)["state"] for m in sub.on("status")]


def test_results_rejects_heatmaps_and_status_over_mosquitto(
    broker: Broker, products: Path, tmp_path: Path
) -> None:
    config = daemon_config(
        tmp_path / "linewatch.toml",
        camera={**CAMERA, "frame_count": 80},
        products_dir=products,
        active="stripes-part",
        mqtt_port=broker.port,
        mqtt={"heatmap_max_per_s": 100.0},
    )
    early = Subscriber(broker.port, [TOPICS])
    daemon = DaemonProcess(config)
    try:
        early.wait_for(lambda: "online" in status_states(early), 30, "status online")
        late = Subscriber(broker.port, ["linewatch/e2e/status"])
        late.wait_for(lambda: bool(late.on("status")), 5, "the retained status")
        first = late.on("status")[0]
        assert first.retain and json.loads(first.payload)["state"] == "online"
        late.close()
        assert daemon.wait(60) == 0, daemon.output()
        early.wait_for(lambda: "stopped" in status_states(early), 10, "status stopped")
    finally:
        daemon.stop()
        early.close()

    results = early.json("result")
    seqs = first_seen_seqs(results)
    assert seqs == list(range(80)), daemon.output()
    by_seq = {r["seq"]: r for r in results}
    assert [by_seq[s]["frame_id"] for s in seqs] == list(range(80))
    assert {r["product"] for r in results} == {"stripes-part"}
    assert all(r["bundle"].startswith("stripes-part@") for r in results)
    non_pass = {s for s, r in by_seq.items() if r["verdict"] != "pass"}
    rejects = {r["seq"] for r in early.json("reject")}
    assert rejects == non_pass and non_pass, "a reject for every fail/not_inspected, none for a pass"
    fails = {s for s, r in by_seq.items() if r["verdict"] == "fail"}
    for s in fails:
        assert by_seq[s]["location"] is not None and by_seq[s]["score"] > by_seq[s]["threshold"]
    assert all("total" in r["latencies_ms"] for r in results)

    heatmaps = early.on("heatmap")
    assert heatmaps, "no heatmap published"
    heatmap_seqs = []
    for message in heatmaps:
        props = dict(message.properties.UserProperty)  # type: ignore[union-attr]
        assert message.properties.ContentType == "image/png"  # type: ignore[union-attr]
        image = cv2.imdecode(np.frombuffer(message.payload, np.uint8), cv2.IMREAD_UNCHANGED)
        assert image is not None and image.shape == (192, 192, 3)
        heatmap_seqs.append(int(props["seq"]))
    assert set(heatmap_seqs) == fails  # every fail (the rate limit is far above the fail rate)

    states = status_states(early)
    assert states[-1] == "stopped" and "online" in states
    stopped = json.loads(early.on("status")[-1].payload)
    assert stopped["reason"] == "source exhausted" and stopped["product"] == "stripes-part"
    assert early.on("stats"), "no stats message"
    # The journal (outbox and audit trail) holds the same 80 results, all acknowledged by the broker.
    records = journal_records(tmp_path / "state")
    assert [r.result.seq for r in records] == list(range(80))
    assert all(r.published_unix_ns is not None for r in records)


def test_sigterm_drains_then_a_restart_continues_numbering_and_sigkill_leaves_offline(
    broker: Broker, products: Path, tmp_path: Path
) -> None:
    config = daemon_config(
        tmp_path / "linewatch.toml", camera=CAMERA, products_dir=products, active="stripes-part",
        mqtt_port=broker.port,
    )
    sub = Subscriber(broker.port, [TOPICS])
    try:
        daemon = DaemonProcess(config)
        sub.wait_for(lambda: len(sub.on("result")) >= 20, 60, "20 results")
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(30) == 0, daemon.output()
        daemon.stop()
        sub.wait_for(lambda: "stopped" in status_states(sub), 10, "status stopped")
        first_run = first_seen_seqs(sub.json("result"))
        n = len(first_run)
        assert first_run == list(range(n))  # every acquired frame published, in order, before stopped
        assert "Traceback" not in daemon.output()

        daemon = DaemonProcess(config)
        sub.wait_for(lambda: len(first_seen_seqs(sub.json("result"))) >= n + 10, 60, "results of run 2")
        daemon.signal(signal.SIGKILL)
        daemon.wait(10)
        daemon.stop()
        sub.wait_for(lambda: status_states(sub)[-1] == "offline", 15, "offline via the last will")
        seqs = first_seen_seqs(sub.json("result"))
        assert seqs[: n + 10] == list(range(n + 10))  # run 2 continued at n, from the journal
    finally:
        sub.close()
    late = Subscriber(broker.port, ["linewatch/e2e/status"])
    try:
        late.wait_for(lambda: bool(late.on("status")), 5, "retained status")
        assert json.loads(late.on("status")[0].payload)["state"] == "offline"
    finally:
        late.close()

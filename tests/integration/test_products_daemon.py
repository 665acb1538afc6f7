"""Products on a running line, as an integrator drives them: ``linewatch run`` in its own process against a
real mosquitto; product/set and product/prepare over MQTT and from the CLI, SIGHUP, a damaged bundle and
bad ids under load, fuzzed commands, operator feedback, drift, and the journal replaying across a restart."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from daemon_support import DaemonProcess, daemon_config, journal_records
from harness import Broker
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mqtt_support import Subscriber, first_seen_seqs
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from products_support import backbone, corrupt_copy, expected_score, write_product

from linewatch.acquisition import SyntheticCameraConfig, SyntheticSource
from linewatch.bundle.manifest import Calibration
from linewatch.bundle.registry import LoadedBundle, load_product

pytestmark = [pytest.mark.mosquitto, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
STATION = "line1"
BASE = f"linewatch/{STATION}"
CAMERA: dict[str, Any] = {"kind": "synthetic", "family": "stripes", "width": 64, "height": 64,
                          "rate_hz": 20.0, "defect_rate": 0.3, "seed": 3}


@pytest.fixture(scope="module")
def products(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("line") / "products"
    shared, other = backbone(1), backbone(2)
    write_product(root, "alpha", shared, threshold=1.0)
    write_product(root, "beta", shared, offset=1.0, threshold=2.0)
    write_product(root, "gamma", other, offset=0.5, threshold=1.5)
    corrupt_copy(root, "gamma", "broken")
    return root


def camera_frame(frame_id: int) -> np.ndarray:
    config = SyntheticCameraConfig(**{**CAMERA, "rate_hz": None})
    return SyntheticSource(config).render(frame_id)[0]


class Line:
    """The station's topics seen by an integrator's client: results, product state, status, answers."""

    def __init__(self, port: int) -> None:
        self.sub = Subscriber(port, [f"{BASE}/#"])

    def results(self) -> list[dict[str, Any]]:
        return self.sub.json("result")

    def wait_results(self, n: int, product: str | None = None, timeout_s: float = 60.0) -> None:
        def enough() -> bool:
            rs = [r for r in self.results() if product is None or r["product"] == product]
            return len(rs) >= n
        self.sub.wait_for(enough, timeout_s, f"{n} results" + (f" of {product}" if product else ""))

    def product_state(self) -> dict[str, Any]:
        states = self.sub.json("product")
        return states[-1] if states else {}

    def answers(self, request_id: str) -> list[dict[str, Any]]:
        return [a for a in self.sub.json("product/response") if a["request_id"] == request_id]

    def command(self, action: str, payload: dict[str, Any], timeout_s: float = 60.0) -> dict[str, Any]:
        request_id = uuid.uuid4().hex
        body = json.dumps({**payload, "request_id": request_id}).encode()
        self.sub.client.publish(f"{BASE}/{action}", body, qos=1)
        self.sub.wait_for(lambda: bool(self.answers(request_id)), timeout_s, f"the answer to {action}")
        return self.answers(request_id)[0]

    def close(self) -> None:
        self.sub.close()


@contextmanager
def running(config: Path, broker: Broker) -> Iterator[tuple[Line, DaemonProcess]]:
    """The station's topics (subscribed first) and ``linewatch run`` with ``config``; both closed on exit."""
    line = Line(broker.port)
    daemon = DaemonProcess(config)
    try:
        yield line, daemon
    finally:
        daemon.stop()
        line.close()


def line_config(tmp_path: Path, broker: Broker, products_dir: Path, **overrides: Any) -> Path:
    """The line's config: CAMERA, ``alpha`` active (each may be overridden), this broker and station."""
    values: dict[str, Any] = {"camera": CAMERA, "products_dir": products_dir, "active": "alpha", **overrides}
    return daemon_config(tmp_path / "lw.toml", mqtt_port=broker.port, station=STATION, **values)


def status_of(line: Line) -> list[dict[str, Any]]:
    return line.sub.json("status")


def cli(*args: str, timeout_s: float = 90.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "linewatch", *args], capture_output=True, text=True,
                          timeout=timeout_s, cwd=REPO)


def segments(names: list[str]) -> list[str]:
    out: list[str] = []
    for name in names:
        if not out or out[-1] != name:
            out.append(name)
    return out


def test_products_switch_under_load_over_mqtt_cli_and_sighup(
    broker: Broker, products: Path, tmp_path: Path
) -> None:
    config = line_config(tmp_path, broker, products)
    with running(config, broker) as (line, daemon):
        line.wait_results(10, "alpha")
        assert line.product_state()["active"] == "alpha"

        done = cli("product", "set", "beta", "--config", str(config))  # shared backbone: prototype swap
        assert done.returncode == 0, done.stderr
        assert "beta active" in done.stdout
        line.wait_results(10, "beta")

        prepared = line.command("product/prepare", {"product_id": "gamma"})  # another backbone, beside
        assert prepared["ok"] and prepared["command"] == "prepare" and prepared["product_id"] == "gamma"
        state = line.product_state()
        assert state["active"] == "beta" and [p["product"] for p in state["prepared"]] == ["gamma"]
        assert line.command("product/set", {"product_id": "gamma"})["ok"]
        line.wait_results(10, "gamma")

        n = len(line.results())
        broken = line.command("product/set", {"product_id": "broken"})
        assert not broken["ok"] and "sha256" in broken["error"] and "model.onnx" in broken["error"]
        unknown = line.command("product/prepare", {"product_id": "nope"})
        assert not unknown["ok"] and "no such bundle directory" in unknown["error"]
        for bad in ("../alpha", "a/b", ".."):
            answer = line.command("product/set", {"product_id": bad})
            assert not answer["ok"] and "product_id" in answer["error"], answer
        refused = cli("product", "set", "nope", "--config", str(config))
        assert refused.returncode == 1 and "no such bundle directory" in refused.stderr
        assert cli("product", "set", "../x", "--config", str(config)).returncode == 2
        state = line.product_state()
        assert state["active"] == "gamma" and "broken" not in json.dumps(state["prepared"])
        line.wait_results(n + 10, "gamma")  # inspection went on with gamma

        n_beta = len([r for r in line.results() if r["product"] == "beta"])
        text = config.read_text()
        assert text.count('active = "alpha"') == 1
        config.write_text(text.replace('active = "alpha"', 'active = "beta"'))  # the operator edits it
        daemon.signal(signal.SIGHUP)
        line.sub.wait_for(lambda: line.product_state().get("active") == "beta", 30, "beta after SIGHUP")
        assert line.product_state()["last_error"] is None
        line.wait_results(n_beta + 10, "beta")
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(30) == 0, daemon.output()
        line.sub.wait_for(lambda: status_of(line)[-1]["state"] == "stopped", 10, "status stopped")

    results = line.results()
    seqs = first_seen_seqs(results)
    assert seqs == list(range(len(seqs))), "a frame was lost or doubled"
    by_seq = {r["seq"]: r for r in results}
    ordered = [by_seq[s] for s in seqs]
    assert segments([r["product"] for r in ordered]) == ["alpha", "beta", "gamma", "beta"]
    bundles = {pid: load_product(products, pid) for pid in ("alpha", "beta", "gamma")}
    expected: dict[tuple[int, str], float] = {}
    for r in ordered:
        assert r["verdict"] != "not_inspected", r
        assert r["bundle"] == bundles[r["product"]].bundle_id
        assert r["threshold"] == bundles[r["product"]].manifest.threshold
        key = (r["frame_id"], r["product"])
        if key not in expected:
            expected[key] = expected_score(bundles[r["product"]], camera_frame(r["frame_id"]))
        assert r["score"] == pytest.approx(expected[key], rel=1e-4, abs=1e-5), (r["seq"], r["product"])
    assert status_of(line)[-1]["product"] == "beta"  # the status followed the switches
    assert "Traceback" not in daemon.output()


def _publish(line: Line, topic: str, payload: bytes, correlation: bytes) -> None:
    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    props.CorrelationData = correlation
    line.sub.client.publish(f"{BASE}/{topic}", payload, qos=1, properties=props)


def _answers_by_correlation(line: Line) -> dict[bytes, int]:
    counts: dict[bytes, int] = {}
    for m in line.sub.on("product/response"):
        corr = getattr(m.properties, "CorrelationData", None)
        if corr is not None:
            counts[bytes(corr)] = counts.get(bytes(corr), 0) + 1
    return counts


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=8,
)
product_ids = st.sampled_from(["nope", "../alpha", "a/b", "", "..", "x" * 80, "gamma\n", "ALPHA", "béta"])
command_payloads = st.one_of(
    st.binary(max_size=64),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries(
        {"product_id": product_ids | st.text(max_size=10) | st.integers()},
        optional={"request_id": st.text(max_size=20) | st.integers(), "action": st.sampled_from(
            ["set", "prepare", "feedback", "delete", 1]), "extra": json_values},
    ).map(lambda d: json.dumps(d).encode()),
    st.fixed_dictionaries(
        {"seq": st.integers(-5, 10**12) | st.text(max_size=4),
         "label": st.sampled_from(["good", "defect", "ok"])},
        optional={"note": st.text(max_size=30)},
    ).map(lambda d: json.dumps(d).encode()),
    st.just(b"{" * 5000),  # beyond max_command_bytes
)


def test_fuzzed_commands_are_each_answered_once_and_never_disturb_inspection(
    broker: Broker, products: Path, tmp_path: Path
) -> None:
    sent: list[bytes] = []
    with running(line_config(tmp_path, broker, products), broker) as (line, daemon):
        line.wait_results(5, "alpha")

        @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
        @given(topic=st.sampled_from(["product/set", "product/prepare", "feedback"]),
               payload=command_payloads)
        def one_command(topic: str, payload: bytes) -> None:
            correlation = uuid.uuid4().bytes
            sent.append(correlation)
            _publish(line, topic, payload, correlation)
            line.sub.wait_for(lambda: correlation in _answers_by_correlation(line), 30,
                              f"an answer on {topic}")

        one_command()
        time.sleep(1.0)  # a second answer to any of them would have arrived by now
        counts = _answers_by_correlation(line)
        assert all(counts.get(c) == 1 for c in sent), "a command was answered more or less than once"
        n = len(line.results())
        line.wait_results(n + 10)  # still inspecting
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(30) == 0, daemon.output()
    seqs = first_seen_seqs(line.results())
    assert seqs == list(range(len(seqs)))
    assert {r["product"] for r in line.results()} == {"alpha"}
    assert "Traceback" not in daemon.output()


def test_feedback_fills_a_review_folder_trainer_evaluate_accepts_and_drift_degrades_the_status(
    broker: Broker, tmp_path: Path
) -> None:
    # A bundle whose calibration says good parts scored ~0.01, while this camera's parts score near the
    # threshold: the line has drifted. The threshold splits the frames so that some pass and some fail.
    root = tmp_path / "products"
    net = backbone(1)
    probe = write_product(root, "drifty", net)
    scores = sorted(expected_score(probe, camera_frame(i)) for i in range(40))
    threshold = float(np.percentile(scores, 60))
    calibration = Calibration(method="gumbel", target_frr=0.005, n_images=40, threshold=threshold,
                              good_scores={"p50": 0.005, "p95": 0.01, "p99": 0.012})
    shutil.rmtree(root / "drifty")
    write_product(root, "drifty", net, threshold=threshold, calibration=calibration)
    review = tmp_path / "review"
    config = line_config(
        tmp_path, broker, root, active="drifty",
        products={"review_dir": review, "drift": {"window": 40, "min_samples": 10}},
        journal={"images_every_nth_pass": 1},
    )  # fmt: skip
    with running(config, broker) as (line, daemon):
        line.sub.wait_for(lambda: any(s["state"] == "degraded" and "score drift" in (s["reason"] or "")
                                      for s in status_of(line)), 60, "status degraded by drift")
        line.sub.wait_for(lambda: any(s.get("drift") for s in line.sub.json("stats")), 20, "drift in stats")
        drift = [s["drift"] for s in line.sub.json("stats") if s.get("drift")][-1]
        assert drift["window"] >= 10 and drift["calibration_good_p95"] == 0.01
        assert drift["threshold"] == pytest.approx(threshold) and 0.5 < drift["margin_ratio"] <= 1.0
        line.wait_results(30)
        results = line.results()
        fails = [r["seq"] for r in results if r["verdict"] == "fail"][:2]
        passes = [r["seq"] for r in results if r["verdict"] == "pass"][:4]
        assert len(fails) == 2 and len(passes) == 4
        labels = [(fails[0], "good"), (fails[1], "defect"), (passes[0], "defect"), (passes[1], "good"),
                  (passes[2], "good"), (passes[3], "defect")]
        for seq, label in labels:
            answer = line.command("feedback", {"seq": seq, "label": label, "note": "checked by hand"})
            assert answer["ok"] and answer["command"] == "feedback", answer
        unknown = line.command("feedback", {"seq": 10**9, "label": "good"})
        assert not unknown["ok"] and f"no decision with seq {10**9}" in unknown["error"]
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(30) == 0, daemon.output()
    folder = review / "drifty"
    assert sorted(p.name for p in (folder / "train" / "good").iterdir()) == [f"{fails[0]:012d}.png"]
    assert len(list((folder / "test" / "good").iterdir())) == 2
    assert len(list((folder / "test" / "defect").iterdir())) == 3
    log = [json.loads(x) for x in (folder / "feedback.jsonl").read_text().splitlines()]
    assert [e["kind"] for e in log] == ["false_reject", "confirmed_reject", "miss", "confirmed_pass",
                                        "confirmed_pass", "miss"]
    records = journal_records(tmp_path / "state")
    labelled = {r.result.seq: r.feedback_label for r in records if r.feedback_label}
    assert labelled == dict(labels)
    report = tmp_path / "report"
    evaluated = subprocess.run(
        [sys.executable, "-m", "trainer", "evaluate", "--bundle", str(root / "drifty"), "--data", str(folder),
         "--out", str(report), "--threads", "1"], capture_output=True, text=True, timeout=300, cwd=REPO,
    )
    assert evaluated.returncode == 0, evaluated.stderr
    metrics = json.loads((report / "metrics.json").read_text())
    assert (metrics["n_good"], metrics["n_defect"]) == (2, 3)


def test_results_journaled_while_the_broker_is_away_are_sent_in_order_after_a_restart(
    broker: Broker, products: Path, tmp_path: Path
) -> None:
    camera = {**CAMERA, "frame_count": 30, "rate_hz": 50.0}
    config = line_config(tmp_path, broker, products, camera=camera)
    broker.stop()
    first = DaemonProcess(config)  # the whole first run without a broker: 30 results wait on disk
    try:
        assert first.wait(60) == 0, first.output()
    finally:
        first.stop()
    records = journal_records(tmp_path / "state")
    assert [r.result.seq for r in records] == list(range(30))
    assert all(r.published_unix_ns is None for r in records)
    broker.start()
    config.write_text(config.read_text().replace("frame_count = 30", "frame_count = 10"))
    with running(config, broker) as (line, second):
        line.wait_results(40)
        assert second.wait(60) == 0, second.output()
    results = line.results()
    assert first_seen_seqs(results) == list(range(40))  # the old 30 first, in order, then the new 10
    first = {r["seq"]: r for r in reversed(results)}  # the first copy of each (at-least-once)
    assert [first[s]["frame_id"] for s in range(40)] == list(range(30)) + list(range(10))
    rejects = first_seen_seqs(line.sub.json("reject"))
    assert rejects == sorted(rejects)
    assert set(rejects) == {r["seq"] for r in results if r["verdict"] != "pass"}
    assert all(r.published_unix_ns is not None for r in journal_records(tmp_path / "state"))


def test_the_retained_product_state_and_the_status_follow_a_switch(
    broker: Broker, products: Path, tmp_path: Path
) -> None:
    """The retained product state survives for a late subscriber (a line PLC that reconnects)."""
    with running(line_config(tmp_path, broker, products), broker) as (line, daemon):
        line.wait_results(3, "alpha")
        assert line.command("product/set", {"product_id": "gamma"})["ok"]
        line.sub.wait_for(lambda: status_of(line)[-1].get("product") == "gamma", 10, "status naming gamma")
        late = Subscriber(broker.port, [f"{BASE}/product"])
        try:
            late.wait_for(lambda: bool(late.on("product")), 5, "the retained product state")
            message = late.on("product")[0]
            state = json.loads(message.payload)
            assert message.retain and state["active"] == "gamma" and state["schema"] == "linewatch.product/1"
            bundle: LoadedBundle = load_product(products, "gamma")
            assert state["active_bundle"] == bundle.bundle_id
        finally:
            late.close()
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(30) == 0, daemon.output()

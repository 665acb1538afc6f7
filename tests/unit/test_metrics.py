"""The Prometheus endpoint, scraped over real HTTP on a free loopback port."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from harness import free_port
from prometheus_client.parser import text_string_to_metric_families
from pydantic import ValidationError

import linewatch
from linewatch.errors import ConfigError
from linewatch.frames import DefectLocation, Verdict, VerdictKind
from linewatch.service.metrics import (
    MAX_CAMERA_STATES,
    STAGES,
    Metrics,
    MetricsConfig,
    MetricsServer,
    serve,
)

DOCUMENTED_FAMILIES = {
    "linewatch_frames_acquired",
    "linewatch_frames_inspected",
    "linewatch_frames_not_inspected",
    "linewatch_frames_dropped",
    "linewatch_verdicts",
    "linewatch_stage_latency_seconds",
    "linewatch_queue_depth",
    "linewatch_journal_backlog",
    "linewatch_broker_connected",
    "linewatch_camera_state",
    "linewatch_status",
    "linewatch_product_switches",
    "linewatch_bundle_info",
    "linewatch_build_info",
    "process_virtual_memory_bytes",
    "process_resident_memory_bytes",
    "process_open_fds",
    "process_max_fds",
    "process_threads",
    "process_cpu_seconds",
}


def verdict(seq: int, kind: VerdictKind, product: str | None = "p1") -> Verdict:
    return Verdict(
        seq=seq,
        frame_id=seq,
        verdict=kind,
        product_id=product,
        bundle_id="b1" if product else None,
        score=None if kind is VerdictKind.NOT_INSPECTED else 0.5,
        threshold=None if kind is VerdictKind.NOT_INSPECTED else 1.0,
        location=DefectLocation(x=1, y=2) if kind is VerdictKind.FAIL else None,
        timestamp_ns=seq,
        acquired_ns=seq,
        reason="camera timeout" if kind is VerdictKind.NOT_INSPECTED else None,
    )


def scrape(server: MetricsServer) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=5) as response:
        assert response.status == 200
        return str(response.read().decode())


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """(sample name, labels) → value."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(text: str, name: str, **labels: str) -> float:
    return samples(text)[(name, frozenset(labels.items()))]


@pytest.fixture
def served() -> Iterator[tuple[Metrics, MetricsServer]]:
    metrics = Metrics(station="press-3")
    server = serve(MetricsConfig(port=free_port()), metrics)
    try:
        yield metrics, server
    finally:
        server.shutdown()


def test_counters_and_verdicts_per_product(served: tuple[Metrics, MetricsServer]) -> None:
    metrics, server = served
    # Running totals from the pipeline's snapshot: the counters advance to them, never back.
    metrics.set_frame_totals(acquired=1, dropped=0)
    metrics.set_frame_totals(acquired=5, dropped=1)
    metrics.set_frame_totals(acquired=5, dropped=1)
    for seq, kind, product in [
        (0, VerdictKind.PASS, "p1"),
        (1, VerdictKind.PASS, "p1"),
        (2, VerdictKind.FAIL, "p1"),
        (3, VerdictKind.NOT_INSPECTED, "p1"),
        (4, VerdictKind.PASS, "p2"),
        (5, VerdictKind.NOT_INSPECTED, None),  # before any product was loaded
    ]:
        metrics.observe_verdict(verdict(seq, kind, product))

    text = scrape(server)
    assert value(text, "linewatch_frames_acquired_total") == 5
    assert value(text, "linewatch_frames_dropped_total") == 1
    assert value(text, "linewatch_frames_inspected_total") == 4
    assert value(text, "linewatch_frames_not_inspected_total") == 2
    assert value(text, "linewatch_verdicts_total", product="p1", verdict="pass") == 2
    assert value(text, "linewatch_verdicts_total", product="p1", verdict="fail") == 1
    assert value(text, "linewatch_verdicts_total", product="p1", verdict="not_inspected") == 1
    assert value(text, "linewatch_verdicts_total", product="p2", verdict="pass") == 1
    assert value(text, "linewatch_verdicts_total", product="", verdict="not_inspected") == 1
    assert value(text, "linewatch_build_info", version=linewatch.__version__, station="press-3") == 1


def test_stage_latency_histograms_in_seconds(served: tuple[Metrics, MetricsServer]) -> None:
    metrics, server = served
    text = scrape(server)
    for stage in STAGES:  # present before any traffic, so dashboards and alerts never see "no data"
        assert value(text, "linewatch_stage_latency_seconds_count", stage=stage) == 0

    metrics.observe_stage_latency("inference", 0.004)
    metrics.observe_stage_latency("inference", 0.2)
    metrics.observe_stage_latency("publish", 0.0007)
    # The pipeline's own per-verdict latencies (milliseconds) are observed with the verdict.
    timed = replace(verdict(0, VerdictKind.PASS), latencies_ms={
        "queue": 30.0, "inference": 4.0, "scoring": 1.0, "total": 12_000.0, "camera_gap": 5.0,
    })
    metrics.observe_verdict(timed)
    text = scrape(server)
    assert value(text, "linewatch_stage_latency_seconds_bucket", stage="inference", le="0.0025") == 0
    assert value(text, "linewatch_stage_latency_seconds_bucket", stage="inference", le="0.005") == 2
    assert value(text, "linewatch_stage_latency_seconds_bucket", stage="inference", le="0.25") == 3
    assert value(text, "linewatch_stage_latency_seconds_count", stage="inference") == 3
    assert value(text, "linewatch_stage_latency_seconds_sum", stage="inference") == pytest.approx(0.208)
    assert value(text, "linewatch_stage_latency_seconds_bucket", stage="queue", le="0.025") == 0
    assert value(text, "linewatch_stage_latency_seconds_bucket", stage="queue", le="0.05") == 1
    assert value(text, "linewatch_stage_latency_seconds_count", stage="scoring") == 1
    assert value(text, "linewatch_stage_latency_seconds_bucket", stage="publish", le="0.001") == 1
    assert value(text, "linewatch_stage_latency_seconds_bucket", stage="total", le="10.0") == 0
    assert value(text, "linewatch_stage_latency_seconds_bucket", stage="total", le="+Inf") == 1
    assert "camera_gap" not in text

    with pytest.raises(ValueError, match=r"unknown pipeline stage 'infer'.*queue, inference, scoring"):
        metrics.observe_stage_latency("infer", 0.1)


def test_levels_and_states(served: tuple[Metrics, MetricsServer]) -> None:
    metrics, server = served
    metrics.set_queue_depth(7)
    metrics.set_queue_depth(2, queue="publish")
    metrics.set_journal_backlog(1234)
    metrics.set_broker_connected(True)
    metrics.set_camera_state("streaming")
    metrics.set_camera_state("reconnecting")
    metrics.set_status("degraded")
    text = scrape(server)
    assert value(text, "linewatch_queue_depth", queue="inference") == 7
    assert value(text, "linewatch_queue_depth", queue="publish") == 2
    assert value(text, "linewatch_journal_backlog") == 1234
    assert value(text, "linewatch_broker_connected") == 1
    assert value(text, "linewatch_camera_state", state="reconnecting") == 1
    assert value(text, "linewatch_camera_state", state="streaming") == 0
    assert value(text, "linewatch_status", linewatch_status="degraded") == 1
    assert value(text, "linewatch_status", linewatch_status="online") == 0

    metrics.set_broker_connected(False)
    metrics.set_camera_state("streaming")
    metrics.set_status("online")
    text = scrape(server)
    assert value(text, "linewatch_broker_connected") == 0
    assert value(text, "linewatch_camera_state", state="streaming") == 1
    assert value(text, "linewatch_camera_state", state="reconnecting") == 0
    assert value(text, "linewatch_status", linewatch_status="online") == 1

    with pytest.raises(ValueError):
        metrics.set_status("exploded")


def test_camera_states_are_capped() -> None:
    metrics = Metrics()
    for i in range(MAX_CAMERA_STATES + 5):
        metrics.set_camera_state(f"state-{i}")
    series = [
        s for family in metrics.registry.collect() if family.name == "linewatch_camera_state"
        for s in family.samples
    ]
    assert len(series) == MAX_CAMERA_STATES + 1  # the cap plus "other"
    assert {s.labels["state"] for s in series if s.value == 1} == {"other"}


def test_product_switches_and_bundle_info(served: tuple[Metrics, MetricsServer]) -> None:
    metrics, server = served
    metrics.set_product(None, None, None, switches=0)  # started without a product
    assert value(scrape(server), "linewatch_bundle_info", product="", bundle="", backend="") == 1
    metrics.set_product("p1", "p1-2024-05-01", "onnxruntime", switches=0)
    text = scrape(server)
    assert value(text, "linewatch_product_switches_total") == 0  # the first load is not a switch
    info = {"product": "p1", "bundle": "p1-2024-05-01", "backend": "onnxruntime"}
    assert value(text, "linewatch_bundle_info", **info) == 1

    # The pipeline counted two switches (p1 → p2 → p1 → ... between two refreshes); p2 is active now.
    metrics.set_product("p2", "p2-b", "tensorrt", switches=2)
    metrics.set_product("p2", "p2-b", "tensorrt", switches=2)
    text = scrape(server)
    assert value(text, "linewatch_product_switches_total") == 2
    assert value(text, "linewatch_bundle_info", product="p2", bundle="p2-b", backend="tensorrt") == 1
    assert not any(name == "linewatch_bundle_info" and ("bundle", "p1-2024-05-01") in labels
                   for name, labels in samples(text))


def test_registries_are_private_and_several_endpoints_coexist() -> None:
    a, b = Metrics(station="a"), Metrics(station="b")
    server_a = serve(MetricsConfig(port=free_port()), a)
    server_b = serve(MetricsConfig(port=free_port()), b)
    try:
        a.set_frame_totals(acquired=3, dropped=0)
        b.set_frame_totals(acquired=11, dropped=0)
        assert value(scrape(server_a), "linewatch_frames_acquired_total") == 3
        assert value(scrape(server_b), "linewatch_frames_acquired_total") == 11
    finally:
        server_a.shutdown()
        server_b.shutdown()


def test_only_documented_families_no_config_or_secret_values(served: tuple[Metrics, MetricsServer]) -> None:
    """Nothing like a config dump, environment or broker URL can reach /metrics: the family set is fixed
    and every label value comes from the documented arguments."""
    metrics, server = served
    secret = "s3cr3t-broker-password"
    os.environ["LINEWATCH_TEST_SECRET"] = secret  # a process-wide secret, as systemd credentials would be
    try:
        metrics.observe_verdict(verdict(0, VerdictKind.NOT_INSPECTED))
        metrics.set_product("p1", "b1", "onnxruntime", switches=0)
        metrics.set_camera_state("streaming")
        text = scrape(server)
    finally:
        del os.environ["LINEWATCH_TEST_SECRET"]
    families = {family.name for family in text_string_to_metric_families(text)}
    # prometheus_client adds a <name>_created timestamp beside every counter and histogram.
    created = {name for name in families if name.endswith("_created")}
    assert {name.removesuffix("_created") for name in created} <= DOCUMENTED_FAMILIES
    assert families - created == DOCUMENTED_FAMILIES
    assert secret not in text
    # The not_inspected reason is free text (it may quote a device or broker error): never a label.
    assert "camera timeout" not in text


def test_process_metrics_track_rss_fds_and_threads(served: tuple[Metrics, MetricsServer]) -> None:
    _, server = served
    before = scrape(server)
    rss = value(before, "process_resident_memory_bytes")
    assert 10e6 < rss < 4e9
    assert value(before, "process_max_fds") > 0

    files = [open(os.devnull, "rb") for _ in range(10)]  # noqa: SIM115 (held open on purpose)
    stop = threading.Event()
    worker = threading.Thread(target=stop.wait, name="test-extra-thread")
    worker.start()
    try:
        during = scrape(server)
    finally:
        stop.set()
        worker.join()
        for f in files:
            f.close()
    assert value(during, "process_open_fds") - value(before, "process_open_fds") == 10
    assert value(during, "process_threads") - value(before, "process_threads") == 1


def test_port_in_use_is_a_config_error_naming_the_setting() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError) as info:
            serve(MetricsConfig(port=port), Metrics())
    assert info.value.problems[0][0] == "metrics.port"
    assert f"127.0.0.1:{port}" in info.value.problems[0][1]


def test_loopback_by_default_and_shutdown_releases_port_and_thread() -> None:
    config = MetricsConfig(port=free_port())
    assert config.host == "127.0.0.1"
    server = serve(config, Metrics())
    assert server.host == "127.0.0.1"
    scrape(server)
    server.shutdown()
    assert not any(t.name == "linewatch-metrics" for t in threading.enumerate())
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", config.port), timeout=2).close()
    # The port can be taken again at once (a restarted daemon must not fail on its own old socket).
    serve(config, Metrics()).shutdown()


def test_config_model_is_strict() -> None:
    with pytest.raises(ValidationError, match="extra"):
        MetricsConfig.model_validate({"port": 9850, "bind": "0.0.0.0"})
    with pytest.raises(ValidationError):
        MetricsConfig(port=70000)
    assert all(field.description for field in MetricsConfig.model_fields.values())


PROC_SUBSET_SCRIPT = """
import prometheus_client
from prometheus_client import CollectorRegistry, generate_latest
from linewatch.service.metrics import Metrics
stock = CollectorRegistry()
prometheus_client.ProcessCollector(registry=stock)
print("STOCK", generate_latest(stock).decode().count("process_resident_memory_bytes "))
print(generate_latest(Metrics().registry).decode())
"""


def test_process_metrics_survive_procsubset_pid(tmp_path: Path) -> None:
    """With ProcSubset=pid (a hardening drop-in may add it; the shipped unit does not, for ONNX Runtime's
    sake) /proc shows only per-process entries. Reproduce that /proc mount in private namespaces and check
    the process metrics are still there."""
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("util-linux unshare is not installed")
    inner = (
        "mount -t proc -o subset=pid,hidepid=invisible proc /proc && test ! -e /proc/stat && "
        f"exec {sys.executable} -c '{PROC_SUBSET_SCRIPT}'"
    )
    proc = subprocess.run(
        [unshare, "--user", "--map-root-user", "--mount", "--pid", "--fork", "sh", "-c", inner],
        capture_output=True, text=True, timeout=60, cwd=Path(__file__).resolve().parents[2],
    )
    if proc.returncode != 0 and "Operation not permitted" in proc.stderr:
        pytest.skip(f"private user/mount namespaces are not permitted here: {proc.stderr.strip()}")
    assert proc.returncode == 0, proc.stderr
    # prometheus_client's stock collector needs /proc/stat and reports nothing at all there ...
    assert "STOCK 0" in proc.stdout
    # ... ours still reports RSS, fds and threads.
    text = proc.stdout.split("\n", 1)[1]
    assert value(text, "process_resident_memory_bytes") > 1e6
    assert value(text, "process_open_fds") >= 3
    assert value(text, "process_threads") >= 1

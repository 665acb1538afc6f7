"""sd_notify over a real AF_UNIX socket, journald-friendly logging, and `linewatch run` under a
systemd-like supervisor: READY=1 once running, WATCHDOG=1 while the stages are alive, STOPPING=1 and exit 0
on SIGTERM, with every in-flight frame journaled."""

from __future__ import annotations

import io
import logging
import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
from daemon_support import DaemonProcess, daemon_config, journal_records
from harness import free_port

from linewatch.pipeline.pipeline import LatencySummary, PipelineSnapshot
from linewatch.pipeline.stages import AcquisitionCounters
from linewatch.service.logging_setup import setup_logging, summary_line
from linewatch.service.sdnotify import SystemdNotifier


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(0.2)
    try:
        yield sock, path
    finally:
        sock.close()


def received(sock: socket.socket) -> list[str]:
    out = []
    while True:
        try:
            out.append(sock.recv(4096).decode())
        except (TimeoutError, BlockingIOError):
            return out


def test_notifier_sends_datagrams_systemd_understands(notify_socket: tuple[socket.socket, str]) -> None:
    sock, path = notify_socket
    notifier = SystemdNotifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "4000000"})
    assert notifier.enabled and notifier.watchdog_interval_s == 2.0
    assert notifier.ready("inspecting")
    assert notifier.watchdog()
    assert notifier.stopping("draining")
    notifier.close()
    assert received(sock) == ["READY=1\nSTATUS=inspecting", "WATCHDOG=1", "STOPPING=1\nSTATUS=draining"]


def test_notifier_without_socket_or_for_another_pid_is_quiet() -> None:
    assert not SystemdNotifier({}).notify("READY=1")
    other = SystemdNotifier({"NOTIFY_SOCKET": "/nonexistent", "WATCHDOG_USEC": "1000", "WATCHDOG_PID": "1"})
    assert other.watchdog_interval_s is None
    assert not other.watchdog()  # a socket that is gone: counted, never raised
    assert other.failures == 1
    other.close()


def test_abstract_socket_address() -> None:
    name = f"linewatch-test-{os.getpid()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(1.0)
    try:
        notifier = SystemdNotifier({"NOTIFY_SOCKET": "@" + name})
        notifier.notify("READY=1")
        notifier.close()
        assert sock.recv(100) == b"READY=1"
    finally:
        sock.close()


def test_log_lines_without_time_stamps_under_journald() -> None:
    stream = io.StringIO()
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        setup_logging("INFO", stream=stream, environ={"JOURNAL_STREAM": "8:1234"})
        logging.getLogger("linewatch.test").warning("camera %s lost", "cam1")
        logging.getLogger("linewatch.test").debug("not shown")
        setup_logging("INFO", stream=stream, environ={})
        logging.getLogger("linewatch.test").info("plain")
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
    lines = stream.getvalue().splitlines()
    assert lines[0] == "<4>WARNING linewatch.test: camera cam1 lost"
    assert len(lines) == 2 and lines[1].endswith("INFO linewatch.test: plain") and lines[1][:4].isdigit()


def test_summary_line_has_rates_counts_and_latency() -> None:
    def snap(t_s: float, frames: int) -> PipelineSnapshot:
        return PipelineSnapshot(
            taken_ns=int(t_s * 1e9), window_s=10.0, frames_in=frames, frames_out=frames, passed=frames - 3,
            failed=2, not_inspected=1, not_inspected_reasons={"dropped": 1},
            verdicts={"p": {"pass": frames - 3, "fail": 2, "not_inspected": 1}}, dropped=1, queue_depth=2,
            queue_size=8, acquisition=AcquisitionCounters(frames=frames, timeouts=4), inference_failures=0,
            exposure_rejects=1, publish_errors=0,
            latency={"total": LatencySummary(40.0, 70.5), "inference": LatencySummary(30.0, 33.0)},
            heartbeat_age_s={}, camera_state="streaming", camera_reason=None, product_id="p", bundle_id="p@1",
            backend="onnxruntime", product_switches=0,
        )

    line = summary_line(snap(20.0, 300), snap(10.0, 100))
    assert "fps in 20.0 out 20.0" in line
    assert "pass 297 fail 2 not_inspected 1" in line and "dropped 1" in line
    assert "exposure out of range 1" in line
    assert "latency p50 40.0 ms p99 70.5 ms" in line and "queue 2/8" in line and "timeouts 4" in line


@pytest.mark.slow
def test_run_under_a_supervisor_notifies_pings_and_drains_on_sigterm(
    notify_socket: tuple[socket.socket, str], tmp_path: Path
) -> None:
    """A folder camera looping over plain parts, a hand-made bundle-free config: no product → every frame
    not_inspected, which is enough to see the lifecycle (the product paths are tested elsewhere)."""
    sock, path = notify_socket
    folder = tmp_path / "parts"
    folder.mkdir()
    for i in range(3):
        cv2.imwrite(str(folder / f"{i}.png"), np.full((64, 64), 200, np.uint8))
    config = daemon_config(
        tmp_path / "linewatch.toml",
        camera={"kind": "folder", "path": folder, "loop": True, "rate_hz": 50.0},
        products_dir=tmp_path / "products", active=None, mqtt_port=free_port(),
        service={"heartbeat_timeout_s": 5.0},
    )
    daemon = DaemonProcess(config, env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "1000000"})
    try:
        messages: list[str] = []
        deadline = time.monotonic() + 60
        while sum(m == "WATCHDOG=1" for m in messages) < 3:
            assert time.monotonic() < deadline, f"no watchdog pings: {messages}\n{daemon.output()}"
            assert daemon.process.poll() is None, daemon.output()
            messages += received(sock)
        assert messages[0].startswith("READY=1\nSTATUS=inspecting")
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(30) == 0, daemon.output()
        messages += received(sock)
    finally:
        daemon.stop()
    assert any(m.startswith("STOPPING=1") for m in messages)
    assert "Traceback" not in daemon.output()
    results = [r.result for r in journal_records(tmp_path / "state")]
    assert results and [r.seq for r in results] == list(range(len(results)))
    assert {r.reason for r in results} == {"no active product"}


@pytest.mark.slow
def test_a_watchdog_abort_prints_every_threads_stack(
    notify_socket: tuple[socket.socket, str], tmp_path: Path
) -> None:
    """systemd kills a daemon whose watchdog pings stopped with SIGABRT (WatchdogSignal=): the journal then
    shows where every thread was, so a stuck stage can be found after the restart."""
    sock, path = notify_socket
    folder = tmp_path / "parts"
    folder.mkdir()
    cv2.imwrite(str(folder / "0.png"), np.full((64, 64), 200, np.uint8))
    config = daemon_config(
        tmp_path / "linewatch.toml",
        camera={"kind": "folder", "path": folder, "loop": True, "rate_hz": 20.0},
        products_dir=tmp_path / "products", active=None, mqtt_port=free_port(),
    )
    daemon = DaemonProcess(config, env={"NOTIFY_SOCKET": path})
    try:
        deadline = time.monotonic() + 60
        messages: list[str] = []
        while not any(m.startswith("READY=1") for m in messages):
            assert time.monotonic() < deadline, f"not ready: {messages}\n{daemon.output()}"
            assert daemon.process.poll() is None, daemon.output()
            messages += received(sock)
        daemon.signal(signal.SIGABRT)
        assert daemon.wait(30) == -signal.SIGABRT
    finally:
        daemon.stop()
    out = daemon.output()
    assert "Fatal Python error: Aborted" in out
    # The main thread in its watch loop and the stage threads where they wait, each with its stack.
    assert "Current thread" in out and 'in _watch' in out, out[-3000:]
    assert out.count("\nThread 0x") >= 4 and "stages.py" in out, out[-3000:]

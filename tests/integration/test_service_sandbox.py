"""The unit's sandbox does not break the daemon: real camera, inference, MQTT and metrics under its filters.

`systemd-analyze security` rates what the unit asks for; this test checks the price. It reads
SystemCallFilter=, SystemCallErrorNumber=, RestrictAddressFamilies=, MemoryDenyWriteExecute=, ProtectProc=
and ProcSubset= from systemd/linewatch@.service, expands the syscall groups with this machine's
`systemd-analyze syscall-filter`, and runs viky → Pipeline (ONNX Runtime) → MqttPublisher → mosquitto, plus
the Prometheus endpoint, in a process that first installed the same seccomp filters
(tests/integration/sandbox_workload.py), with /proc mounted as the unit mounts it. Without systemd as PID 1
here, this is as close to `systemctl start linewatch@x` as a test can get.
"""

from __future__ import annotations

import ctypes.util
import errno
import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from harness import Broker, free_port, missing_integration
from mqtt_support import Subscriber, first_seen_seqs
from prometheus_client.parser import text_string_to_metric_families

from trainer.bundle_writer import global_prototype, write_bundle
from trainer.model import FeatureNet

pytestmark = [pytest.mark.genicam, pytest.mark.mosquitto]

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "systemd" / "linewatch@.service"
WORKLOAD = Path(__file__).with_name("sandbox_workload.py")
FRAMES = 40
SIZE = 64


def unit_values(key: str) -> list[str]:
    return [line.split("=", 1)[1].strip() for line in UNIT.read_text().splitlines()
            if line.startswith(f"{key}=")]


def syscall_groups() -> dict[str, list[str]]:
    """@group → members, as this machine's systemd defines them."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        missing_integration("systemd-analyze is not installed (apt-get install -y systemd)")
    assert analyze is not None
    out = subprocess.run([analyze, "syscall-filter", "--no-pager"], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    groups: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in out.splitlines():
        if line.startswith("@"):
            current = groups.setdefault(line.strip(), [])
        elif current is not None and line.strip() and not line.strip().startswith("#"):
            current.append(line.strip())
    return groups


def expand(names: list[str], groups: dict[str, list[str]]) -> set[str]:
    out: set[str] = set()
    for name in names:
        out |= expand(groups[name], groups) if name.startswith("@") else {name}
    return out


def allowed_syscalls() -> set[str]:
    """SystemCallFilter= as systemd applies it: the first allow list (plus the implied @default), then
    every ~ line removes."""
    groups = syscall_groups()
    allowed: set[str] | None = None
    for value in unit_values("SystemCallFilter"):
        if value.startswith("~"):
            assert allowed is not None, "the unit starts with a deny list; this test expects an allow list"
            allowed -= expand(value[1:].split(), groups)
        else:
            allowed = (allowed or expand(["@default"], groups)) | expand(value.split(), groups)
    assert allowed, "SystemCallFilter= is missing from the unit"
    return allowed


def with_units_proc(command: list[str]) -> list[str]:
    """``command`` in private user/mount/pid namespaces whose /proc is mounted the way the unit's
    ProtectProc= and ProcSubset= mount it (hidepid=invisible; subset=pid would also hide /proc/cpuinfo)."""
    unshare = shutil.which("unshare")
    ns = [unshare or "unshare", "--user", "--map-root-user", "--mount", "--pid", "--fork"]
    if unshare is None or subprocess.run([*ns, "true"], capture_output=True, timeout=30).returncode != 0:
        pytest.skip("private user/mount/pid namespaces (util-linux unshare) are not available here")
    options = [f"hidepid={v}" for v in unit_values("ProtectProc")]
    options += [f"subset={v}" for v in unit_values("ProcSubset")]
    mount = "mount -t proc " + (f"-o {','.join(options)} " if options else "") + "proc /proc"
    return [*ns, "sh", "-c", f'{mount} && exec "$@"', "sh", *command]


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    net = FeatureNet(8).eval()
    images = torch.rand(2, 1, SIZE, SIZE).numpy() * 2 - 1
    mean, scale = global_prototype(net, images)
    return write_bundle(tmp_path / "bundle", net, height=SIZE, width=SIZE, prototype_mean=mean,
                        prototype_scale=scale, threshold=1e6)


def test_daemon_components_run_inside_the_units_syscall_sandbox(
    broker: Broker, viky_cti: Path, bundle: Path, tmp_path: Path
) -> None:
    if ctypes.util.find_library("seccomp") is None:
        missing_integration("libseccomp is not installed (apt-get install -y libseccomp2)")
    families = [getattr(socket, name) for name in unit_values("RestrictAddressFamilies")[0].split()]
    spec = {
        "allowed_syscalls": sorted(allowed_syscalls()),
        "errno": getattr(errno, unit_values("SystemCallErrorNumber")[0]),
        "address_families": families,
        "memory_deny_write_execute": unit_values("MemoryDenyWriteExecute") == ["yes"],
        "cti": str(viky_cti),
        "bundle": str(bundle),
        "broker_port": broker.port,
        "metrics_port": free_port(),
        "state_dir": str(tmp_path / "state"),
        "frames": FRAMES,
    }
    assert spec["memory_deny_write_execute"], "the unit no longer sets MemoryDenyWriteExecute=yes"
    (tmp_path / "spec.json").write_text(json.dumps(spec))

    sub = Subscriber(broker.port, ["linewatch/sandbox/result"])
    try:
        command = [sys.executable, str(WORKLOAD), str(tmp_path / "spec.json")]
        proc = subprocess.run(with_units_proc(command), capture_output=True, text=True, timeout=240,
                              cwd=REPO)
        assert proc.returncode == 0, proc.stderr[-4000:]
        summary = json.loads(proc.stdout.strip().splitlines()[-1])
        # The sandbox is really there: one forbidden call of each kind was refused ...
        assert summary["controls"] == {
            "sched_setaffinity": "EPERM", "socket_af_packet": "EAFNOSUPPORT", "mmap_wx": "EPERM",
        }
        # ... and the daemon's work went through all the same.
        assert summary["failed_stages"] == []
        assert summary["finished"] and summary["flushed"], summary
        assert summary["verdicts"]["not_inspected"] == 0, summary["not_inspected_reasons"]
        published = summary["results_published"]
        assert published >= FRAMES
        sub.wait_for(lambda: len(first_seen_seqs(sub.json("result"))) >= published, what="all results")
        seqs = first_seen_seqs(sub.json("result"))
        assert seqs == list(range(len(seqs)))
        scraped = {s.name: s.value for f in text_string_to_metric_families(summary["metrics"])
                   for s in f.samples if not s.labels}
        assert scraped["linewatch_frames_inspected_total"] == published
        assert scraped["process_resident_memory_bytes"] > 10e6 and scraped["process_threads"] > 4
        # ONNX Runtime recognised the CPU (it reads /proc/cpuinfo; ProcSubset=pid would hide it and cost
        # performance: "Failed to initialize PyTorch cpuinfo library").
        assert "cpuinfo" not in proc.stderr, proc.stderr[-2000:]
        # ONNX Runtime's default thread count (intra_op_threads=0) pins its threads to cores, which the unit
        # refuses (@resources); it logs that once per thread and runs unpinned. Shown, not hidden:
        pinning = proc.stderr.count("pthread_setaffinity_np failed")
        print(f"sandboxed run: {published} results; ONNX Runtime thread pinning refused {pinning}x")
    finally:
        sub.close()

"""The unit's sandbox does not break the daemon: the real `linewatch run` under the unit's filters.

`systemd-analyze security` rates what the unit asks for; this test checks the price. It reads
SystemCallFilter=, SystemCallErrorNumber=, RestrictAddressFamilies=, MemoryDenyWriteExecute=, ProtectProc=
and ProcSubset= from systemd/linewatch@.service, expands the syscall groups with this machine's
`systemd-analyze syscall-filter`, and starts the daemon (viky → ONNX Runtime → mosquitto) the way systemd
would: seccomp filters installed first, then exec (tests/integration/sandbox_workload.py), /proc mounted as
the unit mounts it, $NOTIFY_SOCKET, $WATCHDOG_USEC and $CREDENTIALS_DIRECTORY set, SIGTERM to stop. Without
systemd as PID 1 here, this is as close to `systemctl start linewatch@x` as a test can get.
"""

from __future__ import annotations

import contextlib
import ctypes.util
import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch
from harness import Broker, free_port, missing_integration
from mqtt_support import Subscriber, first_seen_seqs
from prometheus_client.parser import text_string_to_metric_families

from trainer.fit import prototype_of, write_bundle_from_backbone
from trainer.model import FeatureNet

pytestmark = [pytest.mark.genicam, pytest.mark.mosquitto, pytest.mark.slow]

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
def products(tmp_path: Path) -> Path:
    """A products directory holding one freshly exported bundle, ``widget``."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    net = FeatureNet(8).eval()
    images = torch.rand(2, 1, SIZE, SIZE).numpy() * 2 - 1
    write_bundle_from_backbone(tmp_path / "products" / "widget", net, prototype_of(net, images), height=SIZE,
                               width=SIZE, threshold=1e6)
    return tmp_path / "products"


CONFIG = """
state_dir = "{state}"
[station]
id = "sandbox"
[camera]
kind = "genicam"
cti = ["{cti}"]
device_id = "VikyTL_DEV_red"
[camera.nodes]
PixelFormat = "Mono8"
Width = 256
Height = 256
AcquisitionFrameRate = 50.0
[products]
dir = "{products}"
active = "widget"
[inference]
backend = "onnxruntime"
[mqtt]
host = "127.0.0.1"
port = {port}
username = "linewatch"
[service]
stats_interval_s = 1.0
[metrics]
port = {metrics_port}
"""


def scrape_until_acquired(port: int, frames: int, timeout_s: float = 10.0) -> str:
    """/metrics once it counts ``frames`` acquired frames (its totals follow the pipeline 4x a second)."""
    deadline = time.monotonic() + timeout_s
    while True:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            text = response.read().decode()
        acquired = [s.value for f in text_string_to_metric_families(text) for s in f.samples
                    if s.name == "linewatch_frames_acquired_total"]
        if acquired and acquired[0] >= frames:
            return text
        assert time.monotonic() < deadline, f"/metrics counts {acquired} acquired frames, not {frames}"
        time.sleep(0.1)


class NotifySocket:
    """What systemd listens on for a Type=notify service: collects every datagram."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[str] = []

    def wait_for(self, field: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if any(field in m.splitlines() for m in self.messages):
                return
            with contextlib.suppress(TimeoutError):
                self.messages.append(self.sock.recv(4096).decode())
        raise AssertionError(f"no {field} within {timeout_s} s; got {self.messages}")

    def count(self, field: str) -> int:
        return sum(field in m.splitlines() for m in self.messages)


def test_daemon_runs_inside_the_units_sandbox(
    broker: Broker, viky_cti: Path, products: Path, tmp_path: Path
) -> None:
    if ctypes.util.find_library("seccomp") is None:
        missing_integration("libseccomp is not installed (apt-get install -y libseccomp2)")
    config = tmp_path / "sandbox.toml"
    daemon_metrics_port = free_port()
    config.write_text(
        CONFIG.format(state=tmp_path / "state", cti=viky_cti, products=products, port=broker.port,
                      metrics_port=daemon_metrics_port)
    )
    credentials = tmp_path / "credentials"  # what LoadCredential=mqtt:<dir> hands the daemon
    credentials.mkdir()
    secret = "s3cret-sandbox-password"
    (credentials / "mqtt_password").write_text(secret + "\n")
    families = [getattr(socket, name) for name in unit_values("RestrictAddressFamilies")[0].split()]
    spec = {
        "allowed_syscalls": sorted(allowed_syscalls()),
        "errno": getattr(errno, unit_values("SystemCallErrorNumber")[0]),
        "address_families": families,
        "memory_deny_write_execute": unit_values("MemoryDenyWriteExecute") == ["yes"],
        "metrics_port": free_port(),
        "argv": [str(Path(sys.executable).parent / "linewatch"), "run", "--config", str(config)],
    }
    assert spec["memory_deny_write_execute"], "the unit no longer sets MemoryDenyWriteExecute=yes"
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    notify = NotifySocket(tmp_path / "notify")
    env = {**os.environ, "NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "2000000",
           "CREDENTIALS_DIRECTORY": str(credentials)}
    stop_timeout_s = float(unit_values("TimeoutStopSec")[0].removesuffix("s"))

    sub = Subscriber(broker.port, ["linewatch/sandbox/result", "linewatch/sandbox/status"])
    command = with_units_proc([sys.executable, str(WORKLOAD), str(tmp_path / "spec.json")])
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                            env=env)
    try:
        notify.wait_for("READY=1", timeout_s=120)
        sub.wait_for(lambda: len(sub.on("result")) >= FRAMES, timeout_s=60, what=f"{FRAMES} results")
        notify.wait_for("WATCHDOG=1", timeout_s=10)
        daemon_metrics = scrape_until_acquired(daemon_metrics_port, FRAMES)  # served from inside the sandbox
        # The daemon is the child of unshare (PID 1 in its namespace); SIGTERM it as systemd would.
        daemon_pid = int(Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()[0])
        stopping = time.monotonic()
        os.kill(daemon_pid, signal.SIGTERM)
        out, err = proc.communicate(timeout=stop_timeout_s + 30)
        stop_s = time.monotonic() - stopping
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    try:
        assert proc.returncode == 0, err[-4000:]
        assert stop_s < stop_timeout_s, f"drain took {stop_s:.1f} s, TimeoutStopSec={stop_timeout_s}"
        controls = json.loads(out.splitlines()[0])
        # The sandbox is really there: one forbidden call of each kind was refused ...
        assert {k: controls[k] for k in ("sched_setaffinity", "socket_af_packet", "mmap_wx")} == {
            "sched_setaffinity": "EPERM", "socket_af_packet": "EAFNOSUPPORT", "mmap_wx": "EPERM",
        }
        scraped = {s.name: s.value for f in text_string_to_metric_families(controls["metrics"])
                   for s in f.samples if not s.labels}
        assert scraped["linewatch_frames_acquired_total"] == 3 and scraped["process_threads"] >= 1
        assert "process_open_fds" in daemon_metrics and secret not in daemon_metrics
        # ... and the daemon did its job under it: every frame inspected and published in order, a clean
        # stop announced to systemd and on MQTT.
        notify.wait_for("STOPPING=1", timeout_s=1)
        sub.wait_for(lambda: sub.json("status")[-1]["state"] == "stopped", what="status stopped")
        results = sub.json("result")
        seqs = first_seen_seqs(results)
        assert seqs == list(range(len(seqs))) and len(seqs) >= FRAMES
        assert {r["verdict"] for r in results} <= {"pass", "fail"}, [r.get("reason") for r in results]
        # ONNX Runtime recognised the CPU (it reads /proc/cpuinfo; ProcSubset=pid would hide it and cost
        # performance: "Failed to initialize PyTorch cpuinfo library").
        assert "cpuinfo" not in err, err[-2000:]
        assert secret not in err and secret not in out  # the credential never reaches the log
        # The default intra-op thread count is explicit: ONNX Runtime pins no threads to cores (which the
        # unit refuses, @resources, with one log line per thread, as intra_op_threads = 0 would).
        assert "pthread_setaffinity_np failed" not in err, err[-2000:]
        print(f"sandboxed daemon: {len(seqs)} results, {notify.count('WATCHDOG=1')} watchdog pings, "
              f"stopped in {stop_s:.1f} s")
    finally:
        sub.close()
        notify.sock.close()

"""The systemd unit, checked by systemd's own tools: `systemd-analyze verify` and `security --offline`.

systemd-analyze is part of the integration requirements: a machine without it skips, CI fails.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path, PurePosixPath

from harness import missing_integration

from linewatch.service.install import Layout, render_unit

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "systemd" / "linewatch@.service"
SYSUSERS = REPO / "systemd" / "linewatch.sysusers.conf"
TMPFILES = REPO / "systemd" / "linewatch.tmpfiles.conf"
MAX_EXPOSURE = 2.5  # issue 6: "OK" or better


def systemd_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        missing_integration(f"{name} is not installed (apt-get install -y systemd)")
    assert path is not None
    return path


def settings(text: str) -> dict[str, list[str]]:
    """Key → values of a unit file (keys may repeat)."""
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")):
            key, _, val = line.partition("=")
            out.setdefault(key, []).append(val)
    return out


def installed_unit(tmp_path: Path) -> Path:
    """The unit exactly as install-service writes it for this installation (verify needs ExecStart's program
    to exist; the shipped file names /opt/linewatch/.venv/bin/linewatch)."""
    program = Path(sys.executable).parent / "linewatch"
    assert program.is_file(), f"{program} missing: is linewatch installed into this venv (pip install -e .)?"
    path = tmp_path / "linewatch@.service"
    path.write_text(render_unit(UNIT.read_text(), PurePosixPath(program)))
    return path


def verify(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [systemd_tool("systemd-analyze"), "verify", "--man=no", str(path)],
        capture_output=True, text=True, timeout=120,
    )


def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    proc = verify(installed_unit(tmp_path))
    # verify exits 0 even for ignored lines (typos, unknown keys); those only show up as messages.
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip() == "", proc.stderr
    assert proc.stdout.strip() == "", proc.stdout


def test_verify_would_catch_a_broken_setting(tmp_path: Path) -> None:
    """The check above is not vacuous: one misspelt value is reported."""
    path = installed_unit(tmp_path)
    path.write_text(path.read_text().replace("NoNewPrivileges=yes", "NoNewPrivileges=yse"))
    proc = verify(path)
    assert "NoNewPrivileges" in proc.stderr or "yse" in proc.stderr, proc.stderr


def test_security_exposure_is_ok_or_better() -> None:
    analyze = systemd_tool("systemd-analyze")
    proc = subprocess.run(
        # --threshold is in tenths: 25 means 2.5.
        [analyze, "security", "--offline=true", f"--threshold={int(MAX_EXPOSURE * 10)}", str(UNIT)],
        capture_output=True, text=True, timeout=120,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?) (\S+)", proc.stdout)
    assert match, proc.stdout + proc.stderr
    exposure = float(match.group(1))
    print(f"systemd-analyze security exposure: {exposure} {match.group(2)}")
    assert exposure <= MAX_EXPOSURE, proc.stdout
    assert proc.returncode == 0, proc.stdout + proc.stderr  # --threshold agrees

    # The settings the issue names are each rated as set, not merely present in the file.
    checks = json.loads(subprocess.run(
        [analyze, "security", "--offline=true", "--json=short", str(UNIT)],
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout)
    rated = {c["name"]: c["set"] for c in checks}
    for name in (
        "NoNewPrivileges=", "ProtectSystem=", "ProtectHome=", "PrivateTmp=",
        "CapabilityBoundingSet=~CAP_SYS_ADMIN", "AmbientCapabilities=", "SystemCallArchitectures=",
        "SystemCallFilter=~@privileged",
        "SystemCallFilter=~@resources", "RestrictAddressFamilies=~AF_PACKET", "RestrictAddressFamilies=~…",
        "ProtectKernelTunables=", "ProtectKernelModules=", "ProtectKernelLogs=", "ProtectControlGroups=",
        "ProtectClock=", "ProtectHostname=", "ProtectProc=", "LockPersonality=",
        "RestrictRealtime=", "RestrictSUIDSGID=", "RestrictNamespaces=~user", "MemoryDenyWriteExecute=",
        "User=/DynamicUser=", "NotifyAccess=",
    ):
        assert rated.get(name) is True, f"{name} is not rated as set: {rated.get(name)}"


def test_unit_settings_the_daemon_and_installer_rely_on() -> None:
    s = settings(UNIT.read_text())
    assert s["Type"] == ["notify"] and s["NotifyAccess"] == ["main"]
    assert s["ExecStart"] == ["/opt/linewatch/.venv/bin/linewatch run --config /etc/linewatch/%i.toml"]
    assert s["Restart"] == ["on-failure"]
    assert "StartLimitBurst" in s and "StartLimitIntervalSec" in s and "WatchdogSec" in s
    assert s["User"] == ["linewatch"] and s["StateDirectory"] == ["linewatch/%i"]
    # USB3 Vision needs /dev/bus/usb, so no PrivateDevices=; the device cgroup is closed instead.
    assert "PrivateDevices" not in s
    # ProcSubset=pid hides /proc/cpuinfo, which ONNX Runtime's CPU detection needs.
    assert "ProcSubset" not in s
    assert s["DevicePolicy"] == ["closed"] and "char-usb_device rw" in s["DeviceAllow"]
    # The credential directory is where install-service creates it, and ids come out as mqtt_<file>.
    layout = Layout(Path("/"))
    assert s["LoadCredential"] == [f"mqtt:{layout.credentials('%i')}"]
    assert s["ConfigurationDirectory"] == ["linewatch"] and str(layout.config("%i")) in s["ExecStart"][0]


def test_sysusers_and_tmpfiles_snippets_apply(tmp_path: Path) -> None:
    """systemd-sysusers and systemd-tmpfiles themselves apply the snippets to a scratch root."""
    (tmp_path / "etc").mkdir()
    subprocess.run([systemd_tool("systemd-sysusers"), f"--root={tmp_path}", str(SYSUSERS)],
                   check=True, capture_output=True, text=True, timeout=60)
    passwd = {line.split(":")[0]: line.split(":")
              for line in (tmp_path / "etc/passwd").read_text().splitlines()}
    assert passwd["linewatch"][5:] == ["/var/lib/linewatch", "/usr/sbin/nologin"]
    assert 0 < int(passwd["linewatch"][2]) < 1000  # a system user
    groups = {line.split(":")[0]: line.split(":")[3].split(",") for line in
              (tmp_path / "etc/group").read_text().splitlines()}
    assert "linewatch" in groups["plugdev"] and "linewatch" in groups["video"]

    proc = subprocess.run([systemd_tool("systemd-tmpfiles"), "--create", f"--root={tmp_path}", str(TMPFILES)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "etc/linewatch/credentials").stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "etc/linewatch").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "var/lib/linewatch/products").is_dir()

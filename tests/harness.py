"""Test harness shared by every test module: integration requirements and a real mosquitto broker.

Test modules import from here (``from harness import Broker, free_port, missing_integration``), never from
``conftest`` (several conftest.py files exist; the name is ambiguous once the whole suite is collected).
A missing broker or camera simulator skips on a laptop, but fails the run when
LINEWATCH_REQUIRE_INTEGRATION=1 (which .ci/run sets).
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

REQUIRE_INTEGRATION = os.environ.get("LINEWATCH_REQUIRE_INTEGRATION") == "1"
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def missing_integration(what: str) -> None:
    """Skip (laptop) or fail (CI) because an integration component is not there."""
    if REQUIRE_INTEGRATION:
        pytest.fail(f"{what} (LINEWATCH_REQUIRE_INTEGRATION=1 makes this a failure)", pytrace=False)
    pytest.skip(what)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Broker:
    """A running mosquitto on 127.0.0.1:port. ``stop``/``start`` restart it on the same port."""

    port: int
    workdir: Path
    extra_config: str = ""
    process: subprocess.Popen[bytes] | None = None
    host: str = "127.0.0.1"
    # Written before everything else: settings mosquitto wants first, e.g. "per_listener_settings true\n"
    # (then the plain listener stays anonymous and a listener in extra_config can require a password).
    preamble: str = ""

    @property
    def config_file(self) -> Path:
        return self.workdir / "mosquitto.conf"

    def start(self) -> None:
        self.config_file.write_text(
            self.preamble + f"listener {self.port} 127.0.0.1\n"
            # Started as root, mosquitto drops to the "mosquitto" user, which cannot write the log or the
            # persistence db in a root-only tmp_path (sessions would silently not survive stop()/start()).
            f"user {pwd.getpwuid(os.getuid()).pw_name}\n"
            "allow_anonymous true\n"
            "persistence true\n"
            f"persistence_location {self.workdir}/\n"
            "max_queued_messages 100000\n"
            f"log_dest file {self.workdir}/mosquitto.log\n" + self.extra_config
        )
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self.process = subprocess.Popen(
            [binary, "-c", str(self.config_file)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                log = (self.workdir / "mosquitto.log").read_text(errors="replace")
                raise RuntimeError(f"mosquitto exited with {self.process.returncode}: {log[-2000:]}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"mosquitto did not listen on port {self.port} within 10 s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None


def mosquitto_binary() -> str | None:
    return shutil.which("mosquitto") or (
        "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None
    )

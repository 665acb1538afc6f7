"""A private mosquitto broker on a loopback port, for ``linewatch demo``, ``linewatch bench`` and the tests.

It listens on 127.0.0.1 only, allows anonymous clients (nothing else can reach it), runs as the user who
started it (as root, mosquitto would otherwise switch to its own user, which cannot write the log or the
persistence file in a root-only directory), keeps no state beyond its working directory, and is stopped
(terminate, then kill) when the ``with`` block ends. ``stop()`` then ``start()`` restarts it on the same port;
with ``persistence`` on, persistent sessions and their queued messages survive that.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

from linewatch.errors import LinewatchError


class BrokerError(LinewatchError):
    """mosquitto is not installed or did not start."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def mosquitto_binary() -> str:
    found = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/usr/local/sbin")
    if found is None:
        raise BrokerError(
            "mosquitto is not installed (Debian: apt-get install -y mosquitto; `make setup` does it)"
        )
    return found


class PrivateMosquitto:
    """``with PrivateMosquitto(workdir) as broker: ... broker.port``.

    ``port`` 0 takes a free port at the first start; ``extra_config`` is appended to the generated
    configuration (more listeners, TLS, a password file) and ``preamble`` goes before it (settings mosquitto
    wants first, e.g. ``per_listener_settings true``). Both may be changed between a ``stop()`` and a
    ``start()``.
    """

    def __init__(
        self,
        workdir: Path,
        start_timeout_s: float = 10.0,
        *,
        port: int = 0,
        persistence: bool = False,
        extra_config: str = "",
        preamble: str = "",
    ) -> None:
        self.workdir = workdir
        self.start_timeout_s = start_timeout_s
        self.host = "127.0.0.1"
        self.port = port
        self.persistence = persistence
        self.extra_config = extra_config
        self.preamble = preamble
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.workdir / "mosquitto.log"

    @property
    def config_file(self) -> Path:
        return self.workdir / "mosquitto.conf"

    def config_text(self) -> str:
        persistence = (
            f"persistence true\npersistence_location {self.workdir}/\n" if self.persistence
            else "persistence false\n"
        )
        return (
            self.preamble
            + f"listener {self.port} {self.host}\n"
            + f"user {pwd.getpwuid(os.getuid()).pw_name}\n"
            + "allow_anonymous true\n"
            + persistence
            + "max_queued_messages 100000\n"
            + f"log_dest file {self.log_path}\n"
            + self.extra_config
        )

    def start(self) -> None:
        binary = mosquitto_binary()
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.port == 0:
            self.port = free_port()
        self.config_file.write_text(self.config_text())
        self.process = subprocess.Popen(
            [binary, "-c", str(self.config_file)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                log = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
                raise BrokerError(f"mosquitto exited with code {self.process.returncode}: {log[-2000:]}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise BrokerError(f"mosquitto did not listen on port {self.port} within {self.start_timeout_s} s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def __enter__(self) -> PrivateMosquitto:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

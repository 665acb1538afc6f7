"""Security of the MQTT link against a real mosquitto with a TLS listener that requires client certificates
and a password (certificates made by the test with ``cryptography``, password file by ``mosquitto_passwd``):

* ``linewatch run`` with server verification, a client certificate and username/password (password and
  client key given as systemd credentials) delivers its results; the password appears in no log line, no
  MQTT message (stats, status, results), no journal file and no ``check-config`` output;
* an untrusted broker certificate, a wrong password or a missing client certificate is a clear error in the
  log, not a crash: the publisher keeps retrying and the journal keeps the results;
* ``tls.enabled = true`` with a missing CA file is a clear config error (``location: message``) from
  ``linewatch check-config`` and ``linewatch run``, exit 2.

(tests/integration/test_mqtt_tls.py covers server-only TLS with certificates made by openssl.)
"""

from __future__ import annotations

import gc
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from daemon_support import REPO, DaemonProcess, daemon_config, journal_records
from fault_support import camera_config, fit_stripes_product, wait_until
from harness import Broker
from mqtt_support import Subscriber, fast_config, first_seen_seqs, make_verdict, running_publisher
from tls_support import TlsBroker, make_authority, start_tls_broker

from linewatch.frames import VerdictKind

USER = "station-1"
PASSWORD = "pa55-Wörd-that-must-never-show"
FRAMES = 30

mosquitto = pytest.mark.mosquitto


@pytest.fixture
def tls_broker(broker: Broker, tmp_path: Path) -> TlsBroker:
    return start_tls_broker(broker, tmp_path / "pki", USER, PASSWORD)


def tls_settings(tls: TlsBroker, **overrides: object) -> dict[str, object]:
    values: dict[str, object] = {
        "enabled": True, "ca_file": str(tls.ca.cert), "cert_file": str(tls.client.cert),
        "key_file": str(tls.client.key),
    }  # fmt: skip
    values.update(overrides)
    return values


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "linewatch", *args], capture_output=True, text=True, cwd=REPO, timeout=60
    )


@mosquitto
@pytest.mark.slow
def test_linewatch_run_over_mutual_tls_with_password_and_no_secret_leaks(
    tls_broker: TlsBroker, tmp_path: Path
) -> None:
    products = tmp_path / "products"
    fit_stripes_product(products)
    credentials = tmp_path / "credentials"  # what systemd's LoadCredential= provides
    credentials.mkdir()
    (credentials / "mqtt_password").write_text(PASSWORD + "\n")
    (credentials / "mqtt_tls_key").write_bytes(tls_broker.client.key.read_bytes())
    config = daemon_config(
        tmp_path / "linewatch.toml",
        camera=camera_config(rate_hz=20.0, frame_count=FRAMES).model_dump(mode="json"),
        products_dir=products, active="stripes-part", mqtt_port=tls_broker.tls_port, station="sec",
        mqtt={"username": USER, "tls": {"enabled": True, "ca_file": tls_broker.ca.cert,
                                        "cert_file": tls_broker.client.cert}},
        service={"stats_interval_s": 0.5},
    )  # fmt: skip
    env = {"CREDENTIALS_DIRECTORY": str(credentials)}
    check = subprocess.run(
        [sys.executable, "-m", "linewatch", "check-config", "--config", str(config)],
        capture_output=True, text=True, cwd=REPO, timeout=60, env={**_base_env(), **env},
    )  # fmt: skip
    assert check.returncode == 0, check.stderr
    assert "TLS on" in check.stdout

    sub = Subscriber(tls_broker.broker.port, ["linewatch/sec/#"])  # the plain listener, same broker
    daemon = DaemonProcess(config, env=env)
    try:
        assert daemon.wait(90) == 0, daemon.output()
        sub.wait_for(lambda: len(first_seen_seqs(sub.json("result"))) >= FRAMES, 10, f"{FRAMES} results")
        sub.wait_for(lambda: bool(sub.on("stats")), 5, "a stats message")
    finally:
        daemon.stop()
        sub.close()
    assert first_seen_seqs(sub.json("result")) == list(range(FRAMES))
    log = daemon.output()
    assert "TLS on" in log
    secret = PASSWORD.encode()
    leaks = [m.topic for m in sub.messages if secret in m.payload]
    assert leaks == [], f"password published on {leaks}"
    assert PASSWORD not in log and PASSWORD not in check.stdout + check.stderr
    for path in (tmp_path / "state").rglob("*"):
        if path.is_file():
            assert secret not in path.read_bytes(), f"password written to {path}"
    assert len(journal_records(tmp_path / "state")) == FRAMES
    print(f"figures: {FRAMES} results over mutual TLS + password; password found in 0 of "
          f"{len(sub.messages)} messages, 0 log lines")  # fmt: skip


def _base_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("LINEWATCH_") and k != "NOTIFY_SOCKET"}


# paho-mqtt 2.2.0 does not close its SSLSocket when a handshake fails (see test_mqtt_tls.py); the garbage
# collector reports it, so it is collected inside each refused-connection test.
refused = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


def assert_refused_clearly(
    server: TlsBroker, tmp_path: Path, caplog: pytest.LogCaptureFixture, expected: str, **mqtt: object
) -> None:
    """Connect with these settings: the connection must be refused, the log must say ``expected``, nothing
    may crash, the results must wait in the journal, and the password must not show."""
    caplog.set_level(logging.DEBUG)
    config = fast_config(server.tls_port, **mqtt)
    with running_publisher(tmp_path / "state", config, wait_connected=False) as (publisher, journal):
        publisher.publish_result(make_verdict(0, VerdictKind.FAIL))
        wait_until(lambda: expected.lower() in caplog.text.lower(), 10.0, f"{expected!r} in the log")
        assert not publisher.connected
        assert publisher.stats().results_published == 0
        journal.flush()
        assert journal.unpublished_count() == 1  # kept until the configuration is fixed
    gc.collect()
    assert PASSWORD not in caplog.text


@mosquitto
@refused
def test_an_untrusted_broker_certificate_is_a_clear_error(
    tls_broker: TlsBroker, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    other = make_authority(tmp_path / "other", "someone-else")
    assert_refused_clearly(
        tls_broker, tmp_path, caplog, "certificate verify failed",
        tls=tls_settings(tls_broker, ca_file=str(other.cert)), username=USER, password=PASSWORD,
    )  # fmt: skip


@mosquitto
@refused
def test_a_wrong_password_is_a_clear_error(
    tls_broker: TlsBroker, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    assert_refused_clearly(
        tls_broker, tmp_path, caplog, "the broker refused the connection",
        tls=tls_settings(tls_broker), username=USER, password="not-" + PASSWORD,
    )  # fmt: skip
    assert "not authorized" in caplog.text.lower() or "bad user name or password" in caplog.text.lower()


@mosquitto
@refused
def test_a_missing_client_certificate_is_a_clear_error(
    tls_broker: TlsBroker, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    assert_refused_clearly(
        tls_broker, tmp_path, caplog, "closed the connection before accepting it",
        tls={"enabled": True, "ca_file": str(tls_broker.ca.cert)}, username=USER, password=PASSWORD,
    )  # fmt: skip


@mosquitto
def test_mutual_tls_with_password_delivers(tls_broker: TlsBroker, tmp_path: Path) -> None:
    """The in-process counterpart of the daemon test: every result acknowledged over the TLS listener."""
    sub = Subscriber(tls_broker.broker.port, ["linewatch/st1/result"])
    config = fast_config(tls_broker.tls_port, tls=tls_settings(tls_broker), username=USER, password=PASSWORD)
    try:
        with running_publisher(tmp_path / "state", config) as (publisher, _):
            for seq in range(20):
                publisher.publish_result(make_verdict(seq))
            assert publisher.flush(5.0)
        sub.wait_for(lambda: len(sub.on("result")) >= 20, what="20 results")
    finally:
        sub.close()
    assert first_seen_seqs(sub.json("result")) == list(range(20))


@pytest.mark.parametrize(
    ("tls", "expected"),
    [
        (
            {"enabled": True, "ca_file": "/nonexistent/ca.pem"},
            "tls.ca_file '/nonexistent/ca.pem' does not exist",
        ),
        ({"enabled": True}, "tls.ca_file is not set"),
    ],
    ids=["missing-file", "not-set"],
)
def test_tls_without_a_usable_ca_is_a_config_error(
    tmp_path: Path, tls: dict[str, object], expected: str
) -> None:
    config = daemon_config(
        tmp_path / "linewatch.toml", camera={"kind": "synthetic"}, products_dir=tmp_path, active=None,
        mqtt_port=8883, mqtt={"tls": tls},
    )  # fmt: skip
    for verb in ("check-config", "run"):
        result = run_cli(verb, "--config", str(config))
        assert result.returncode == 2, (verb, result.stdout, result.stderr)
        problems = [line for line in result.stderr.splitlines() if expected in line]
        assert problems, (verb, result.stderr)
        location = problems[0].partition(": ")[0]
        assert location.startswith("mqtt.tls"), problems[0]  # location: message
        assert "Traceback" not in result.stderr

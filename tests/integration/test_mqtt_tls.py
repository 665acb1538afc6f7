"""MqttPublisher over TLS to a real mosquitto TLS listener (certificates made with openssl in the test)."""

from __future__ import annotations

import gc
import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from harness import Broker, free_port, missing_integration
from mqtt_support import Subscriber, fast_config, make_verdict, running_publisher

pytestmark = pytest.mark.mosquitto


def make_ca(directory: Path, name: str) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    key, crt = directory / f"{name}.key", directory / f"{name}.crt"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(key), "-out", str(crt), "-days", "1", "-subj", f"/CN={name}"],
        check=True, capture_output=True,
    )  # fmt: skip
    return key, crt


def make_server_cert(directory: Path, ca_key: Path, ca_crt: Path) -> tuple[Path, Path]:
    key, csr, crt = directory / "server.key", directory / "server.csr", directory / "server.crt"
    ext = directory / "ext.cnf"
    ext.write_text("subjectAltName=IP:127.0.0.1\n")
    subprocess.run(
        ["openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(key), "-out", str(csr), "-subj", "/CN=127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    subprocess.run(
        ["openssl", "x509", "-req", "-in", str(csr), "-CA", str(ca_crt), "-CAkey", str(ca_key),
         "-CAcreateserial", "-out", str(crt), "-days", "1", "-extfile", str(ext)],
        check=True, capture_output=True,
    )  # fmt: skip
    return key, crt


@pytest.fixture
def tls_broker(broker: Broker, tmp_path: Path) -> tuple[Broker, int, Path]:
    """The broker fixture plus a TLS listener on a second port; returns (broker, tls_port, ca_file)."""
    if shutil.which("openssl") is None:
        missing_integration("openssl is not installed (needed to make test certificates)")
    certs = tmp_path / "certs"
    ca_key, ca_crt = make_ca(certs, "linewatch-test-ca")
    key, crt = make_server_cert(certs, ca_key, ca_crt)
    tls_port = free_port()
    broker.extra_config = f"listener {tls_port} 127.0.0.1\ncafile {ca_crt}\ncertfile {crt}\nkeyfile {key}\n"
    broker.stop()
    broker.start()
    return broker, tls_port, ca_crt


def test_results_over_tls(tls_broker: tuple[Broker, int, Path], tmp_path: Path) -> None:
    broker, tls_port, ca = tls_broker
    sub = Subscriber(broker.port, ["linewatch/st1/result"])  # plain listener, same broker
    config = fast_config(tls_port, tls={"enabled": True, "ca_file": str(ca)})
    try:
        with running_publisher(tmp_path / "state", config) as (publisher, _):
            for seq in range(5):
                publisher.publish_result(make_verdict(seq))
            assert publisher.flush(5.0)
            sub.wait_for(lambda: len(sub.on("result")) >= 5, what="results over TLS")
            assert [json.loads(m.payload)["seq"] for m in sub.on("result")] == list(range(5))
    finally:
        sub.close()


# paho-mqtt 2.2.0 does not close its SSLSocket when the handshake fails (client.py, _ssl_wrap_socket), so the
# garbage collector reports an unclosed socket after each refused attempt. Collected inside this test.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_broker_signed_by_another_ca_is_not_trusted(
    tls_broker: tuple[Broker, int, Path], tmp_path: Path
) -> None:
    _, tls_port, _ = tls_broker
    _, other_ca = make_ca(tmp_path / "other", "someone-else")
    config = fast_config(tls_port, tls={"enabled": True, "ca_file": str(other_ca)})
    with running_publisher(tmp_path / "state", config, wait_connected=False) as (publisher, journal):
        publisher.publish_result(make_verdict(0))
        time.sleep(1.5)
        assert not publisher.connected
        journal.flush()
        assert journal.unpublished_count() == 1  # kept for when the trust is fixed
    gc.collect()  # paho's unclosed sockets are reported here, not in a later test

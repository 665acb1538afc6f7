"""Test PKI made with the ``cryptography`` package: a CA, a server certificate for 127.0.0.1/localhost and
client certificates, written as PEM files; and a mosquitto TLS listener that checks them plus a password
file. Import from here (tests/ is on sys.path)."""

from __future__ import annotations

import datetime
import ipaddress
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from harness import Broker, free_port, missing_integration


@dataclass(frozen=True)
class Issued:
    cert: Path
    key: Path


@dataclass(frozen=True)
class Authority:
    name: str
    cert: Path
    key: Path
    _key: ec.EllipticCurvePrivateKey
    _cert: x509.Certificate

    def issue(self, directory: Path, name: str, *, server: bool) -> Issued:
        """A leaf certificate signed by this CA: a server one for 127.0.0.1 and localhost, or a client one."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(self._cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
        )
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
                ),
                critical=False,
            )
        cert = builder.sign(self._key, hashes.SHA256())
        return Issued(*_write(directory, name, cert, key))


def _write(
    directory: Path, name: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey
) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    key_path.chmod(0o600)
    return cert_path, key_path


_CA_KEY_USAGE = x509.KeyUsage(
    digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
    key_encipherment=False, data_encipherment=False, key_agreement=False, encipher_only=False,
    decipher_only=False,
)  # fmt: skip


def make_authority(directory: Path, name: str) -> Authority:
    """A self-signed CA valid for one day."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_CA_KEY_USAGE, critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = _write(directory, name, cert, key)
    return Authority(name, cert_path, key_path, key, cert)


@dataclass(frozen=True)
class TlsBroker:
    """The broker fixture's mosquitto with a second listener on ``tls_port``: TLS with the test CA's server
    certificate, client certificates required (signed by that CA), no anonymous clients, a password file.
    The first (plain, anonymous) listener stays for the test's own subscriber."""

    broker: Broker
    tls_port: int
    ca: Authority
    client: Issued
    username: str
    password: str


def password_file(path: Path, username: str, password: str) -> Path:
    """A mosquitto password file (``mosquitto_passwd -b``: salted PBKDF2-SHA512, the format it reads)."""
    tool = shutil.which("mosquitto_passwd")
    if tool is None:
        missing_integration("mosquitto_passwd is not installed (it comes with the mosquitto package)")
    path.write_text("")
    subprocess.run([str(tool), "-b", str(path), username, password], check=True, capture_output=True)
    path.chmod(0o600)
    return path


def start_tls_broker(broker: Broker, directory: Path, username: str, password: str) -> TlsBroker:
    ca = make_authority(directory / "ca", "linewatch-test-ca")
    server = ca.issue(directory / "server", "broker", server=True)
    client = ca.issue(directory / "client", "station-1", server=False)
    passwords = password_file(directory / "passwords", username, password)
    tls_port = free_port()
    broker.preamble = "per_listener_settings true\n"
    broker.extra_config = (
        f"listener {tls_port} 127.0.0.1\n"
        f"cafile {ca.cert}\ncertfile {server.cert}\nkeyfile {server.key}\n"
        "require_certificate true\n"
        f"allow_anonymous false\npassword_file {passwords}\n"
    )
    broker.stop()
    broker.start()
    return TlsBroker(broker, tls_port, ca, client, username, password)

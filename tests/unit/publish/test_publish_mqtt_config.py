"""The [mqtt] config section: clear validation errors, secrets that never show."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from pydantic import BaseModel, ValidationError

from linewatch.publish.journal import Journal, JournalConfig
from linewatch.publish.mqtt import MqttConfig, MqttPublisher, MqttTlsConfig


def test_tls_enabled_without_ca_file_is_a_config_error() -> None:
    with pytest.raises(ValidationError, match=r"tls\.ca_file is not set"):
        MqttConfig.model_validate({"tls": {"enabled": True}})


def test_tls_with_a_missing_ca_file_names_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "ca.pem"
    with pytest.raises(ValidationError, match=r"tls.ca_file .*nope/ca.pem' does not exist"):
        MqttConfig.model_validate({"tls": {"enabled": True, "ca_file": str(missing)}})


def test_client_certificate_needs_its_key(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    with pytest.raises(ValidationError, match="given together"):
        MqttConfig.model_validate({"tls": {"enabled": True, "ca_file": str(ca), "cert_file": str(ca)}})


def test_disabled_tls_does_not_look_at_files() -> None:
    assert MqttConfig.model_validate({"tls": {"enabled": False, "ca_file": "/nowhere"}}).tls.enabled is False


@pytest.mark.parametrize(
    "bad",
    [
        {"hots": "x"},
        {"tls": {"enable": True}},
        {"qos": 3},
        {"port": 0},
        {"topic_prefix": "a/#"},
        {"max_pending": 0},
    ],
)
def test_unknown_keys_and_bad_values_are_refused(bad: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        MqttConfig.model_validate(bad)


def test_every_field_is_described() -> None:
    def walk(model: type[BaseModel]) -> list[str]:
        return [f"{model.__name__}.{name}" for name, f in model.model_fields.items() if not f.description]

    assert walk(MqttConfig) + walk(MqttTlsConfig) + walk(JournalConfig) == []


def test_password_never_shows_in_repr_dumps_or_logs(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    secret = "s3cr3t-Pa55"
    config = MqttConfig.model_validate(
        {"host": "127.0.0.1", "port": 1, "username": "line", "password": secret}
    )
    assert secret not in repr(config) and secret not in str(config) and secret not in config.model_dump_json()
    assert config.password is not None and config.password.get_secret_value() == secret
    caplog.set_level(logging.DEBUG)
    journal = Journal(JournalConfig(state_dir=tmp_path))
    publisher = MqttPublisher(config, "st1", journal)
    try:
        publisher.start()  # port 1: connection refused, retried in the background
        publisher.close(timeout_s=0.5)
    finally:
        journal.close()
    assert "line" in caplog.text or "127.0.0.1" in caplog.text
    assert secret not in caplog.text

"""Settings: TOML + environment + systemd credentials, precedence, and every problem as location: message."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import types
import typing
from pathlib import Path

import pytest
from pydantic import BaseModel

from linewatch.acquisition import (
    FolderCameraConfig,
    GenicamCameraConfig,
    SyntheticCameraConfig,
    VideoCameraConfig,
)
from linewatch.config import LinewatchSettings, load_settings
from linewatch.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
REFERENCE = REPO / "configs" / "linewatch.toml"
DEMO = REPO / "configs" / "demo.toml"

MINIMAL = """
[station]
id = "line1-cam1"

[camera]
kind = "folder"
path = "{folder}"
"""


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests set exactly the variables they mean; nothing leaks in from the caller's environment."""
    for name in list(os.environ):
        if name.startswith("LINEWATCH_") or name in ("CREDENTIALS_DIRECTORY", "STATE_DIRECTORY"):
            monkeypatch.delenv(name)


def write(tmp_path: Path, text: str, name: str = "linewatch.toml") -> Path:
    path = tmp_path / name
    path.write_text(text.replace("{folder}", str(tmp_path)))
    return path


def problems(path: Path) -> dict[str, str]:
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    return dict(info.value.problems)


# ---------------------------------------------------------------------------------------------- sources


def test_minimal_file_gets_defaults_and_derived_state_dir(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, MINIMAL))
    assert settings.station.id == "line1-cam1"
    assert isinstance(settings.camera, FolderCameraConfig) and settings.camera.path == tmp_path
    assert settings.state_dir == Path("/var/lib/linewatch/line1-cam1")
    assert settings.journal.state_dir == settings.state_dir
    assert (settings.queue.size, settings.queue.overflow) == (8, "block")
    assert settings.mqtt.port == 1883 and settings.products.active is None


def test_environment_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, MINIMAL + "\n[mqtt]\nhost = 'file-host'\nport = 1884\n")
    monkeypatch.setenv("LINEWATCH_MQTT__PORT", "2883")
    monkeypatch.setenv("LINEWATCH_QUEUE__OVERFLOW", "drop_oldest")
    monkeypatch.setenv("LINEWATCH_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("LINEWATCH_CAMERA__LOOP", "true")
    monkeypatch.setenv("LINEWATCH_REQUIRE_INTEGRATION", "1")  # LINEWATCH_ names that are not settings
    settings = load_settings(path)
    assert settings.mqtt.host == "file-host"  # kept from the file
    assert settings.mqtt.port == 2883  # overridden
    assert settings.queue.overflow == "drop_oldest"
    assert isinstance(settings.camera, FolderCameraConfig) and settings.camera.loop is True
    assert settings.state_dir == tmp_path / "state"
    assert settings.journal.state_dir == tmp_path / "state"  # the journal follows state_dir


def test_state_dir_precedence_env_then_file_then_systemd_state_directory_then_station(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under systemd, StateDirectory=linewatch/%i is the only place the sandbox lets the daemon write; it
    names that place in $STATE_DIRECTORY, which is the default unless a setting says otherwise."""
    plain = write(tmp_path, MINIMAL)
    with_setting = write(tmp_path, f'state_dir = "{tmp_path / "from-file"}"\n' + MINIMAL, "set.toml")
    assert load_settings(plain).state_dir == Path("/var/lib/linewatch/line1-cam1")

    # systemd lists every StateDirectory= path, ':'-separated; the unit's own comes first.
    monkeypatch.setenv("STATE_DIRECTORY", f"{tmp_path / 'systemd'}:{tmp_path / 'other'}")
    settings = load_settings(plain)
    assert settings.state_dir == tmp_path / "systemd" and settings.journal.state_dir == tmp_path / "systemd"
    assert load_settings(with_setting).state_dir == tmp_path / "from-file"

    monkeypatch.setenv("LINEWATCH_STATE_DIR", str(tmp_path / "from-env"))
    for path in (plain, with_setting):
        settings = load_settings(path)
        assert settings.state_dir == settings.journal.state_dir == tmp_path / "from-env"

    monkeypatch.delenv("LINEWATCH_STATE_DIR")
    monkeypatch.setenv("STATE_DIRECTORY", "")  # set but empty: as if unset
    assert load_settings(plain).state_dir == Path("/var/lib/linewatch/line1-cam1")


def test_environment_can_switch_the_camera_kind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, "[station]\nid = 's1'\n")
    monkeypatch.setenv("LINEWATCH_CAMERA__KIND", "synthetic")
    monkeypatch.setenv("LINEWATCH_CAMERA__DEFECT_RATE", "0.5")
    settings = load_settings(path)
    assert isinstance(settings.camera, SyntheticCameraConfig) and settings.camera.defect_rate == 0.5


def test_credentials_directory_sets_secrets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "mqtt_password").write_text("s3cret pass\n")  # as `systemd-creds` writes it: trailing newline
    (creds / "mqtt_username").write_text("line1")
    (creds / "mqtt_tls_key").write_text("-----BEGIN PRIVATE KEY-----\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    settings = load_settings(write(tmp_path, MINIMAL))
    assert settings.mqtt.password is not None
    assert settings.mqtt.password.get_secret_value() == "s3cret pass"
    assert "s3cret" not in repr(settings)  # never printed
    assert settings.mqtt.username == "line1"
    assert settings.mqtt.tls.key_file == creds / "mqtt_tls_key"  # a path setting gets the file's path


def test_precedence_environment_over_credentials_over_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "mqtt__username").write_text("from-credential")
    (creds / "mqtt_client_id").write_text("cred-client")
    path = write(tmp_path, MINIMAL + "\n[mqtt]\nusername = 'from-file'\nclient_id = 'file-client'\n"
                 "topic_prefix = 'plant7'\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    monkeypatch.setenv("LINEWATCH_MQTT__CLIENT_ID", "env-client")
    settings = load_settings(path)
    assert settings.mqtt.username == "from-credential"  # credential beats file
    assert settings.mqtt.client_id == "env-client"  # environment beats credential
    assert settings.mqtt.topic_prefix == "plant7"  # file beats default


# ---------------------------------------------------------------------------------------------- problems


def test_every_problem_is_reported_at_once_with_its_location(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(
        tmp_path,
        """
[station]
id = "line 1/cam#"

[camera]
kind = "genicam"
cti = []
device_index = -1
exposure = 5

[mqtt]
port = 99999
hots = "broker"

[queue]
size = 0
overflow = "drop_newest"

[metrics]
port = 0
bind = "0.0.0.0"
""",
    )
    monkeypatch.setenv("LINEWATCH_SERVICE__DRAIN_TIMEOUT_S", "soon")
    found = problems(path)
    assert set(found) >= {
        "station.id",
        "camera.cti",
        "camera.device_index",
        "camera.exposure",
        "mqtt.port",
        "mqtt.hots",
        "queue.size",
        "queue.overflow",
        "metrics.port",
        "metrics.bind",
        "service.drain_timeout_s",
    }
    assert "unknown setting" in found["mqtt.hots"] and "unknown setting" in found["camera.exposure"]
    assert "unknown setting" in found["metrics.bind"] and "(got 0)" in found["metrics.port"]
    assert "topic level" in found["station.id"]
    assert "'drop_newest'" in found["queue.overflow"] and "block" in found["queue.overflow"]
    assert "[from LINEWATCH_SERVICE__DRAIN_TIMEOUT_S]" in found["service.drain_timeout_s"]


def test_required_sections_are_named(tmp_path: Path) -> None:
    found = problems(write(tmp_path, "[queue]\nsize = 4\n"))
    assert found["station"] == "required but not set"
    assert found["camera"] == "required but not set"


def test_unknown_camera_kind(tmp_path: Path) -> None:
    found = problems(write(tmp_path, "[station]\nid = 'a'\n[camera]\nkind = 'usb'\n"))
    assert "genicam" in found["camera"] and "'usb'" in found["camera"]


def test_secrets_are_never_echoed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LINEWATCH_MQTT__PASSWORD", "x" * 5)
    path = write(tmp_path, MINIMAL + "\n[mqtt]\nusername = 5\n")
    monkeypatch.setenv("LINEWATCH_MQTT__TLS__ENABLED", "maybe-secret")
    found = problems(path)
    assert "mqtt.username" in found and "mqtt.tls.enabled" in found
    assert all("xxxxx" not in message for message in found.values())


def test_an_unknown_credential_is_a_problem(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "mqtt_pasword").write_text("typo")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    found = problems(write(tmp_path, MINIMAL))
    assert found[str(creds / "mqtt_pasword")].startswith("credential names no setting")


def test_environment_lists_and_tables_must_be_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """pydantic-settings stops at a list/table value that is not JSON; the variable is named, with the JSON
    it should have been, and every other problem is still reported."""
    path = write(tmp_path, MINIMAL)
    monkeypatch.setenv("LINEWATCH_CAMERA__PATTERNS", "*.png,*.bmp")
    monkeypatch.setenv("LINEWATCH_MQTT__PORT", "x")
    found = problems(path)
    assert found["camera.patterns"] == (
        'must be JSON for a list, e.g. ["*.png", "*.bmp"] (got \'*.png,*.bmp\') '
        "[from LINEWATCH_CAMERA__PATTERNS]"
    )
    assert "[from LINEWATCH_MQTT__PORT]" in found["mqtt.port"]  # still reported alongside

    genicam = write(tmp_path, "[station]\nid = 'a'\n[camera]\nkind = 'genicam'\ncti = ['/x.cti']\n", "g.toml")
    monkeypatch.delenv("LINEWATCH_CAMERA__PATTERNS")
    monkeypatch.delenv("LINEWATCH_MQTT__PORT")
    monkeypatch.setenv("LINEWATCH_CAMERA__NODES", "ExposureTime=5")
    assert problems(genicam) == {
        "camera.nodes": 'must be JSON for a table, e.g. {"ExposureTime": 5} (got \'ExposureTime=5\') '
        "[from LINEWATCH_CAMERA__NODES]"
    }
    monkeypatch.setenv("LINEWATCH_CAMERA__NODES", '{"ExposureTime": 5}')  # as JSON it is accepted
    settings = load_settings(genicam)
    assert isinstance(settings.camera, GenicamCameraConfig) and settings.camera.nodes == {"ExposureTime": 5}


def test_misspelt_environment_names_are_problems_with_a_suggestion(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, MINIMAL)
    monkeypatch.setenv("LINEWATCH_QUEUE_SIZE", "4")  # '_' where the nested delimiter '__' belongs
    monkeypatch.setenv("LINEWATCH_STATEDIR", str(tmp_path))
    monkeypatch.setenv("LINEWATCH_MQT__PORT", "1884")
    monkeypatch.setenv("LINEWATCH_WHATEVER", "1")
    found = problems(path)
    assert found == {
        "LINEWATCH_QUEUE_SIZE": "environment variable names no setting; did you mean LINEWATCH_QUEUE__SIZE?",
        "LINEWATCH_STATEDIR": "environment variable names no setting; did you mean LINEWATCH_STATE_DIR?",
        "LINEWATCH_MQT__PORT": "environment variable names no setting; did you mean LINEWATCH_MQTT__PORT?",
        "LINEWATCH_WHATEVER": "environment variable names no setting (name a setting as "
        "LINEWATCH_<SECTION>__<KEY> or a top-level key, e.g. LINEWATCH_STATE_DIR)",
    }


def test_environment_names_the_project_uses_for_other_things_are_not_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("LINEWATCH_REQUIRE_INTEGRATION", "LINEWATCH_REQUIRE_GPU"):
        monkeypatch.setenv(name, "1")
    assert load_settings(write(tmp_path, MINIMAL)).station.id == "line1-cam1"


def test_a_config_file_that_is_not_utf8(tmp_path: Path) -> None:
    latin1 = tmp_path / "latin1.toml"
    latin1.write_bytes("# Prüfstation\n".encode("latin-1") + MINIMAL.format(folder=tmp_path).encode())
    assert problems(latin1) == {str(latin1): "not UTF-8 text (byte 0xfc at offset 4, line 1)"}
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"x = 1\n\x89PNG\r\n\x1a\n\x00\xff")
    assert problems(binary) == {str(binary): "not UTF-8 text (byte 0x89 at offset 6, line 2)"}


def test_missing_and_unparsable_files(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    assert "no such config file" in problems(missing)[str(missing)]
    assert problems(tmp_path) == {str(tmp_path): "a directory, not a config file (give the .toml file)"}
    broken = write(tmp_path, "[station\nid = 1\n", "broken.toml")
    assert "not valid TOML" in problems(broken)[str(broken)]
    assert "line 1" in problems(broken)[str(broken)]


# ---------------------------------------------------------------------------------------------- shipped files


def _model_of(annotation: object) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        models = [a for a in typing.get_args(annotation) if isinstance(a, type) and issubclass(a, BaseModel)]
        return models[0] if len(models) == 1 else None
    return None


def _keys(model: type[BaseModel]) -> set[str]:
    out: set[str] = set()
    for name, info in model.model_fields.items():
        if name == "camera":
            continue
        sub = _model_of(info.annotation)
        out |= _keys(sub) if sub is not None else {name}
    return out


def test_reference_config_is_valid_and_annotates_every_setting() -> None:
    settings = load_settings(REFERENCE)
    assert isinstance(settings.camera, GenicamCameraConfig)
    lines = REFERENCE.read_text().splitlines()
    keys = _keys(LinewatchSettings)
    for camera in (GenicamCameraConfig, FolderCameraConfig, VideoCameraConfig, SyntheticCameraConfig):
        keys |= _keys(camera)
    missing, uncommented = [], []
    for key in sorted(keys):
        # key = value (perhaps commented out: optional settings without a default), or a [table.key].
        pattern = re.compile(rf"^(#?\s*#?\s*{key}\s*=|\[[\w.]*\b{key}\])")
        hits = [i for i, line in enumerate(lines) if pattern.match(line)]
        if not hits:
            missing.append(key)
            continue
        for i in hits:
            above = lines[i - 1].strip()
            text = above.lstrip("# ").strip()
            # The line above must be a comment that says something, not another (commented) setting.
            if not above.startswith("#") or not text or re.match(r"^\w+\s*=", text):
                uncommented.append(f"{key} (line {i + 1})")
    assert not missing, f"settings not in {REFERENCE.name}: {missing}"
    assert not uncommented, f"settings without a comment line above: {uncommented}"


def test_demo_config_is_valid() -> None:
    settings = load_settings(DEMO)
    assert isinstance(settings.camera, SyntheticCameraConfig)
    assert settings.products.active is not None


# ---------------------------------------------------------------------------------------------- the verbs


def linewatch(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("LINEWATCH_")}
    return subprocess.run(
        [sys.executable, "-m", "linewatch", *args],
        capture_output=True, text=True, timeout=120, env={**clean, **(env or {})}, cwd=REPO,
    )


def test_check_config_and_run_print_every_problem_without_a_traceback(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "\n[mqtt]\nport = 'x'\nhots = 'y'\n")
    for verb in ("check-config", "run"):
        done = linewatch(verb, "--config", str(path))
        assert done.returncode == 2, done.stderr
        assert "Traceback" not in done.stderr + done.stdout
        lines = done.stderr.splitlines()
        assert any(line.startswith("mqtt.port: ") for line in lines)
        assert any(line.startswith("mqtt.hots: unknown setting") for line in lines)


def test_check_config_verifies_files_and_summarises(tmp_path: Path) -> None:
    ok = linewatch("check-config", "--config", str(write(tmp_path, MINIMAL)))
    assert ok.returncode == 0, ok.stderr
    assert "OK" in ok.stdout and "line1-cam1" in ok.stdout and "folder" in ok.stdout
    bad = write(
        tmp_path,
        "[station]\nid = 'a'\n[camera]\nkind = 'genicam'\ncti = ['/nonexistent/x.cti']\n"
        "[products]\ndir = '{folder}'\nactive = 'ghost'\n",
        "bad.toml",
    )
    done = linewatch("check-config", "--config", str(bad))
    assert done.returncode == 2
    assert "camera.cti[0]: GenTL producer /nonexistent/x.cti does not exist" in done.stderr
    assert "products.active: " in done.stderr and "ghost" in done.stderr
    assert "Traceback" not in done.stderr


def test_check_config_and_run_report_bad_environment_and_files_in_one_line(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL)
    latin1 = tmp_path / "latin1.toml"
    latin1.write_bytes("# Prüfstation\n".encode("latin-1") + MINIMAL.format(folder=tmp_path).encode())
    cases = [
        (path, {"LINEWATCH_CAMERA__PATTERNS": "*.png"},
         'camera.patterns: must be JSON for a list, e.g. ["*.png"] (got \'*.png\') '
         "[from LINEWATCH_CAMERA__PATTERNS]"),
        (path, {"LINEWATCH_QUEUE_SIZE": "4"},
         "LINEWATCH_QUEUE_SIZE: environment variable names no setting; did you mean LINEWATCH_QUEUE__SIZE?"),
        (latin1, {}, f"{latin1}: not UTF-8 text (byte 0xfc at offset 4, line 1)"),
    ]
    for config, env, line in cases:
        for verb in ("check-config", "run"):
            done = linewatch(verb, "--config", str(config), env=env)
            assert done.returncode == 2, (verb, env, done.stderr)
            assert "Traceback" not in done.stderr + done.stdout
            assert done.stderr.splitlines()[0] == line


def test_ci_environment_passes_check_config_and_run(tmp_path: Path) -> None:
    """.ci/run exports LINEWATCH_REQUIRE_INTEGRATION=1 for the whole suite, daemons included."""
    env = {"LINEWATCH_REQUIRE_INTEGRATION": "1", "LINEWATCH_REQUIRE_GPU": "1"}
    ok = linewatch("check-config", "--config", str(write(tmp_path, MINIMAL)), env=env)
    assert ok.returncode == 0, ok.stderr
    # run with one deliberate problem: it reports exactly that one, not the CI variables (and starts nothing).
    bad = write(tmp_path, MINIMAL + "\n[queue]\nsize = 0\n", "q.toml")
    done = linewatch("run", "--config", str(bad), env=env)
    assert done.returncode == 2
    assert [line for line in done.stderr.splitlines() if ": " in line and "LINEWATCH_" in line] == []
    assert done.stderr.startswith("queue.size: ")

"""The daemon's settings: one pydantic-settings model, read from a TOML file, environment and credentials.

Precedence, highest first:

1. environment variables ``LINEWATCH_<SECTION>__<KEY>`` (nested with ``__``, e.g. ``LINEWATCH_MQTT__PORT``,
   ``LINEWATCH_CAMERA__KIND``; lists and tables as JSON, e.g. ``LINEWATCH_CAMERA__CTI='["/opt/x.cti"]'``;
   top-level keys without ``__``, e.g. ``LINEWATCH_STATE_DIR``);
2. systemd credentials: every file in ``$CREDENTIALS_DIRECTORY`` (``LoadCredential=``) named
   ``<section>_<key>`` or ``<section>__<key>[__<key>…]`` sets that setting, e.g. ``mqtt_password`` →
   ``mqtt.password``. A setting that is a file path (``mqtt__tls__key_file``) gets the credential file's
   path, anything else its contents (one trailing newline removed);
3. the TOML file (``--config``, default ``/etc/linewatch/linewatch.toml``);
4. the defaults below; ``state_dir``'s is ``$STATE_DIRECTORY`` (systemd's ``StateDirectory=``) when set,
   else ``/var/lib/linewatch/<station.id>``.

Every model forbids unknown keys, so a typo is an error, not a silently ignored setting; so is a
``LINEWATCH_*`` environment variable that names no setting (``LINEWATCH_QUEUE_SIZE`` for
``LINEWATCH_QUEUE__SIZE``), except the few the project reads for other purposes (``ENV_NOT_SETTINGS``). An
environment value for a list, table or section that is not JSON is reported with the variable's name. A
config file that is not UTF-8 is one problem, not a traceback. ``load_settings`` gathers every problem as
``(location, message)`` into one ``ConfigError``.
"""

from __future__ import annotations

import argparse
import contextvars
import difflib
import json
import os
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
    TomlConfigSettingsSource,
)

from linewatch.acquisition import CameraConfig
from linewatch.bundle.registry import validate_product_id
from linewatch.errors import BundleError, ConfigError
from linewatch.inference.selection import InferenceConfig
from linewatch.products.drift import DriftConfig
from linewatch.publish.journal import JournalConfig
from linewatch.publish.mqtt import MqttConfig
from linewatch.publish.topics import validate_station
from linewatch.service.metrics import MetricsConfig

DEFAULT_CONFIG_PATH = Path("/etc/linewatch/linewatch.toml")
ENV_PREFIX = "LINEWATCH_"
# LINEWATCH_* environment variables the project reads for purposes other than settings. Every other
# LINEWATCH_* name that names no setting is a config problem (a misspelt setting would else be ignored).
# No variable names the config file: that is --config. Add a name here when code starts reading one.
ENV_NOT_SETTINGS: frozenset[str] = frozenset({
    "LINEWATCH_REQUIRE_INTEGRATION",  # tests/harness.py: a missing broker/simulator fails; .ci/run sets it
    "LINEWATCH_REQUIRE_GPU",  # tests/gpu: a missing TensorRT fails; scripts/gpu-check sets it
})
CREDENTIALS_ENV = "CREDENTIALS_DIRECTORY"
# systemd's StateDirectory=linewatch/%i: the one directory the unit's sandbox lets the daemon write to.
STATE_DIRECTORY_ENV = "STATE_DIRECTORY"
STATE_ROOT = Path("/var/lib/linewatch")

# The file load_settings is reading (settings_customise_sources is a classmethod without arguments).
_TOML_PATH: contextvars.ContextVar[Path | None] = contextvars.ContextVar("linewatch_toml_path", default=None)
# Environment variables (upper case) left out of the environment source: values already reported as not JSON.
_ENV_SKIP: contextvars.ContextVar[frozenset[str]] = contextvars.ContextVar(
    "linewatch_env_skip", default=frozenset()
)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StationConfig(_Section):
    """``[station]``: which station (camera position on the line) this daemon is."""

    id: str = Field(
        description="Station id: 1-64 letters, digits, '.', '_', '-'; one MQTT topic level "
        "(<topic_prefix>/<id>/...) and the default state directory name"
    )

    @field_validator("id")
    @classmethod
    def _valid_station(cls, value: str) -> str:
        return validate_station(value)


class ProductsConfig(_Section):
    """``[products]``: where product bundles live and which one inspects at start."""

    dir: Path = Field(
        default=STATE_ROOT / "products", description="Directory holding one bundle directory per product id"
    )
    active: str | None = Field(
        default=None,
        description="Product id inspected from start (a bundle directory in dir); without one every frame "
        "is reported not_inspected until a product is set",
    )

    review_dir: Path | None = Field(
        default=None,
        description="Where operator feedback puts labelled frames (MVTec-AD layout per product, read by "
        "trainer fit/evaluate); default <state_dir>/review",
    )
    max_prepared: int = Field(
        default=4, ge=1, le=64,
        description="Products kept prepared beside the active one (one of another backbone holds an engine)",
    )
    command_timeout_s: float = Field(
        default=120.0, gt=0,
        description="Longest wait for a product/set or product/prepare before its answer says it goes on "
        "in the background (loading a new engine, building a TensorRT plan)",
    )
    drift: DriftConfig = Field(
        default_factory=DriftConfig, description="Good-part score drift against the bundle's calibration"
    )

    @field_validator("active")
    @classmethod
    def _valid_product(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            return validate_product_id(value)
        except BundleError as exc:
            raise ValueError(str(exc)) from exc


class QueueConfig(_Section):
    """``[queue]``: the bounded queue between the camera and inference."""

    size: int = Field(default=8, ge=1, le=4096, description="Frames that may wait for inference")
    overflow: Literal["block", "drop_oldest"] = Field(
        default="block",
        description="When the queue is full: block (the camera waits; a camera that cannot wait loses "
        "frames, reported as not_inspected frame-id gaps) or drop_oldest (the oldest waiting frame is "
        "reported not_inspected with reason 'dropped: queue full')",
    )


class ScoringConfig(_Section):
    """``[scoring]``: what the scoring stage renders."""

    heatmap_max_side_px: int = Field(
        default=512, ge=32, le=8192, description="Longest side of a published heatmap PNG, pixels"
    )


class LoggingConfig(_Section):
    """``[logging]``: journald-friendly lines, one summary per interval (never one line per frame)."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO", description="Lowest level logged"
    )
    summary_interval_s: float = Field(
        default=60.0, gt=0, description="Seconds between summary lines (fps, verdict counts, latency, drops)"
    )


class ServiceConfig(_Section):
    """``[service]``: lifecycle timing."""

    drain_timeout_s: float = Field(
        default=10.0,
        ge=0,
        description="On SIGTERM/SIGINT, how long frames already acquired may take to be inspected; frames "
        "still waiting after that are reported not_inspected (never lost)",
    )
    stats_interval_s: float = Field(default=10.0, gt=0, description="Seconds between 'stats' MQTT messages")
    heartbeat_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description="A stage whose heartbeat is older than this is stuck: the systemd watchdog is no longer "
        "pinged (systemd then restarts the service, given WatchdogSec=)",
    )
    start_timeout_s: float = Field(
        default=120.0, gt=0, description="Longest time to open the camera and load the first product"
    )


class LinewatchSettings(BaseSettings):
    """The whole configuration of one daemon (one station, one camera)."""

    model_config = SettingsConfigDict(
        extra="forbid",
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
    )

    station: StationConfig = Field(description="This station")
    camera: CameraConfig = Field(description="The camera (kind: genicam | folder | video | synthetic)")
    inference: InferenceConfig = Field(
        default_factory=InferenceConfig, description="Inference backend and its settings"
    )
    products: ProductsConfig = Field(default_factory=ProductsConfig, description="Product bundles")
    mqtt: MqttConfig = Field(default_factory=MqttConfig, description="MQTT broker and topics")
    queue: QueueConfig = Field(default_factory=QueueConfig, description="Queue in front of inference")
    state_dir: Path = Field(
        default=STATE_ROOT / "default",
        description="Writable directory of the journal and reject images. Precedence: environment "
        "LINEWATCH_STATE_DIR, then this setting, then $STATE_DIRECTORY (set by systemd's StateDirectory=; "
        "the first path when it lists several), then /var/lib/linewatch/<station.id>",
    )
    journal: JournalConfig = Field(
        description="Results journal (outbox + audit trail); journal.state_dir defaults to state_dir"
    )
    scoring: ScoringConfig = Field(default_factory=ScoringConfig, description="Heatmap rendering")
    logging: LoggingConfig = Field(default_factory=LoggingConfig, description="Log level and summaries")
    service: ServiceConfig = Field(default_factory=ServiceConfig, description="Lifecycle timing")
    metrics: MetricsConfig = Field(
        default_factory=MetricsConfig, description="Prometheus endpoint (loopback by default)"
    )

    @model_validator(mode="before")
    @classmethod
    def _derive_state_dirs(cls, data: Any) -> Any:
        """state_dir defaults to $STATE_DIRECTORY (systemd), else /var/lib/linewatch/<station>; the journal
        lives there unless told."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        station = data.get("station")
        station_id = station.get("id") if isinstance(station, dict) else None
        if "state_dir" not in data:
            # systemd joins several StateDirectory= paths with ':'; the unit names one, and it comes first.
            systemd_state = os.environ.get(STATE_DIRECTORY_ENV, "").split(":")[0]
            if systemd_state:
                data["state_dir"] = systemd_state
            else:
                name = station_id if isinstance(station_id, str) and station_id else "default"
                data["state_dir"] = str(STATE_ROOT / name)
        journal = data.get("journal", {})
        if isinstance(journal, dict) and "state_dir" not in journal:
            data["journal"] = {**journal, "state_dir": data["state_dir"]}
        return data

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        skip = _ENV_SKIP.get()
        if skip and isinstance(env_settings, EnvSettingsSource):
            env_settings.env_vars = {k: v for k, v in env_settings.env_vars.items() if k.upper() not in skip}
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        sources.append(CredentialsSettingsSource(settings_cls))
        toml_path = _TOML_PATH.get()
        if toml_path is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml_path))
        return tuple(sources)


# ---------------------------------------------------------------------------------------------------------
# systemd credentials


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """Every pydantic model an annotation may hold (``X``, ``X | None``, the camera's tagged union)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return [a for a in typing.get_args(annotation) if isinstance(a, type) and issubclass(a, BaseModel)]
    return []


def _model_of(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside an annotation (``X``, ``X | None``), if there is exactly one."""
    models = _models_in(annotation)
    return models[0] if len(models) == 1 else None


def _field_at(parts: list[str]) -> FieldInfo | None:
    """The field a settings path names (``["mqtt", "tls", "key_file"]``), through every model a section may
    be (the camera's kinds); None if it names none."""
    models: list[type[BaseModel]] = [LinewatchSettings]
    info: FieldInfo | None = None
    for part in parts:
        found = [model.model_fields[part] for model in models if part in model.model_fields]
        if not found:
            return None
        info = found[0]
        models = [sub for field in found for sub in _models_in(field.annotation)]
    return info


def _is_path(annotation: Any) -> bool:
    if annotation is Path:
        return True
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return Path in typing.get_args(annotation)
    return False


# Credential names the systemd unit documents (LoadCredential=mqtt:<dir> prefixes each file with "mqtt_").
CREDENTIAL_ALIASES: dict[str, str] = {
    "mqtt_tls_key": "mqtt.tls.key_file",
    "mqtt_tls_cert": "mqtt.tls.cert_file",
    "mqtt_tls_ca": "mqtt.tls.ca_file",
}


def _walk(model: type[BaseModel], tokens: list[str]) -> tuple[list[str], FieldInfo] | None:
    """Match '_'-separated tokens against nested field names, longest field name first."""
    for n in range(len(tokens), 0, -1):
        name = "_".join(tokens[:n])
        info = model.model_fields.get(name)
        if info is None:
            continue
        rest = tokens[n:]
        if not rest:
            return [name], info
        sub = _model_of(info.annotation)
        if sub is not None:
            found = _walk(sub, rest)
            if found is not None:
                return [name, *found[0]], found[1]
    return None


def _resolve_credential(name: str) -> tuple[list[str], FieldInfo | None] | None:
    """Credential file name → settings path and the field it sets (None: names no setting).

    ``mqtt_password`` → [mqtt, password]; ``mqtt__tls__key_file`` or ``mqtt_tls_key_file`` →
    [mqtt, tls, key_file]; the aliases above for what the systemd unit documents.
    """
    if name in CREDENTIAL_ALIASES:
        name = CREDENTIAL_ALIASES[name].replace(".", "__")
    if "__" in name:
        parts = name.split("__")
        info = _field_at(parts)
        return None if info is None else (parts, info)
    found = _walk(LinewatchSettings, name.split("_"))
    if found is None or len(found[0]) < 2:
        return None  # a whole section (or a top-level key) is not a secret
    return found[0], found[1]


class CredentialsSettingsSource(PydanticBaseSettingsSource):
    """Settings from ``$CREDENTIALS_DIRECTORY`` (systemd ``LoadCredential=``/``SetCredentialEncrypted=``).

    Names that match no setting are skipped here; ``load_settings`` reports them by file name (clearer than
    an anonymous extra key).
    """

    def __init__(self, settings_cls: type[BaseSettings], directory: Path | None = None) -> None:
        super().__init__(settings_cls)
        env_dir = os.environ.get(CREDENTIALS_ENV)
        self.directory = directory or (Path(env_dir) if env_dir else None)

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # unused: __call__ builds the whole nested dict at once

    def __call__(self) -> dict[str, Any]:
        data: dict[str, Any] = {}
        if self.directory is None or not self.directory.is_dir():
            return data
        for file in sorted(self.directory.iterdir()):
            if not file.is_file() or file.name.startswith("."):
                continue
            resolved = _resolve_credential(file.name)
            if resolved is None:
                continue
            parts, info = resolved
            if info is not None and _is_path(info.annotation):
                value: Any = str(file)
            else:
                text = file.read_text(encoding="utf-8")
                value = text[:-1] if text.endswith("\n") else text
                value = value[:-1] if value.endswith("\r") else value
            node = data
            for part in parts[:-1]:
                node = node.setdefault(part, {})
            node[parts[-1]] = value
        return data


# ---------------------------------------------------------------------------------------------------------
# loading and problem reports

_SECRET_WORDS = ("password", "secret", "key", "token")
_CAMERA_KINDS = ("genicam", "folder", "video", "synthetic")


def _location(loc: tuple[int | str, ...]) -> str:
    parts = list(loc)
    # A tagged union's error path includes the tag: camera.genicam.cti → camera.cti.
    if len(parts) >= 2 and parts[0] == "camera" and parts[1] in _CAMERA_KINDS:
        del parts[1]
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def _env_name(location: str) -> str:
    return ENV_PREFIX + location.split("[")[0].replace(".", "__").upper()


def _message(err: Any, location: str) -> str:
    msg = str(err["msg"])
    for prefix in ("Value error, ", "Assertion failed, "):
        if msg.startswith(prefix):
            msg = msg[len(prefix) :]
    if err["type"] == "extra_forbidden":
        msg = (
            "unknown section (check the spelling)" if "." not in location
            else "unknown setting (not a key of this section; check the spelling)"
        )
    elif err["type"] == "missing":
        msg = "required but not set"
    value = err.get("input")
    secret = any(word in location.lower() for word in _SECRET_WORDS)
    if (
        err["type"] not in ("missing", "extra_forbidden")
        and isinstance(value, str | int | float | bool)
        and not secret
        and len(str(value)) <= 80
    ):
        msg += f" (got {value!r})"
    env = _env_name(location)
    if env in os.environ and env not in _ENV_SKIP.get():
        msg += f" [from {env}]"
    return msg


# ---------------------------------------------------------------------------------------------------------
# environment variables


def _env_variables() -> dict[str, str]:
    """The environment variables pydantic-settings reads as settings (it matches the prefix in any case)."""
    return {name: value for name, value in os.environ.items() if name.upper().startswith(ENV_PREFIX)}


def _env_field(name: str) -> tuple[str, FieldInfo] | None:
    """``LINEWATCH_CAMERA__PATTERNS`` → ``("camera.patterns", its field)``; None if it names no field."""
    parts = name[len(ENV_PREFIX) :].lower().split("__")
    info = _field_at(parts)
    return None if info is None else (".".join(parts), info)


def _env_names(model: type[BaseModel], prefix: str = ENV_PREFIX) -> set[str]:
    """Every environment variable that names a setting or a section, upper case."""
    out: set[str] = set()
    for name, info in model.model_fields.items():
        env = prefix + name.upper()
        out.add(env)
        for sub in _models_in(info.annotation):
            out |= _env_names(sub, env + "__")
    return out


def _suggest(name: str) -> str | None:
    """The setting a misspelt variable most likely means: the same letters with other underscores
    (``LINEWATCH_QUEUE_SIZE`` → ``LINEWATCH_QUEUE__SIZE``), else the closest spelling."""
    candidates = sorted(_env_names(LinewatchSettings))
    upper = name.upper()
    squashed = [c for c in candidates if c.replace("_", "") == upper.replace("_", "")]
    if squashed:
        return squashed[0]
    tails = {c[len(ENV_PREFIX) :]: c for c in candidates}
    close = difflib.get_close_matches(upper[len(ENV_PREFIX) :], list(tails), n=1, cutoff=0.75)
    return tails[close[0]] if close else None


def unknown_environment() -> list[tuple[str, str]]:
    """``LINEWATCH_*`` variables that name no setting (and are not in ``ENV_NOT_SETTINGS``).

    Only the first level is checked here: a misspelt key inside a section (``LINEWATCH_QUEUE__SIZ``) reaches
    the model, which reports it as an unknown setting.
    """
    out = []
    for name in sorted(_env_variables()):
        if name.upper() in ENV_NOT_SETTINGS:
            continue
        top = name[len(ENV_PREFIX) :].lower().split("__")[0]
        if top in LinewatchSettings.model_fields:
            continue
        suggestion = _suggest(name)
        hint = (
            f"; did you mean {suggestion}?" if suggestion
            else f" (name a setting as {ENV_PREFIX}<SECTION>__<KEY> or a top-level key, "
            f"e.g. {ENV_PREFIX}STATE_DIR)"
        )
        out.append((name, f"environment variable names no setting{hint}"))
    return out


def _json_kind(annotation: Any) -> str | None:
    """'list', 'table' or 'section' for the annotations pydantic-settings reads from the environment as
    JSON; None for a scalar."""
    if _models_in(annotation):
        return "section"
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(args) == 1:
        annotation = args[0]
    origin = typing.get_origin(annotation) or annotation
    if origin in (list, tuple, set, frozenset):
        return "list"
    if origin is dict:
        return "table"
    return None


def _json_scalar(text: str) -> Any:
    try:
        value = json.loads(text)
    except ValueError:
        return text
    return value if isinstance(value, int | float | bool) else text


def _json_example(kind: str | None, value: str) -> str:
    """How ``value`` would be written as JSON: ``*.png,*.bmp`` → ``["*.png", "*.bmp"]``,
    ``ExposureTime=5`` → ``{"ExposureTime": 5}``."""
    items = [item.strip() for item in value.split(",") if item.strip()]
    if kind == "list":
        return json.dumps([_json_scalar(item) for item in items] or ["value"])
    pairs = [item.split("=", 1) if "=" in item else item.split(":", 1) for item in items]
    if kind == "table" and pairs and all(len(pair) == 2 and pair[0].strip() for pair in pairs):
        return json.dumps({k.strip(): _json_scalar(v.strip()) for k, v in pairs})
    return json.dumps({"key": "value"})


def _env_json_problems() -> list[tuple[str, str, str]]:
    """``(variable, location, message)`` for each ``LINEWATCH_*`` variable whose value pydantic-settings
    cannot parse: a list, table or section must be given as JSON.

    Each variable is tried alone in pydantic-settings' own environment source, so what counts as complex is
    exactly what it decides.
    """
    source = EnvSettingsSource(LinewatchSettings)
    out = []
    for name, value in sorted(_env_variables().items()):
        source.env_vars = {name if source.case_sensitive else name.lower(): value}
        try:
            source()
        except SettingsError:
            pass
        else:
            continue
        field = _env_field(name)
        location = field[0] if field is not None else name
        kind = _json_kind(field[1].annotation) if field is not None else None
        if kind == "section":
            message = f"must be a JSON object (or set each key as {name.upper()}__<KEY>)"
        else:
            what = {"list": "a list", "table": "a table"}.get(kind or "", "this setting")
            message = f"must be JSON for {what}, e.g. {_json_example(kind, value)}"
        secret = any(word in location.lower() for word in _SECRET_WORDS)
        if not secret and len(value) <= 80:
            message += f" (got {value!r})"
        out.append((name, location, f"{message} [from {name}]"))
    return out


def unknown_credentials() -> list[tuple[str, str]]:
    """Credential files in ``$CREDENTIALS_DIRECTORY`` whose names match no setting."""
    env_dir = os.environ.get(CREDENTIALS_ENV)
    if not env_dir or not Path(env_dir).is_dir():
        return []
    return [
        (str(file), "credential names no setting (name it <section>_<key> or <section>__<key>)")
        for file in sorted(Path(env_dir).iterdir())
        if file.is_file() and not file.name.startswith(".") and _resolve_credential(file.name) is None
    ]


def problems_from(exc: ValidationError) -> list[tuple[str, str]]:
    out = []
    for err in exc.errors(include_url=False):
        location = _location(err["loc"])
        out.append((location, _message(err, location)))
    return out


def load_settings(path: Path | str | None = None) -> LinewatchSettings:
    """Read ``path`` (default ``/etc/linewatch/linewatch.toml``) plus environment and credentials.

    Raises ConfigError listing every problem as ``(location, message)``: a missing or unparsable file,
    unknown keys, wrong types or values, credential files that name no setting.
    """
    toml_path = Path(path) if path is not None else DEFAULT_CONFIG_PATH
    if toml_path.is_dir():
        raise ConfigError([(str(toml_path), "a directory, not a config file (give the .toml file)")])
    if not toml_path.is_file():
        raise ConfigError([(str(toml_path), "no such config file (give one with --config)")])
    try:
        with toml_path.open("rb") as fh:
            tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([(str(toml_path), f"not valid TOML: {exc}")]) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError([(str(toml_path), _not_utf8(exc))]) from exc
    except OSError as exc:
        raise ConfigError([(str(toml_path), f"cannot read: {exc.strerror or exc}")]) from exc
    problems: list[tuple[str, str]] = unknown_environment()
    token = _TOML_PATH.set(toml_path)
    try:
        settings = _build_settings(problems)
    finally:
        _TOML_PATH.reset(token)
    problems.extend(unknown_credentials())
    if problems or settings is None:
        raise ConfigError(problems)
    return settings


def _not_utf8(exc: UnicodeDecodeError) -> str:
    data = exc.object if isinstance(exc.object, bytes) else bytes(exc.object)
    line = data.count(b"\n", 0, exc.start) + 1
    return f"not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}, line {line})"


def _build_settings(problems: list[tuple[str, str]]) -> LinewatchSettings | None:
    """The settings from every source, or None with what is wrong appended to ``problems``.

    An environment value pydantic-settings cannot parse (not JSON for a list, table or section) stops it
    before validation; those variables are reported, and the settings are built once more without them so
    that every other problem is reported too.
    """
    try:
        return _validate(problems)
    except SettingsError as exc:
        bad = _env_json_problems()
        if not bad:  # not an environment value after all: still one line, not a traceback
            cause = f": {exc.__cause__}" if exc.__cause__ is not None else ""
            problems.append(("environment", f"{exc}{cause}"))
            return None
        problems.extend((location, message) for _, location, message in bad)
        token = _ENV_SKIP.set(frozenset(name.upper() for name, _, _ in bad))
        try:
            _validate(problems)
        except SettingsError as again:
            problems.append(("environment", str(again)))
        finally:
            _ENV_SKIP.reset(token)
        return None


def _validate(problems: list[tuple[str, str]]) -> LinewatchSettings | None:
    try:
        return LinewatchSettings()  # type: ignore[call-arg]  # values come from the sources
    except ValidationError as exc:
        problems.extend(problems_from(exc))
    except (OSError, UnicodeDecodeError) as exc:
        problems.append((f"${CREDENTIALS_ENV}", f"cannot read a credential: {exc}"))
    return None


def add_config_argument(parser: argparse.ArgumentParser) -> None:
    """``--config``, as ``linewatch run`` and ``check-config`` read it."""
    parser.add_argument(
        "--config",
        type=Path,
        default=DEFAULT_CONFIG_PATH,
        help=f"TOML config file (default {DEFAULT_CONFIG_PATH}); LINEWATCH_<SECTION>__<KEY> environment "
        "variables and $CREDENTIALS_DIRECTORY override it",
    )


def format_problems(error: ConfigError) -> str:
    """One ``location: message`` line per problem."""
    return "\n".join(f"{loc}: {msg}" for loc, msg in error.problems)

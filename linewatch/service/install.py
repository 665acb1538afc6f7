"""``linewatch install-service`` / ``uninstall-service``: the systemd unit, user, directories and configs.

install-service places (paths under ``--root``, default ``/``):

    /etc/systemd/system/linewatch@.service    systemd/linewatch@.service, ExecStart → this installation
    /etc/sysusers.d/linewatch.conf            the linewatch system user (applied with systemd-sysusers)
    /etc/tmpfiles.d/linewatch.conf            shared directories (applied with systemd-tmpfiles --create)
    /etc/linewatch/<station>.toml             per ``--station``: configs/linewatch.toml, only if absent, with
                                              its station id and a metrics port no other config here uses
    /etc/linewatch/credentials/<station>/     per ``--station``: root-only directory for the MQTT secrets

and then reloads systemd when it operates on the running system. It never overwrites a config and prints
every action it takes (``--dry-run``: every action it would take). uninstall-service disables and removes
the unit and the snippets; configs, credentials, state, cache and logs stay unless ``--purge``. With
``--station`` it removes only that instance (its enablement; with ``--purge`` its config, credentials and
state). The system user always stays (files it owned may still exist elsewhere).

``--root DIR`` stages everything into DIR (an image being built, or a test's temporary directory); then
nothing on the running system is touched and systemctl is not called.
"""

from __future__ import annotations

import argparse
import fnmatch
import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import linewatch
from linewatch.errors import ConfigError
from linewatch.service.metrics import MetricsConfig

UNIT_FILE = "linewatch@.service"
# The program the shipped unit names; install-service points ExecStart at the installation it runs from.
SHIPPED_EXEC = "/opt/linewatch/.venv/bin/linewatch"
STATION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
# Paths the unit's sandbox hides from the daemon: ProtectHome=yes and PrivateTmp=yes.
HIDDEN_BY_SANDBOX = ("/home", "/root", "/run/user", "/tmp", "/var/tmp")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--station",
        action="append",
        default=[],
        metavar="NAME",
        help="station (camera) instance: install creates /etc/linewatch/NAME.toml and its credentials "
        "directory; uninstall removes only this instance. Repeatable.",
    )
    parser.add_argument(
        "--root",
        type=Path,
        default=Path("/"),
        metavar="DIR",
        help="operate on this directory instead of / (staging; systemctl is not called)",
    )
    parser.add_argument("--dry-run", action="store_true", help="print what would be done, change nothing")
    parser.add_argument(
        "--exec",
        dest="exec_path",
        type=PurePosixPath,
        default=None,
        metavar="PATH",
        help="install-service: the linewatch program ExecStart runs, as the target system sees it "
        "(default: the one next to this Python, i.e. this installation)",
    )
    parser.add_argument(
        "--source",
        type=Path,
        default=Path(linewatch.__file__).resolve().parents[1],
        metavar="DIR",
        help="install-service: checkout holding systemd/ and configs/ (default: %(default)s)",
    )
    parser.add_argument(
        "--config-template",
        type=Path,
        default=None,
        metavar="FILE",
        help="install-service: skeleton for new station configs (default: SOURCE/configs/linewatch.toml)",
    )
    parser.add_argument(
        "--purge",
        action="store_true",
        help="uninstall-service: also delete configs, credentials, state, cache and logs",
    )


@dataclass(frozen=True)
class Layout:
    """Where everything goes, below ``root``."""

    root: Path

    def at(self, absolute: str) -> Path:
        return self.root / absolute.lstrip("/")

    @property
    def unit(self) -> Path:
        return self.at(f"/etc/systemd/system/{UNIT_FILE}")

    @property
    def sysusers(self) -> Path:
        return self.at("/etc/sysusers.d/linewatch.conf")

    @property
    def tmpfiles(self) -> Path:
        return self.at("/etc/tmpfiles.d/linewatch.conf")

    @property
    def config_dir(self) -> Path:
        return self.at("/etc/linewatch")

    def config(self, station: str) -> Path:
        return self.config_dir / f"{station}.toml"

    def credentials(self, station: str) -> Path:
        return self.config_dir / "credentials" / station

    def state(self, station: str) -> Path:
        return self.at(f"/var/lib/linewatch/{station}")

    @property
    def data_dirs(self) -> tuple[Path, ...]:
        return (self.at("/var/lib/linewatch"), self.at("/var/cache/linewatch"), self.at("/var/log/linewatch"))

    def enablement_links(self, station: str | None) -> list[Path]:
        """Symlinks `systemctl enable` made for our instances (all of them, or one station's)."""
        pattern = f"linewatch@{station}.service" if station else "linewatch@*.service"
        # Listed, not globbed: a literal glob component skips dangling links, and with --root every
        # link points outside the staging directory.
        return sorted(
            link
            for wants in self.at("/etc/systemd/system").glob("*.wants")
            for link in wants.iterdir()
            if fnmatch.fnmatchcase(link.name, pattern)
        )

    @property
    def is_live(self) -> bool:
        return self.root.resolve() == Path("/")


_PRESENT = {
    "installed": "install", "updated": "update", "removed": "remove", "ran": "run", "created": "create",
}


class Actions:
    """Performs or (dry run) only announces each step; every step prints one line."""

    def __init__(self, dry_run: bool) -> None:
        self.dry_run = dry_run

    def step(self, verb: str, message: str, action: Callable[[], object]) -> None:
        """``verb`` in the past tense ("installed"); a dry run prints "would install ..." instead."""
        if self.dry_run:
            print(f"would {_PRESENT.get(verb, verb)} {message}")
            return
        action()
        print(f"{verb} {message}")

    def note(self, message: str) -> None:
        print(message)


def render_unit(template: str, exec_path: PurePosixPath) -> str:
    """The shipped unit with ExecStart running ``exec_path`` instead of /opt/linewatch/.venv/bin/linewatch."""
    prefix = f"ExecStart={SHIPPED_EXEC} "
    lines = template.splitlines(keepends=True)
    hits = [i for i, line in enumerate(lines) if line.startswith(prefix)]
    if len(hits) != 1:
        raise ConfigError([(UNIT_FILE, f"expected exactly one line starting with {prefix!r}")])
    lines[hits[0]] = f"ExecStart={exec_path} " + lines[hits[0]][len(prefix) :]
    return "".join(lines)


def render_config(template: str, station: str, metrics_port: int | None = None) -> str:
    """The config skeleton with ``[station] id`` set to this station (so the default state directory,
    /var/lib/linewatch/<id>, is the one the unit's StateDirectory=linewatch/%i makes writable) and, given
    one, ``[metrics] port`` set to ``metrics_port``."""
    lines = template.splitlines(keepends=True)
    table = ""
    for i, line in enumerate(lines):
        stripped = line.strip()
        if stripped.startswith("["):
            table = stripped
        elif table == "[station]" and re.match(r"id\s*=", stripped):
            lines[i] = f'id = "{station}"\n'
        elif table == "[metrics]" and metrics_port is not None and re.match(r"port\s*=", stripped):
            lines[i] = f"port = {metrics_port}\n"
    return "".join(lines)


def metrics_ports_in_use(config_dir: Path) -> set[int]:
    """The metrics ports the station configs in ``config_dir`` serve on (without a [metrics] port: the
    default). Two instances on one port would stop the second from starting."""
    default_port: int = MetricsConfig.model_fields["port"].default
    used: set[int] = set()
    for path in sorted(config_dir.glob("*.toml")):
        try:
            metrics = tomllib.loads(path.read_text()).get("metrics", {})
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
            continue  # check-config says what is wrong with it; no port to avoid
        if isinstance(metrics, dict) and metrics.get("enabled", True) is not False:
            port = metrics.get("port", default_port)
            if isinstance(port, int):
                used.add(port)
    return used


def next_free_port(used: set[int]) -> int:
    port: int = MetricsConfig.model_fields["port"].default
    while port in used:
        port += 1
    return port


def hidden_by_sandbox(path: PurePosixPath) -> str | None:
    """The unit setting that hides ``path`` from the daemon, if any."""
    for prefix in HIDDEN_BY_SANDBOX:
        if path == PurePosixPath(prefix) or PurePosixPath(prefix) in path.parents:
            return "PrivateTmp=yes" if prefix.endswith("tmp") else "ProtectHome=yes"
    return None


def _check_station(name: str) -> None:
    if not STATION_RE.match(name):
        raise ConfigError(
            [("--station", f"{name!r} is not a station name: use 1-64 letters, digits, '.', '_' or '-', "
              "starting with a letter or digit (it becomes a file name, a unit instance and a topic level)")]
        )


def _write(path: Path, text: str, mode: int) -> Callable[[], None]:
    def write() -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text)
        tmp.chmod(mode)
        tmp.replace(path)

    return write


def _install_file(actions: Actions, path: Path, text: str, mode: int, what: str) -> None:
    if path.is_file() and path.read_text() == text:
        actions.note(f"unchanged {path} ({what})")
        return
    verb = "updated" if path.exists() else "installed"
    actions.step(verb, f"{path} ({what})", _write(path, text, mode))


def _run(actions: Actions, argv: list[str], why: str) -> None:
    def run() -> None:
        proc = subprocess.run(argv, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            message = f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}"
            raise ConfigError([(argv[0], message)])

    actions.step("ran", f"{' '.join(argv)} ({why})", run)


def _systemd_running(layout: Layout) -> bool:
    return layout.is_live and Path("/run/systemd/system").is_dir() and shutil.which("systemctl") is not None


def _default_exec() -> PurePosixPath:
    return PurePosixPath(Path(sys.executable).parent / "linewatch")


def install(args: argparse.Namespace) -> int:
    layout = Layout(args.root)
    actions = Actions(args.dry_run)
    stations: list[str] = args.station
    for station in stations:
        _check_station(station)

    exec_path: PurePosixPath = args.exec_path or _default_exec()
    problems: list[tuple[str, str]] = []
    if not exec_path.is_absolute():
        problems.append(("--exec", f"{exec_path} is not an absolute path"))
    # Everything the daemon loads must be visible inside its sandbox: the program and, for the
    # installation this runs from, its Python and package (an editable install lives in the checkout).
    visible = [exec_path] if args.exec_path else [exec_path, PurePosixPath(sys.prefix),
                                                   PurePosixPath(Path(linewatch.__file__).resolve().parent)]
    for path in visible:
        setting = hidden_by_sandbox(path)
        if setting:
            problems.append(
                ("--exec", f"the service could not reach {path}: the unit's {setting} hides it. Install "
                 "linewatch outside /home, /root and /tmp (e.g. python3 -m venv /opt/linewatch/.venv), "
                 "then run that installation's `linewatch install-service`")
            )
    source: Path = args.source
    sources = {name: source / "systemd" / name
               for name in (UNIT_FILE, "linewatch.sysusers.conf", "linewatch.tmpfiles.conf")}
    config_template: Path = args.config_template or source / "configs" / "linewatch.toml"
    if stations:
        sources["config template"] = config_template
    for name, source_file in sources.items():
        if not source_file.is_file():
            hint = "pass --config-template FILE" if name == "config template" else (
                "pass --source with the linewatch checkout that holds systemd/ and configs/")
            problems.append(("--source" if name != "config template" else "--config-template",
                             f"{source_file} not found ({name}); {hint}"))
    if problems:
        raise ConfigError(problems)

    target_exec = layout.at(str(exec_path))
    if not (target_exec.is_file() and os.access(target_exec, os.X_OK)):
        if layout.is_live:
            raise ConfigError([("--exec", f"{exec_path} is not an executable file")])
        actions.note(f"note: {target_exec} does not exist yet; install linewatch there before starting")

    unit = render_unit(sources[UNIT_FILE].read_text(), exec_path)
    _install_file(actions, layout.unit, unit, 0o644, f"unit, ExecStart={exec_path}")
    _install_file(actions, layout.sysusers, sources["linewatch.sysusers.conf"].read_text(), 0o644,
                  "system user linewatch")
    _install_file(actions, layout.tmpfiles, sources["linewatch.tmpfiles.conf"].read_text(), 0o644,
                  "shared directories")

    root_opt = [] if layout.is_live else [f"--root={layout.root}"]
    for tool, flags, file, why in (
        ("systemd-sysusers", [], layout.sysusers, "creates user linewatch, adds it to plugdev and video"),
        ("systemd-tmpfiles", ["--create"], layout.tmpfiles, "creates /etc/linewatch and its credentials/"),
    ):
        binary = shutil.which(tool)
        if binary is None:
            actions.note(f"skipped {tool}: not installed; apply {file} by hand")
        else:
            _run(actions, [binary, *flags, *root_opt, str(file)], why)

    ports = metrics_ports_in_use(layout.config_dir)
    for station in stations:
        config = layout.config(station)
        if config.exists():
            actions.note(f"kept {config} (an existing config is never overwritten)")
        else:
            port = next_free_port(ports)
            ports.add(port)
            text = render_config(config_template.read_text(), station, port)
            actions.step("installed", f"{config} (skeleton from {config_template}, metrics port {port}; "
                         "edit it)", _write(config, text, 0o644))
        credentials = layout.credentials(station)
        if credentials.is_dir():
            actions.note(f"kept {credentials}")
        else:
            def make_credentials(path: Path = credentials) -> None:
                path.mkdir(parents=True, exist_ok=True)
                path.chmod(0o700)
                path.parent.chmod(0o700)

            actions.step(
                "created",
                f"{credentials} (mode 0700; its files password, tls_key reach the daemon as "
                "$CREDENTIALS_DIRECTORY/mqtt_password, mqtt_tls_key)",
                make_credentials,
            )

    if _systemd_running(layout):
        _run(actions, ["systemctl", "daemon-reload"], "loads the new unit")
    else:
        actions.note("skipped systemctl daemon-reload (" + ("staging root" if not layout.is_live
                                                           else "systemd is not running") + ")")
    for station in stations or ["<station>"]:
        actions.note(
            f"next: edit /etc/linewatch/{station}.toml, then: systemctl enable --now linewatch@{station}"
        )
    return 0


def _remove(actions: Actions, path: Path, what: str) -> None:
    if path.is_symlink() or path.is_file():
        actions.step("removed", f"{path} ({what})", path.unlink)
    elif path.is_dir():
        actions.step("removed", f"{path} ({what})", lambda: shutil.rmtree(path))
    else:
        actions.note(f"not present {path} ({what})")


def uninstall(args: argparse.Namespace) -> int:
    layout = Layout(args.root)
    actions = Actions(args.dry_run)
    stations: list[str | None] = list(args.station) or [None]
    for station in stations:
        if station is not None:
            _check_station(station)

    live = _systemd_running(layout)
    for station in stations:
        instance = f"linewatch@{station}.service" if station else "linewatch@*.service"
        if live:
            _run(actions, ["systemctl", "stop", instance], "stops the running instance(s)")
        for link in layout.enablement_links(station):
            _remove(actions, link, f"enablement of {link.name}")

    if stations == [None]:
        _remove(actions, layout.unit, "unit")
        _remove(actions, layout.sysusers, "system user snippet")
        _remove(actions, layout.tmpfiles, "directories snippet")
    if live:
        _run(actions, ["systemctl", "daemon-reload"], "forgets the removed unit")

    if args.purge:
        if stations == [None]:
            _remove(actions, layout.config_dir, "configs and credentials")
            for path in layout.data_dirs:
                _remove(actions, path, "state, cache or logs")
        else:
            for station in stations:
                assert station is not None
                _remove(actions, layout.config(station), "config")
                _remove(actions, layout.credentials(station), "credentials")
                _remove(actions, layout.state(station), "state (results journal)")
    else:
        kept = [layout.config_dir, *layout.data_dirs] if stations == [None] else [
            p for s in stations if s for p in (layout.config(s), layout.credentials(s), layout.state(s))]
        for path in kept:
            if path.exists():
                actions.note(f"kept {path} (--purge deletes it)")
    if stations == [None]:
        actions.note("kept system user linewatch (files it owns may remain; `userdel linewatch` removes it)")
    return 0


def run(args: argparse.Namespace) -> int:
    uninstalling = args.verb == "uninstall-service"
    misused = [flag for flag, given in (
        ("--purge", args.purge and not uninstalling),
        ("--exec", args.exec_path is not None and uninstalling),
        ("--config-template", args.config_template is not None and uninstalling),
    ) if given]
    try:
        if misused:
            raise ConfigError([(flag, f"not an option of {args.verb}") for flag in misused])
        return uninstall(args) if uninstalling else install(args)
    except ConfigError as exc:
        for location, message in exc.problems:
            print(f"{args.verb}: {location}: {message}", file=sys.stderr)
        return 2
    except PermissionError as exc:
        print(f"{args.verb}: {exc.filename}: permission denied (run as root, or stage with --root DIR)",
              file=sys.stderr)
        return 1

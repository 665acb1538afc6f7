"""`linewatch install-service` / `uninstall-service`, staged into a temporary root (never the real /)."""

from __future__ import annotations

import shutil
import tomllib
from pathlib import Path

import pytest
from harness import missing_integration

from linewatch.service.cli import main

REPO = Path(__file__).resolve().parents[2]
EXEC = "/opt/linewatch/.venv/bin/linewatch"
TEMPLATE = '# state_dir = "/x"\n[station]\n# the id\nid = "changeme"\n\n[mqtt]\nid = "keep"\n'


def tree(root: Path) -> dict[str, tuple[int, bytes | str | None]]:
    """path → (mode, content or link target) of everything below root."""
    out: dict[str, tuple[int, bytes | str | None]] = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_symlink():
            out[rel] = (0, str(path.readlink()))
        elif path.is_file():
            out[rel] = (path.stat().st_mode & 0o7777, path.read_bytes())
        else:
            out[rel] = (path.stat().st_mode & 0o7777, None)
    return out


@pytest.fixture
def staged(tmp_path: Path) -> tuple[Path, Path]:
    for tool in ("systemd-sysusers", "systemd-tmpfiles"):
        if shutil.which(tool) is None:
            missing_integration(f"{tool} is not installed (apt-get install -y systemd)")
    root = tmp_path / "root"
    root.mkdir()
    template = tmp_path / "linewatch.toml"
    template.write_text(TEMPLATE)
    return root, template


def install(root: Path, template: Path, *extra: str) -> int:
    return main(["install-service", "--root", str(root), "--exec", EXEC, "--config-template", str(template),
                 *extra])


def test_install_places_unit_user_configs_and_prints_each_action(
    staged: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    root, template = staged
    assert install(root, template, "--station", "press-1", "--station", "press-2") == 0
    out = capsys.readouterr().out

    unit = root / "etc/systemd/system/linewatch@.service"
    assert f"ExecStart={EXEC} run --config /etc/linewatch/%i.toml" in unit.read_text()
    assert (root / "etc/sysusers.d/linewatch.conf").is_file()
    assert (root / "etc/tmpfiles.d/linewatch.conf").is_file()
    # systemd-sysusers and systemd-tmpfiles really ran against the staged root.
    assert any(line.startswith("linewatch:") for line in (root / "etc/passwd").read_text().splitlines())
    assert (root / "etc/linewatch/credentials").stat().st_mode & 0o777 == 0o700
    for station in ("press-1", "press-2"):
        config = root / f"etc/linewatch/{station}.toml"
        assert config.read_text() == TEMPLATE.replace('id = "changeme"', f'id = "{station}"')
        creds = root / f"etc/linewatch/credentials/{station}"
        assert creds.is_dir() and creds.stat().st_mode & 0o777 == 0o700
        assert f"systemctl enable --now linewatch@{station}" in out
    for expected in (
        f"installed {unit} (unit, ExecStart={EXEC})",
        f"installed {root}/etc/sysusers.d/linewatch.conf",
        f"installed {root}/etc/tmpfiles.d/linewatch.conf",
        f"--root={root}",
        f"installed {root}/etc/linewatch/press-1.toml",
        f"created {root}/etc/linewatch/credentials/press-1",
        "skipped systemctl daemon-reload (staging root)",
    ):
        assert expected in out, out


def test_reinstall_never_overwrites_a_config(
    staged: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    root, template = staged
    assert install(root, template, "--station", "press-1") == 0
    config = root / "etc/linewatch/press-1.toml"
    config.write_text('[station]\nid = "press-1"\n# tuned by the line engineer\n')
    (root / "etc/linewatch/credentials/press-1/password").write_text("s3cret")
    capsys.readouterr()

    assert install(root, template, "--station", "press-1") == 0
    out = capsys.readouterr().out
    assert config.read_text() == '[station]\nid = "press-1"\n# tuned by the line engineer\n'
    assert (root / "etc/linewatch/credentials/press-1/password").read_text() == "s3cret"
    assert f"kept {config} (an existing config is never overwritten)" in out
    assert f"unchanged {root}/etc/systemd/system/linewatch@.service" in out
    assert "s3cret" not in out


def test_skeleton_from_the_reference_config_names_the_station(staged: tuple[Path, Path]) -> None:
    """The default template is the repository's annotated configs/linewatch.toml."""
    root, _ = staged
    reference = REPO / "configs" / "linewatch.toml"
    assert main(["install-service", "--root", str(root), "--exec", EXEC, "--station", "press-7"]) == 0
    installed = (root / "etc/linewatch/press-7.toml").read_text()
    assert tomllib.loads(installed)["station"]["id"] == "press-7"
    changed = [(a, b) for a, b in zip(reference.read_text().splitlines(), installed.splitlines(), strict=True)
               if a != b]
    assert changed == [(changed[0][0], 'id = "press-7"')], changed


def test_every_station_config_gets_a_metrics_port_of_its_own(staged: tuple[Path, Path]) -> None:
    """Two instances on one metrics port: the second would not start. New configs take the lowest port no
    config in /etc/linewatch serves on (one without a [metrics] port serves on the default 9850)."""
    root, _ = staged
    reference = ["install-service", "--root", str(root), "--exec", EXEC]
    (root / "etc/linewatch").mkdir(parents=True)
    (root / "etc/linewatch/old.toml").write_text('[station]\nid = "old"\n')  # serves on 9850
    disabled = '[station]\nid = "off"\n[metrics]\nenabled = false\nport = 9852\n'  # 9852 stays free
    (root / "etc/linewatch/off.toml").write_text(disabled)
    assert main([*reference, "--station", "press-1", "--station", "press-2"]) == 0
    assert main([*reference, "--station", "press-3"]) == 0

    def port(station: str) -> int:
        return int(tomllib.loads((root / f"etc/linewatch/{station}.toml").read_text())["metrics"]["port"])

    assert [port(s) for s in ("press-1", "press-2", "press-3")] == [9851, 9852, 9853]


def test_dry_run_changes_nothing(staged: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    root, template = staged
    assert install(root, template, "--station", "press-1", "--dry-run") == 0
    out = capsys.readouterr().out
    assert list(root.iterdir()) == []
    assert f"would install {root}/etc/systemd/system/linewatch@.service" in out
    assert f"would install {root}/etc/linewatch/press-1.toml" in out
    assert "would run " in out

    assert install(root, template, "--station", "press-1") == 0
    before = tree(root)
    assert main(["uninstall-service", "--root", str(root), "--purge", "--dry-run"]) == 0
    assert tree(root) == before
    assert f"would remove {root}/etc/linewatch (configs and credentials)" in capsys.readouterr().out


def test_uninstall_keeps_configs_and_state_unless_purged(
    staged: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    root, template = staged
    assert install(root, template, "--station", "press-1", "--station", "press-2") == 0
    wants = root / "etc/systemd/system/multi-user.target.wants"
    wants.mkdir()
    for station in ("press-1", "press-2"):  # what `systemctl enable linewatch@<station>` leaves behind
        (wants / f"linewatch@{station}.service").symlink_to("/etc/systemd/system/linewatch@.service")
    state = root / "var/lib/linewatch/press-1"
    state.mkdir(parents=True)
    (state / "journal.sqlite3").write_bytes(b"results")

    # One instance: its enablement goes, the shared unit and everything else stay.
    assert main(["uninstall-service", "--root", str(root), "--station", "press-2"]) == 0
    assert not (wants / "linewatch@press-2.service").is_symlink()
    assert (wants / "linewatch@press-1.service").is_symlink()
    assert (root / "etc/systemd/system/linewatch@.service").is_file()
    assert (root / "etc/linewatch/press-2.toml").is_file()

    capsys.readouterr()
    assert main(["uninstall-service", "--root", str(root)]) == 0
    out = capsys.readouterr().out
    assert not (root / "etc/systemd/system/linewatch@.service").exists()
    assert not (root / "etc/sysusers.d/linewatch.conf").exists()
    assert not (root / "etc/tmpfiles.d/linewatch.conf").exists()
    assert not (wants / "linewatch@press-1.service").is_symlink()
    assert (root / "etc/linewatch/press-1.toml").is_file()
    assert (state / "journal.sqlite3").read_bytes() == b"results"
    assert f"kept {root}/etc/linewatch (--purge deletes it)" in out
    assert "kept system user linewatch" in out

    assert main(["uninstall-service", "--root", str(root), "--purge"]) == 0
    assert not (root / "etc/linewatch").exists()
    assert not (root / "var/lib/linewatch").exists()


def test_purge_of_one_station_leaves_the_others(staged: tuple[Path, Path]) -> None:
    root, template = staged
    assert install(root, template, "--station", "press-1", "--station", "press-2") == 0
    (root / "var/lib/linewatch/press-1").mkdir(parents=True)
    assert main(["uninstall-service", "--root", str(root), "--station", "press-1", "--purge"]) == 0
    assert not (root / "etc/linewatch/press-1.toml").exists()
    assert not (root / "etc/linewatch/credentials/press-1").exists()
    assert not (root / "var/lib/linewatch/press-1").exists()
    assert (root / "etc/linewatch/press-2.toml").is_file()
    assert (root / "etc/linewatch/credentials/press-2").is_dir()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--exec", "/home/op/venv/bin/linewatch"], "ProtectHome=yes hides it"),
        (["--exec", "/tmp/venv/bin/linewatch"], "PrivateTmp=yes hides it"),
        (["--exec", "venv/bin/linewatch"], "is not an absolute path"),
        (["--exec", EXEC, "--station", "../etc"], "'../etc' is not a station name"),
        (["--exec", EXEC, "--purge"], "--purge: not an option of install-service"),
        (["--exec", EXEC, "--station", "s1", "--config-template", "/nonexistent.toml"],
         "/nonexistent.toml not found"),
    ],
)
def test_refusals_are_clear_and_change_nothing(
    staged: tuple[Path, Path], capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    root, _ = staged
    assert main(["install-service", "--root", str(root), *args]) == 2
    assert message in capsys.readouterr().err
    assert list(root.iterdir()) == []

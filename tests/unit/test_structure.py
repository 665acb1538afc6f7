"""The architecture's rules, checked on the source: linewatch/ never imports torch, and each third-party
runtime is imported by its one owner module only (DESIGN 1)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "linewatch"

# third-party top-level module → the one file (relative to linewatch/) allowed to import it
OWNERS: dict[str, str] = {
    "harvesters": "acquisition/genicam.py",
    "genicam": "acquisition/genicam.py",
    "onnxruntime": "inference/onnxruntime.py",
    "tensorrt": "inference/tensorrt.py",
    "pycuda": "inference/tensorrt.py",
    "paho": "publish/mqtt.py",
}
NEVER = ("torch", "torchvision")
# The demo and the benchmark make a bundle with the trainer (which imports torch) in their own process; the
# daemon they start is a separate process. Nothing else in linewatch/ may reach for the trainer.
TRAINER_USERS = ("service/demo.py", "service/bench.py")


def imported_modules(path: Path) -> set[str]:
    """Top-level names of every module a file imports (at any depth: inside functions too)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute | ast.Name)
            and (node.func.attr if isinstance(node.func, ast.Attribute) else node.func.id) == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            names.add(node.args[0].value.split(".")[0])
    return names


SOURCES = sorted(PACKAGE.rglob("*.py"))


def test_there_is_something_to_check() -> None:
    rel = {p.relative_to(PACKAGE).as_posix() for p in SOURCES}
    assert set(OWNERS.values()) <= rel  # every owner exists, so the rules below are not vacuous


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.relative_to(PACKAGE).as_posix())
def test_imports_follow_the_ownership_rules(path: Path) -> None:
    rel = path.relative_to(PACKAGE).as_posix()
    names = imported_modules(path)
    forbidden = sorted(n for n in names if n in NEVER)
    assert not forbidden, f"linewatch/{rel} imports {forbidden}: linewatch never imports torch"
    if "trainer" in names:
        assert rel in TRAINER_USERS, f"linewatch/{rel} imports trainer; only {TRAINER_USERS} may"
    for module, owner in OWNERS.items():
        if module in names:
            assert rel == owner, f"linewatch/{rel} imports {module}; only linewatch/{owner} may"


def test_the_rule_checker_sees_nested_and_dynamic_imports(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text(
        "def f():\n    import torch.nn\n"
        "from paho.mqtt import client\n"
        "import importlib\nimportlib.import_module('onnxruntime.capi')\n"
    )
    assert {"torch", "paho", "onnxruntime"} <= imported_modules(probe)


def test_importing_the_daemon_does_not_load_torch() -> None:
    code = (
        "import sys, linewatch.service.daemon, linewatch.service.check_config, linewatch.config;"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'trainer'));"
        "print(','.join(bad))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "", f"torch/trainer loaded by the daemon: {done.stdout.strip()}"

"""``linewatch products list|show|verify``: bundles on disk, and every problem the daemon would refuse a
bundle for, named per bundle with a non-zero exit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from daemon_support import daemon_config
from harness import relist_hashes
from products_support import backbone, corrupt_copy, write_product

from linewatch.bundle.manifest import MODEL_NAME
from linewatch.bundle.registry import read_manifest
from linewatch.service.cli import main
from trainer.export import export_onnx


@pytest.fixture(scope="module")
def products(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cli") / "products"
    net = backbone(1)
    write_product(root, "alpha", net)
    write_product(root, "beta", net, offset=1.0)
    return root


def test_list_marks_the_active_product(
    products: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = daemon_config(tmp_path / "lw.toml", camera={"kind": "synthetic"}, products_dir=products,
                           active="beta", mqtt_port=1883)
    assert main(["products", "list", "--config", str(config)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["product", "bundle", "input"]
    alpha = next(line for line in lines if " alpha " in f" {line} ")
    beta = next(line for line in lines if line.startswith("*"))
    assert "alpha@" in alpha and "64x64" in alpha and not alpha.startswith("*")
    assert beta.split()[1] == "beta"


def test_show_prints_the_manifest(products: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["products", "show", "alpha", "--dir", str(products)]) == 0
    out = capsys.readouterr().out
    manifest = read_manifest(products / "alpha")
    assert manifest.bundle_id in out and f"threshold    {manifest.threshold:.6g}" in out
    assert "exposure     not checked (the bundle has no exposure range)" in out  # written without a fit
    assert main(["products", "show", "alpha", "--json", "--dir", str(products)]) == 0
    assert json.loads(capsys.readouterr().out)["bundle_id"] == manifest.bundle_id
    assert main(["products", "show", "../alpha", "--dir", str(products)]) == 1
    assert "invalid product id" in capsys.readouterr().err


def test_verify_names_every_problem_and_exits_non_zero(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "products"
    net = backbone(1)
    write_product(root, "good", net)
    corrupt_copy(root, "good", "tampered")  # a byte of model.onnx flipped
    # The model takes 96x96 while its manifest says 64x64 (hashes re-listed: only the input spec is wrong).
    write_product(root, "resized", net)
    export_onnx(net, 96, 96, distance="l2", pooling=1, out=root / "resized" / MODEL_NAME)
    relist_hashes(root / "resized")
    (root / "empty").mkdir()  # no bundle.json
    old = root / "old-schema"
    write_product(root, "old-schema", net)
    raw = json.loads((old / "bundle.json").read_text())
    (old / "bundle.json").write_text(json.dumps({**raw, "schema_version": 99}))
    # Copied from "good" with only product_id edited: the daemon would take it for good's fit.
    copied = root / "copied"
    write_product(root, "copied", net)
    raw = json.loads((copied / "bundle.json").read_text())
    good_id = read_manifest(root / "good").bundle_id
    (copied / "bundle.json").write_text(json.dumps({**raw, "bundle_id": good_id}))
    for name, threshold in (("nan-threshold", float("nan")), ("negative-threshold", -1.0)):
        write_product(root, name, net)
        raw = json.loads((root / name / "bundle.json").read_text())
        (root / name / "bundle.json").write_text(json.dumps({**raw, "threshold": threshold}))

    assert main(["products", "verify", "--dir", str(root)]) == 1
    lines = {line.split()[1].rstrip(":"): line for line in capsys.readouterr().out.splitlines()}
    assert lines["good"].startswith("OK") and "good@" in lines["good"]
    assert lines["tampered"].startswith("FAIL") and "sha256" in lines["tampered"]
    assert lines["resized"].startswith("FAIL") and "does not match bundle.json" in lines["resized"]
    assert "96" in lines["resized"]
    assert lines["empty"].startswith("FAIL") and "bundle.json: missing" in lines["empty"]
    assert lines["old-schema"].startswith("FAIL") and "schema_version 99" in lines["old-schema"]
    assert lines["copied"].startswith("FAIL") and "bundle_id 'good@" in lines["copied"]
    assert "copied from another product" in lines["copied"]
    assert "invalid manifest: bundle_id" in lines["copied"]  # no empty field name, no "Value error, "
    for name in ("nan-threshold", "negative-threshold"):
        assert lines[name].startswith("FAIL") and "threshold" in lines[name], lines[name]

    assert main(["products", "verify", "good", "--dir", str(root)]) == 0
    assert capsys.readouterr().out.startswith("OK    good")
    assert main(["products", "verify", "tampered", "--dir", str(root)]) == 1
    assert main(["products", "verify", "../good", "--dir", str(root)]) == 1
    assert "invalid product id" in capsys.readouterr().out


def test_list_of_a_missing_directory_is_a_problem(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["products", "list", "--dir", str(tmp_path / "typo")]) == 1
    assert "typo: no such directory" in capsys.readouterr().err
    assert main(["products", "list", "--dir", str(tmp_path)]) == 0
    assert "no product bundles in" in capsys.readouterr().err


def test_bad_config_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["products", "list", "--config", str(tmp_path / "missing.toml")]) == 2
    assert "no such config file" in capsys.readouterr().err

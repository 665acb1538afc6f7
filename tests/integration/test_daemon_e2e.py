"""`linewatch run` end to end on the synthetic camera, and on bad input: each a clear message, no traceback,
no lost results. Results are read from the daemon's journal (its outbox and audit trail), so these tests
need no broker; the daemon keeps retrying an unreachable one, as on a line whose broker is down."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import pytest
from daemon_support import DaemonProcess, daemon_config, fit_stripes_product, journal_records
from harness import free_port

from linewatch.acquisition import SyntheticCameraConfig, SyntheticSource
from linewatch.bundle.manifest import MODEL_NAME
from trainer.evaluate import evaluate_bundle

pytestmark = pytest.mark.slow

SIZE = 192
CAMERA = {"kind": "synthetic", "family": "stripes", "width": SIZE, "height": SIZE, "rate_hz": 500.0,
          "defect_rate": 0.5, "defect_kinds": ["noise_patch", "crack", "spot"], "seed": 11}


@pytest.fixture(scope="module")
def products(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("products") / "products"
    fit_stripes_product(root, SIZE)
    return root


def failed_to_start(daemon: DaemonProcess) -> str:
    """The daemon's output, after checking it exited 1 with one clear line and no traceback."""
    code = daemon.wait(60)
    out = daemon.output()
    daemon.stop()
    assert code == 1, out
    assert "Traceback" not in out
    return out


def test_synthetic_camera_rates_are_the_bundles_evaluation(products: Path, tmp_path: Path) -> None:
    frames = 100
    camera = {**CAMERA, "frame_count": frames}
    # The bundle's evaluation (trainer evaluate, MVTec layout) on exactly the parts the camera will show.
    source = SyntheticSource(SyntheticCameraConfig.model_validate(camera))
    data = tmp_path / "parts"
    (data / "train" / "good").mkdir(parents=True)  # the layout wants it (for the raw-pixel baseline)
    good = SyntheticSource(SyntheticCameraConfig.model_validate({**camera, "defect_rate": 0.0, "seed": 5}))
    for i in range(4):
        cv2.imwrite(str(data / "train" / "good" / f"{i}.png"), good.render(i)[0])
    truth: dict[int, bool] = {}
    for i in range(frames):
        image, gt = source.render(i)
        folder = data / "test" / ("good" if not gt.defective else str(gt.defect_kind))
        folder.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(folder / f"{i:04d}.png"), image)
        truth[i] = gt.defective
    metrics = evaluate_bundle(products / "stripes-part", data, tmp_path / "report", threads=1)
    expected = {int(Path(item["file"]).stem): item["score"] for item in metrics["images"]}

    config = daemon_config(tmp_path / "linewatch.toml", camera=camera, products_dir=products,
                           active="stripes-part", mqtt_port=free_port())
    daemon = DaemonProcess(config)
    assert daemon.wait(120) == 0, daemon.output()
    daemon.stop()

    results = [r.result for r in journal_records(tmp_path / "state")]
    assert [r.seq for r in results] == list(range(frames))
    assert [r.frame_id for r in results] == list(range(frames))
    assert all(r.verdict != "not_inspected" for r in results)
    # Same image, same model, same preprocessing: the daemon's score is the evaluation's score.
    for r in results:
        assert r.score == pytest.approx(expected[r.frame_id], rel=1e-4, abs=1e-4)
    defective = [r for r in results if truth[r.frame_id]]
    good = [r for r in results if not truth[r.frame_id]]
    caught = sum(r.verdict == "fail" for r in defective) / len(defective)
    rejected = sum(r.verdict == "fail" for r in good) / len(good)
    assert caught == pytest.approx(1.0 - metrics["miss_rate"])
    assert rejected == pytest.approx(metrics["false_reject_rate"])
    assert caught >= 0.4 and rejected <= 0.1, (caught, rejected)


def test_missing_cti_is_one_clear_line(products: Path, tmp_path: Path) -> None:
    config = daemon_config(
        tmp_path / "linewatch.toml",
        camera={"kind": "genicam", "cti": [tmp_path / "vendor.cti"]},
        products_dir=products, active="stripes-part", mqtt_port=free_port(),
    )
    out = failed_to_start(DaemonProcess(config))
    assert f"linewatch: cannot start: GenTL producer {tmp_path / 'vendor.cti'} does not exist" in out


@pytest.mark.genicam
def test_unknown_device_names_the_devices_there(
    viky_cti: Path, products: Path, tmp_path: Path
) -> None:
    config = daemon_config(
        tmp_path / "linewatch.toml",
        camera={"kind": "genicam", "cti": [viky_cti], "serial_number": "no-such-camera"},
        products_dir=products, active="stripes-part", mqtt_port=free_port(),
    )
    out = failed_to_start(DaemonProcess(config))
    line = next(x for x in out.splitlines() if x.startswith("linewatch: cannot start: "))
    assert "no-such-camera" in line and "VikyTL_DEV_red" in line


def test_bundle_whose_hash_does_not_match_is_refused(products: Path, tmp_path: Path) -> None:
    import shutil

    tampered = tmp_path / "products"
    shutil.copytree(products, tampered)
    model = tampered / "stripes-part" / MODEL_NAME
    data = bytearray(model.read_bytes())
    data[-1] ^= 0xFF
    model.write_bytes(bytes(data))
    config = daemon_config(tmp_path / "linewatch.toml", camera={**CAMERA, "frame_count": 5},
                           products_dir=tampered, active="stripes-part", mqtt_port=free_port())
    out = failed_to_start(DaemonProcess(config))
    line = next(x for x in out.splitlines() if x.startswith("linewatch: cannot start: "))
    assert str(model) in line and "does not match bundle.json" in line
    assert not (tmp_path / "state" / "journal.sqlite3").exists() or not journal_records(tmp_path / "state")


def test_unreadable_image_in_a_folder_is_one_not_inspected_result(products: Path, tmp_path: Path) -> None:
    folder = tmp_path / "parts"
    folder.mkdir()
    source = SyntheticSource(SyntheticCameraConfig.model_validate({**CAMERA, "defect_rate": 0.0}))
    for i in range(6):
        cv2.imwrite(str(folder / f"part-{i}.png"), source.render(i)[0])
    (folder / "part-3.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    config = daemon_config(tmp_path / "linewatch.toml", camera={"kind": "folder", "path": folder},
                           products_dir=products, active="stripes-part", mqtt_port=free_port())
    daemon = DaemonProcess(config)
    assert daemon.wait(60) == 0, daemon.output()
    daemon.stop()
    assert "Traceback" not in daemon.output()
    results = [r.result for r in journal_records(tmp_path / "state")]
    assert [r.seq for r in results] == list(range(6))  # no lost results
    bad = [r for r in results if r.verdict == "not_inspected"]
    assert len(bad) == 1 and bad[0].reason is not None and "part-3.png" in bad[0].reason
    assert all(r.verdict in ("pass", "fail") and r.score is not None for r in results if r is not bad[0])
    assert json.loads(bad[0].to_json())["verdict"] == "not_inspected"


def test_a_product_that_does_not_exist_is_one_clear_line(products: Path, tmp_path: Path) -> None:
    config = daemon_config(tmp_path / "linewatch.toml", camera={**CAMERA, "frame_count": 5},
                           products_dir=products, active="no-such-part", mqtt_port=free_port())
    out = failed_to_start(DaemonProcess(config))
    assert "linewatch: cannot start: " in out and "no-such-part" in out

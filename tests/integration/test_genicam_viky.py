"""GenicamSource against the real harvesters + viky.cti (the GenTL simulator shipped in the genicam wheel).

What viky offers (explored with genicam 1.6.0 / harvesters 1.4.3):

- Three devices on one interface: ids ``VikyTL_DEV_red``, ``VikyTL_DEV_green``, ``VikyTL_DEV_blue``, serial
  numbers "0", "1", "2"; vendor "Machine Vision Games Ltd.", model "Viky".
- Writable nodes: ``PixelFormat`` (``RGBa8`` — the default — or ``Mono8``), ``Width``/``Height`` (100…800,
  step 1, default 400×400), ``AcquisitionFrameRate`` (1.0…200.0, default 20.0), ``BouncingBallSize`` (20),
  chunk/event/GenDC selectors, ``TLParamsLocked``. ``AcquisitionMode`` is ``Continuous`` only.
- No ``TriggerMode``/``TriggerSoftware``/``ExposureTime``/``Gain``/``OffsetX``: viky free-runs at its frame
  rate; there is no software trigger to test against.
- Frame rate: at ``AcquisitionFrameRate = 200`` we observe about 185–195 frames/s (Mono8 and RGBa8, up to
  800×800). The default is only 20 frames/s.
- Frame ids: the GenTL buffer's ``frame_id`` counts 1, 2, 3, … from every ``start()`` (a re-opened device
  starts again at 1); frames the consumer is too slow for are skipped, and the id jumps accordingly.
- Timestamps: none (``timestamp_ns`` raises "not available", harvesters' ``timestamp`` is 0), so the source
  says so once and uses host monotonic time.
- The image: a white field (255) with one 20×20 square (``BouncingBallSize``) that is the only dark object.
  In ``Mono8`` the square is 0. In ``RGBa8`` it is pure red/green/blue on white for the red/green/blue device,
  i.e. gray 76/150/29 after BT.601 conversion. Its position is a function of the frame id only (not of time):
  for frame id n its top-left pixel is at (row 40 + n, column 1 + n), moving one pixel down and one right per
  frame id and bouncing off the image edges; the same on every device and at every frame rate.
- Opening a device exclusively twice in one process: the second Harvester sees no devices at all.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from linewatch.acquisition.genicam import GenicamCameraConfig, GenicamSource
from linewatch.errors import (
    CameraDisconnectedError,
    CameraNotFoundError,
    CameraSettingError,
    CameraTimeoutError,
)

pytestmark = pytest.mark.genicam

VIKY_DEVICES = ("VikyTL_DEV_red", "VikyTL_DEV_green", "VikyTL_DEV_blue")
SQUARE = 20


@pytest.fixture
def no_thread_leak() -> Iterator[None]:
    before = set(threading.enumerate())
    yield
    leaked = [t for t in threading.enumerate() if t not in before and t.is_alive()]
    assert not leaked, f"threads left running: {leaked}"


@pytest.fixture
def viky(viky_cti: Path, no_thread_leak: None) -> Iterator[Callable[..., GenicamSource]]:
    """Make GenicamSources on viky; every one is closed at the end, whatever the test did."""
    made: list[GenicamSource] = []

    def make(**fields: object) -> GenicamSource:
        source = GenicamSource(
            GenicamCameraConfig.model_validate({"kind": "genicam", "cti": [viky_cti], **fields})
        )
        made.append(source)
        return source

    yield make
    for source in made:
        source.close()


def mono8(width: int = 512, height: int = 512, rate: float = 200.0) -> dict[str, object]:
    return {"PixelFormat": "Mono8", "Width": width, "Height": height, "AcquisitionFrameRate": rate}


def test_grabs_200_mono8_frames_with_increasing_ids(viky: Callable[..., GenicamSource]) -> None:
    source = viky(device_id="VikyTL_DEV_red", nodes=mono8(640, 480))
    source.open()
    source.open()  # no-op on an open source (the daemon opens, then the acquisition stage opens again)
    assert source.name == "genicam:VikyTL_DEV_red"
    captures = [source.read(timeout_s=2.0) for _ in range(200)]
    ids = np.array([c.frame_id for c in captures])
    assert all(c.image.shape == (480, 640) and c.image.dtype == np.uint8 for c in captures)
    assert np.all(np.diff(ids) >= 1), "frame ids must increase"
    # Reading as fast as we do here, viky's ids are consecutive apart from the odd skipped frame.
    assert np.mean(np.diff(ids) == 1) >= 0.9
    acquired = [c.acquired_ns for c in captures]
    assert acquired == sorted(acquired)


def _square_top_left(image: np.ndarray) -> tuple[int, int]:
    """argmin of a white field with one dark square: its first (top-left) pixel in raster order."""
    row, col = np.unravel_index(int(np.argmin(image)), image.shape)
    return int(row), int(col)


def test_dark_square_is_found_in_every_frame_and_moves_with_the_frame_id(
    viky: Callable[..., GenicamSource],
) -> None:
    source = viky(device_index=0, nodes=mono8(512, 512))
    source.open()
    positions, ids = [], []
    for _ in range(200):
        capture = source.read(timeout_s=2.0)
        image = capture.image
        dark = image < 128
        assert dark.sum() == SQUARE * SQUARE  # exactly one 20×20 dark square, the rest white
        row, col = _square_top_left(image)
        assert dark[row : row + SQUARE, col : col + SQUARE].all()
        positions.append((row, col))
        ids.append(capture.frame_id)
    positions_a = np.array(positions)
    steps = np.abs(np.diff(positions_a, axis=0))
    id_steps = np.diff(ids)
    # One pixel down and one right per frame id (200 frames from the start stay clear of the 512 px edges).
    assert np.array_equal(steps[:, 0], id_steps) and np.array_equal(steps[:, 1], id_steps)
    assert (positions_a[-1] - positions_a[0]).min() >= 150
    assert positions[0] == (40 + ids[0], 1 + ids[0])


@pytest.mark.parametrize(("device", "square_gray"), list(zip(VIKY_DEVICES, (76, 150, 29), strict=True)))
def test_rgba8_is_converted_to_gray(
    viky: Callable[..., GenicamSource], device: str, square_gray: int
) -> None:
    source = viky(device_id=device, nodes={"PixelFormat": "RGBa8", "Width": 320, "Height": 240})
    source.open()
    assert source.settings["PixelFormat"] == "RGBa8"
    image = source.read(timeout_s=2.0).image
    assert image.shape == (240, 320) and image.dtype == np.uint8
    values, counts = np.unique(image, return_counts=True)
    assert dict(zip(values.tolist(), counts.tolist(), strict=True)) == {
        square_gray: 400,
        255: 320 * 240 - 400,
    }


def test_settings_are_read_back_and_logged_once(
    viky: Callable[..., GenicamSource], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="linewatch.acquisition.genicam")
    source = viky(serial_number="2", nodes=mono8(256, 128, 150.0))
    source.open()
    for _ in range(20):
        capture = source.read(timeout_s=2.0)
    assert source.name == "genicam:VikyTL_DEV_blue"
    assert source.settings == {
        "PixelFormat": "Mono8",
        "Width": 256,
        "Height": 128,
        "AcquisitionFrameRate": 150.0,
    }
    lines = [r.getMessage() for r in caplog.records if r.name == "linewatch.acquisition.genicam"]
    reports = [line for line in lines if "device reports" in line]
    assert len(reports) == 1
    assert "Width=256 (reads 256)" in reports[0] and "AcquisitionFrameRate=150.0 (reads 150.0)" in reports[0]
    # viky has no timestamps: said once, host time used (acquisition time of the copy).
    assert sum("no timestamps" in line for line in lines) == 1
    assert capture.timestamp_ns == capture.acquired_ns
    assert not any("no frame ids" in line for line in lines)  # viky does send frame ids


def test_missing_cti_names_the_path(tmp_path: Path, no_thread_leak: None) -> None:
    missing = tmp_path / "vendor" / "producer.cti"
    source = GenicamSource(GenicamCameraConfig(cti=[missing]))
    with pytest.raises(CameraNotFoundError, match=f"GenTL producer {missing} does not exist"):
        source.open()


def test_unknown_device_lists_the_devices_that_are_there(viky: Callable[..., GenicamSource]) -> None:
    with pytest.raises(CameraNotFoundError) as caught:
        viky(serial_number="12345678").open()
    message = str(caught.value)
    assert "no device with serial_number '12345678'" in message
    assert all(device in message for device in VIKY_DEVICES)
    with pytest.raises(CameraNotFoundError, match=r"no device at index 3 .*\(3 found\)"):
        viky(device_index=3).open()


@pytest.mark.parametrize(
    ("nodes", "message"),
    [
        ({"TriggerMode": "On"}, r"nodes.TriggerMode = 'On': the device has no node 'TriggerMode'"),
        ({"PayloadSize": 100}, r"nodes.PayloadSize = 100: 'PayloadSize' is not writable \(access mode RO\)"),
        ({"Width": 5000}, r"nodes.Width = 5000: refused by the device: .*Max = 800"),
        ({"PixelFormat": "Mono12"}, r"nodes.PixelFormat = 'Mono12': refused .*offers RGBa8, Mono8"),
        ({"AcquisitionStop": True}, r"'AcquisitionStop' is a command, not a setting"),
    ],
)
def test_bad_node_settings_name_the_node(
    viky: Callable[..., GenicamSource], nodes: dict[str, object], message: str
) -> None:
    source = viky(nodes=nodes)
    with pytest.raises(CameraSettingError, match=message):
        source.open()
    # A failed open leaves nothing behind: the device can be opened again at once.
    ok = viky(nodes=mono8(128, 128))
    ok.open()
    assert ok.read(timeout_s=2.0).image.shape == (128, 128)


def test_timeout_then_frame_then_consecutive_timeouts_mean_disconnected(
    viky: Callable[..., GenicamSource],
) -> None:
    # At 1 frame/s a 50 ms fetch cannot succeed right after start.
    source = viky(nodes=mono8(128, 128, rate=1.0), disconnect_after_timeouts=2)
    source.open()
    with pytest.raises(CameraTimeoutError, match=r"no frame within 0\.05 s"):
        source.read(timeout_s=0.05)
    assert source.read(timeout_s=3.0).image.shape == (128, 128)  # a frame resets the count
    with pytest.raises(CameraTimeoutError):
        source.read(timeout_s=0.05)
    with pytest.raises(CameraDisconnectedError, match="no frame for 2 fetches"):
        source.read(timeout_s=0.05)


def test_lost_device_is_reported_and_close_open_reconnects(viky: Callable[..., GenicamSource]) -> None:
    source = viky(device_id="VikyTL_DEV_green", nodes=mono8(200, 200))
    source.open()
    first = source.read(timeout_s=2.0)
    # What a cable pull leaves behind: the GenTL device and data stream handles are gone under the source.
    source._ia.destroy()
    with pytest.raises(CameraDisconnectedError, match="genicam:VikyTL_DEV_green"):
        source.read(timeout_s=0.5)
    source.close()  # the acquisition stage's reconnect: close, back off, open
    source.open()
    again = source.read(timeout_s=2.0)
    assert again.image.shape == first.image.shape
    assert again.frame_id >= 1  # viky restarts its ids at 1 after a re-open


def test_close_releases_the_device_and_is_idempotent(viky: Callable[..., GenicamSource]) -> None:
    for _ in range(3):  # exclusive access: a leaked device or producer would make the next open fail
        source = viky(device_id="VikyTL_DEV_red", nodes=mono8(128, 128))
        source.open()
        source.read(timeout_s=2.0)
        source.close()
        source.close()
    with pytest.raises(CameraDisconnectedError, match="is not open"):
        source.read(timeout_s=0.1)

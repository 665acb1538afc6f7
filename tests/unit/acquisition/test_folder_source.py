from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from pydantic import ValidationError

from linewatch.acquisition.folder import FolderCameraConfig, FolderSource, natural_key
from linewatch.errors import (
    CameraDisconnectedError,
    CameraNotFoundError,
    CameraTimeoutError,
    FrameUnreadableError,
    SourceExhaustedError,
)


def write_gray(path: Path, value: int, shape: tuple[int, int] = (24, 32), dtype: type = np.uint8) -> None:
    assert cv2.imwrite(str(path), np.full(shape, value, dtype=dtype))


@pytest.fixture
def parts(tmp_path: Path) -> Path:
    """img1, img2, IMG3, img10 (gray levels 1, 2, 3, 10) and a file that is not an image."""
    for number in (10, 2, 1):
        write_gray(tmp_path / f"img{number}.png", number)
    write_gray(tmp_path / "IMG3.PNG", 3)
    (tmp_path / "notes.txt").write_text("not an image")
    return tmp_path


def source_for(path: Path, **fields: object) -> FolderSource:
    return FolderSource(FolderCameraConfig.model_validate({"kind": "folder", "path": path, **fields}))


def read_all(source: FolderSource, count: int) -> list[int]:
    return [int(source.read(timeout_s=1.0).image[0, 0]) for _ in range(count)]


def test_images_come_in_natural_name_order_then_the_source_is_exhausted(parts: Path) -> None:
    source = source_for(parts)
    source.open()
    source.open()  # no-op on an open source
    assert [p.name for p in source.files] == ["img1.png", "img2.png", "IMG3.PNG", "img10.png"]
    captures = [source.read(timeout_s=1.0) for _ in range(4)]
    assert [int(c.image[0, 0]) for c in captures] == [1, 2, 3, 10]
    assert [c.frame_id for c in captures] == [0, 1, 2, 3]
    assert all(c.image.shape == (24, 32) and c.image.dtype == np.uint8 for c in captures)
    with pytest.raises(SourceExhaustedError, match="all 4 images replayed"):
        source.read(timeout_s=1.0)
    source.close()


def test_loop_starts_again_and_frame_ids_count_on(parts: Path) -> None:
    source = source_for(parts, loop=True)
    source.open()
    captures = [source.read(timeout_s=1.0) for _ in range(10)]
    assert [int(c.image[0, 0]) for c in captures] == [1, 2, 3, 10, 1, 2, 3, 10, 1, 2]
    assert [c.frame_id for c in captures] == list(range(10))


def test_an_unreadable_image_is_reported_with_its_name_and_the_next_frames_still_read(parts: Path) -> None:
    (parts / "img2.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    (parts / "img5.png").write_bytes(b"")
    source = source_for(parts)
    source.open()
    assert int(source.read(timeout_s=1.0).image[0, 0]) == 1
    with pytest.raises(FrameUnreadableError, match=r"^img2\.png: not a decodable image") as bad:
        source.read(timeout_s=1.0)
    assert bad.value.frame_id == 1
    assert bad.value.item == str(parts / "img2.png")
    assert bad.value.acquired_ns > 0
    assert int(source.read(timeout_s=1.0).image[0, 0]) == 3
    with pytest.raises(FrameUnreadableError, match=r"^img5\.png: the file is empty") as empty:
        source.read(timeout_s=1.0)
    assert empty.value.frame_id == 3
    last = source.read(timeout_s=1.0)
    assert (int(last.image[0, 0]), last.frame_id) == (10, 4)


def test_sixteen_bit_and_colour_images_of_any_size(tmp_path: Path) -> None:
    write_gray(tmp_path / "a_16bit.png", 40000, shape=(37, 53), dtype=np.uint16)
    colour = np.zeros((5, 7, 3), dtype=np.uint8)
    colour[..., 2] = 255  # pure red in OpenCV's BGR order
    assert cv2.imwrite(str(tmp_path / "b_colour.png"), colour)
    colour16 = np.zeros((4, 4, 3), dtype=np.uint16)
    colour16[..., 1] = 65535  # pure green, 16 bits
    assert cv2.imwrite(str(tmp_path / "c_colour16.tif"), colour16)
    source = source_for(tmp_path)
    source.open()
    sixteen, red, green16 = (source.read(timeout_s=1.0).image for _ in range(3))
    assert sixteen.dtype == np.uint16 and sixteen.shape == (37, 53) and np.all(sixteen == 40000)
    assert red.dtype == np.uint8 and red.shape == (5, 7) and np.all(red == 76)  # BT.601: 0.299 · 255
    assert green16.dtype == np.uint16 and green16.shape == (4, 4)
    assert np.all(np.abs(green16.astype(int) - round(0.587 * 65535)) <= 2)


def test_rate_further_apart_than_the_timeout_is_a_camera_timeout(parts: Path) -> None:
    source = source_for(parts, rate_hz=0.5)
    source.open()
    source.read(timeout_s=0.01)
    with pytest.raises(CameraTimeoutError):
        source.read(timeout_s=0.01)


def test_missing_or_empty_folder_and_reading_before_open(tmp_path: Path) -> None:
    with pytest.raises(CameraNotFoundError, match=f"image folder {tmp_path / 'nope'} does not exist"):
        source_for(tmp_path / "nope").open()
    (tmp_path / "readme.md").write_text("x")
    with pytest.raises(CameraNotFoundError, match=r"no images matching \*\.png in"):
        source_for(tmp_path, patterns=["*.png"]).open()
    with pytest.raises(CameraDisconnectedError, match="not open"):
        source_for(tmp_path).read(timeout_s=0.1)


def test_config_rejects_unknown_keys_by_name_and_bad_values(tmp_path: Path) -> None:
    with pytest.raises(ValidationError) as caught:
        FolderCameraConfig.model_validate({"kind": "folder", "path": tmp_path, "recursive": True})
    assert caught.value.errors()[0]["loc"] == ("recursive",)
    assert "Extra inputs are not permitted" in str(caught.value)
    with pytest.raises(ValidationError, match="rate_hz"):
        FolderCameraConfig(path=tmp_path, rate_hz=0)
    with pytest.raises(ValidationError, match="patterns"):
        FolderCameraConfig(path=tmp_path, patterns=[])


def test_natural_key() -> None:
    names = ["b10", "a2", "B2", "a10", "a1b3", "a1b20", "a1b"]
    assert sorted(names, key=natural_key) == ["a1b", "a1b3", "a1b20", "a2", "a10", "B2", "b10"]

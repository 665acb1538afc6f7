from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from linewatch.acquisition.video import VideoCameraConfig, VideoSource
from linewatch.errors import CameraNotFoundError, SourceExhaustedError
from linewatch.frames import Capture

LEVELS = [0, 40, 80, 120, 160]  # one gray level per frame, far enough apart for MJPG's losses


@pytest.fixture
def video(tmp_path: Path) -> Path:
    # MJPG in AVI: OpenCV's built-in encoder, available in opencv-python-headless without extra codecs.
    path = tmp_path / "line.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25.0, (64, 48))
    assert writer.isOpened()
    for level in LEVELS:
        writer.write(np.full((48, 64, 3), level, dtype=np.uint8))
    writer.release()
    return path


def levels(captures: list[Capture]) -> list[int]:
    return [round(float(c.image.mean())) for c in captures]


def test_frames_in_order_with_counter_ids_then_exhausted(video: Path) -> None:
    source = VideoSource(VideoCameraConfig(path=video))
    source.open()
    source.open()  # no-op on an open source
    captures = [source.read(timeout_s=1.0) for _ in LEVELS]
    assert [c.frame_id for c in captures] == [0, 1, 2, 3, 4]
    assert all(c.image.shape == (48, 64) and c.image.dtype == np.uint8 for c in captures)
    assert np.allclose(levels(captures), LEVELS, atol=4)
    with pytest.raises(SourceExhaustedError, match="no more frames after 5"):
        source.read(timeout_s=1.0)
    source.close()
    source.close()


def test_loop_starts_again_and_ids_count_on(video: Path) -> None:
    source = VideoSource(VideoCameraConfig(path=video, loop=True))
    source.open()
    captures = [source.read(timeout_s=1.0) for _ in range(12)]
    assert [c.frame_id for c in captures] == list(range(12))
    assert np.allclose(levels(captures), (LEVELS * 3)[:12], atol=4)
    source.close()


def test_missing_and_undecodable_files(tmp_path: Path) -> None:
    with pytest.raises(CameraNotFoundError, match=r"video file .*missing\.avi does not exist"):
        VideoSource(VideoCameraConfig(path=tmp_path / "missing.avi")).open()
    garbage = tmp_path / "garbage.avi"
    garbage.write_text("not a video")
    with pytest.raises(CameraNotFoundError, match="OpenCV cannot open video"):
        VideoSource(VideoCameraConfig(path=garbage)).open()

"""Replay a video file through OpenCV as a camera: frame ids from the frame counter, optional loop and rate.

Frame ids count 0, 1, 2, … on across loops. The end of the file (or a frame OpenCV cannot decode, which it
does not tell apart from the end) raises ``SourceExhaustedError``, or starts the file again with ``loop``.
Colour frames are converted to gray (BT.601); timestamps are host monotonic time.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from linewatch.acquisition.pacing import RatePacer
from linewatch.errors import CameraDisconnectedError, CameraNotFoundError, SourceExhaustedError
from linewatch.frames import Capture
from linewatch.inference.preprocessing import to_grayscale


class VideoCameraConfig(BaseModel):
    """A video file (anything OpenCV's FFmpeg backend reads), replayed as if a camera took it."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["video"] = Field(default="video", description="Selects this camera type")
    path: Path = Field(description="Video file to replay")
    loop: bool = Field(default=False, description="Start again from the first frame after the last one")
    rate_hz: float | None = Field(
        default=None, gt=0, description="Frames per second; null delivers as fast as they are read"
    )
    fetch_timeout_s: float = Field(
        default=1.0, gt=0, description="How long one read waits for the next frame (relevant with rate_hz)"
    )


class VideoSource:
    """A FrameSource replaying ``config.path`` with ``cv2.VideoCapture``."""

    def __init__(self, config: VideoCameraConfig) -> None:
        self.config = config
        self._capture: Any = None
        self._frame_id = 0
        self._frames_this_pass = 0
        self._pacer = RatePacer(config.rate_hz)

    @property
    def name(self) -> str:
        return f"video:{self.config.path}"

    def open(self) -> None:
        if self._capture is not None:  # already open: nothing to do
            return
        if not self.config.path.is_file():
            raise CameraNotFoundError(f"video file {self.config.path} does not exist")
        self._capture = self._open_capture()
        self._pacer.restart()

    def _open_capture(self) -> Any:
        capture = cv2.VideoCapture(str(self.config.path))
        if not capture.isOpened():
            capture.release()
            raise CameraNotFoundError(
                f"OpenCV cannot open video {self.config.path} (unknown container/codec?)"
            )
        self._frames_this_pass = 0
        return capture

    def read(self, timeout_s: float) -> Capture:
        if self._capture is None:
            raise CameraDisconnectedError(f"{self.name} is not open")
        self._pacer.wait(timeout_s)
        ok, image = self._capture.read()
        if not ok and self.config.loop and self._frames_this_pass > 0:
            # Re-opening is more reliable than seeking to frame 0 across codecs.
            self._capture.release()
            self._capture = self._open_capture()
            ok, image = self._capture.read()
        if not ok:
            raise SourceExhaustedError(
                f"{self.name}: no more frames after {self._frames_this_pass} in this pass"
            )
        acquired_ns = time.monotonic_ns()
        self._frames_this_pass += 1
        frame_id = self._frame_id
        self._frame_id += 1
        gray = np.ascontiguousarray(to_grayscale(image))
        return Capture(image=gray, frame_id=frame_id, timestamp_ns=acquired_ns, acquired_ns=acquired_ns)

    def close(self) -> None:
        if self._capture is not None:
            self._capture.release()
            self._capture = None

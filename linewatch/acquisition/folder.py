"""Replay a folder of images as a camera: natural name order (``part2`` before ``part10``), loop, rate.

Every file gets a frame id (0, 1, 2, … counting on across loops). A file that cannot be read or decoded is not
skipped silently: ``read`` raises ``FrameUnreadableError`` naming the file and carrying its frame id, and the
next ``read`` continues with the following file. Images of any size and of 8 or 16 bits are accepted; colour
is converted to gray (BT.601, as the trainer does).
"""

from __future__ import annotations

import fnmatch
import re
import time
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field

from linewatch.acquisition.pacing import RatePacer
from linewatch.errors import (
    CameraDisconnectedError,
    CameraNotFoundError,
    FrameUnreadableError,
    SourceExhaustedError,
)
from linewatch.frames import Capture
from linewatch.inference.preprocessing import to_grayscale

DEFAULT_PATTERNS = ["*.png", "*.bmp", "*.jpg", "*.jpeg", "*.tif", "*.tiff", "*.pgm", "*.pnm", "*.webp"]


class FolderCameraConfig(BaseModel):
    """Images from a folder, replayed as if a camera took them."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["folder"] = Field(default="folder", description="Selects this camera type")
    path: Path = Field(description="Folder whose images are replayed (not searched recursively)")
    patterns: list[str] = Field(
        default_factory=lambda: list(DEFAULT_PATTERNS),
        min_length=1,
        description="File name patterns to include (case-insensitive glob)",
    )
    loop: bool = Field(default=False, description="Start again from the first image after the last one")
    rate_hz: float | None = Field(
        default=None, gt=0, description="Images per second; null delivers as fast as they are read"
    )
    fetch_timeout_s: float = Field(
        default=1.0, gt=0, description="How long one read waits for the next frame (relevant with rate_hz)"
    )


def natural_key(name: str) -> tuple[tuple[int, int | str], ...]:
    """Sort key that orders digit runs by value: img2 < img10; case-insensitive otherwise."""
    parts = re.split(r"(\d+)", name)
    return tuple((1, int(part)) if part.isdigit() else (0, part.lower()) for part in parts)


class FolderSource:
    """A FrameSource replaying ``config.path``."""

    def __init__(self, config: FolderCameraConfig) -> None:
        self.config = config
        self._files: list[Path] | None = None
        self._index = 0
        self._frame_id = 0
        self._pacer = RatePacer(config.rate_hz)

    @property
    def name(self) -> str:
        return f"folder:{self.config.path}"

    @property
    def files(self) -> list[Path]:
        """The images in replay order (empty before ``open``)."""
        return list(self._files or [])

    def open(self) -> None:
        """List the images (once; opening an open source changes nothing)."""
        if self._files is not None:
            return
        folder = self.config.path
        if not folder.is_dir():
            raise CameraNotFoundError(f"image folder {folder} does not exist or is not a directory")
        patterns = [p.lower() for p in self.config.patterns]
        files = [
            entry
            for entry in folder.iterdir()
            if entry.is_file() and any(fnmatch.fnmatchcase(entry.name.lower(), p) for p in patterns)
        ]
        if not files:
            raise CameraNotFoundError(f"no images matching {', '.join(self.config.patterns)} in {folder}")
        self._files = sorted(files, key=lambda p: natural_key(p.name))
        self._index = 0
        self._pacer.restart()

    def read(self, timeout_s: float) -> Capture:
        if self._files is None:
            raise CameraDisconnectedError(f"{self.name} is not open")
        if self._index >= len(self._files):
            if not self.config.loop:
                raise SourceExhaustedError(f"{self.name}: all {len(self._files)} images replayed")
            self._index = 0
        self._pacer.wait(timeout_s)
        path = self._files[self._index]
        self._index += 1
        frame_id = self._frame_id
        self._frame_id += 1
        acquired_ns = time.monotonic_ns()
        try:
            image = decode_gray(path)
        except ValueError as exc:
            raise FrameUnreadableError(
                f"{path.name}: {exc}",
                frame_id=frame_id,
                timestamp_ns=acquired_ns,
                acquired_ns=acquired_ns,
                item=str(path),
            ) from exc
        return Capture(image=image, frame_id=frame_id, timestamp_ns=acquired_ns, acquired_ns=acquired_ns)

    def close(self) -> None:
        self._files = None


def decode_gray(path: Path) -> npt.NDArray[Any]:
    """An image file → 2-D uint8/uint16 gray. ValueError (with the reason) when that is not possible."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read the file: {exc.strerror or exc}") from exc
    if not data:
        raise ValueError("the file is empty")
    try:
        image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error as exc:
        raise ValueError(f"not a decodable image ({exc})") from exc
    if image is None:
        raise ValueError("not a decodable image")
    if image.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"{image.dtype} pixels are not supported (8 or 16 bits per channel)")
    return to_grayscale(image)

"""The FrameSource protocol every camera implementation follows."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from linewatch.frames import Capture


@runtime_checkable
class FrameSource(Protocol):
    """A camera or replay. Used from one thread only (the acquisition stage).

    ``read`` returns the next image, copied out of any camera buffer before it returns. It raises
    ``CameraTimeoutError`` when nothing arrived within ``timeout_s``, ``CameraDisconnectedError`` when the
    device is gone (the stage then calls ``close`` and ``open`` again with back-off), and
    ``SourceExhaustedError`` when a finite source has no more frames.
    """

    @property
    def name(self) -> str:
        """Short human-readable description, e.g. ``genicam:viky#0`` or ``folder:/data/parts``."""
        ...

    def open(self) -> None: ...

    def read(self, timeout_s: float) -> Capture: ...

    def close(self) -> None: ...

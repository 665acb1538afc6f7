"""Camera config → FrameSource. ``CameraConfig`` is the tagged union the root settings embed as ``camera``."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from linewatch.acquisition.folder import FolderCameraConfig, FolderSource
from linewatch.acquisition.genicam import GenicamCameraConfig, GenicamSource
from linewatch.acquisition.source import FrameSource
from linewatch.acquisition.synthetic import SyntheticCameraConfig, SyntheticSource
from linewatch.acquisition.video import VideoCameraConfig, VideoSource

CameraConfig = Annotated[
    GenicamCameraConfig | FolderCameraConfig | VideoCameraConfig | SyntheticCameraConfig,
    Field(discriminator="kind"),
]


def make_source(config: CameraConfig) -> FrameSource:
    """The source for ``config``, not yet opened (the acquisition stage opens it in its own thread)."""
    if isinstance(config, GenicamCameraConfig):
        return GenicamSource(config)
    if isinstance(config, FolderCameraConfig):
        return FolderSource(config)
    if isinstance(config, VideoCameraConfig):
        return VideoSource(config)
    if isinstance(config, SyntheticCameraConfig):
        return SyntheticSource(config)
    raise TypeError(f"not a camera config: {type(config).__name__}")


def open_source(config: CameraConfig) -> FrameSource:
    """``make_source(config)``, opened: raises CameraNotFoundError and friends here, not at the first read."""
    source = make_source(config)
    source.open()
    return source

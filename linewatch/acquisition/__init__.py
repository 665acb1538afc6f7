"""Acquisition: the FrameSource protocol and its implementations (genicam, folder, video, synthetic)."""

from linewatch.acquisition.factory import CameraConfig, make_source, open_source
from linewatch.acquisition.folder import FolderCameraConfig, FolderSource
from linewatch.acquisition.genicam import GenicamCameraConfig, GenicamSource
from linewatch.acquisition.reconnect import Backoff, ReconnectConfig
from linewatch.acquisition.source import FrameSource
from linewatch.acquisition.synthetic import SyntheticCameraConfig, SyntheticSource
from linewatch.acquisition.video import VideoCameraConfig, VideoSource

__all__ = [
    "Backoff",
    "CameraConfig",
    "FolderCameraConfig",
    "FolderSource",
    "FrameSource",
    "GenicamCameraConfig",
    "GenicamSource",
    "ReconnectConfig",
    "SyntheticCameraConfig",
    "SyntheticSource",
    "VideoCameraConfig",
    "VideoSource",
    "make_source",
    "open_source",
]

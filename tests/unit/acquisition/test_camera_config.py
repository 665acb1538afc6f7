"""The ``camera`` config union and the factory."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from pydantic import BaseModel, TypeAdapter, ValidationError

from linewatch.acquisition import (
    CameraConfig,
    FolderCameraConfig,
    FolderSource,
    FrameSource,
    GenicamCameraConfig,
    GenicamSource,
    ReconnectConfig,
    SyntheticCameraConfig,
    SyntheticSource,
    VideoCameraConfig,
    VideoSource,
    make_source,
    open_source,
)
from linewatch.errors import CameraNotFoundError

CAMERA = TypeAdapter(CameraConfig)


def camera(toml: str) -> object:
    return CAMERA.validate_python(tomllib.loads(toml)["camera"])


def test_genicam_from_toml_keeps_node_value_types() -> None:
    config = camera(
        """
        [camera]
        kind = "genicam"
        cti = ["/opt/vendor/producer.cti"]
        serial_number = "22041234"
        num_buffers = 4
        [camera.nodes]
        PixelFormat = "Mono8"
        Width = 800
        ExposureTime = 2000.0
        ReverseX = true
        [camera.reconnect]
        initial_s = 1.0
        max_s = 10.0
        """
    )
    assert isinstance(config, GenicamCameraConfig)
    # GenICam distinguishes IInteger from IFloat: 800 must stay an int and 2000.0 a float.
    assert [(k, type(v)) for k, v in config.nodes.items()] == [
        ("PixelFormat", str),
        ("Width", int),
        ("ExposureTime", float),
        ("ReverseX", bool),
    ]
    assert config.reconnect == ReconnectConfig(initial_s=1.0, max_s=10.0)
    assert config.cti == [Path("/opt/vendor/producer.cti")]


@pytest.mark.parametrize(
    ("data", "where"),
    [
        ({"kind": "genicam", "cti": ["a.cti"], "exposure": 5}, ("genicam", "exposure")),
        ({"kind": "genicam", "cti": ["a.cti"], "reconnect": {"tries": 3}}, ("genicam", "reconnect", "tries")),
        ({"kind": "folder", "path": "/data", "recursive": True}, ("folder", "recursive")),
        ({"kind": "video", "path": "/v.avi", "fps": 5}, ("video", "fps")),
        ({"kind": "synthetic", "colour": True}, ("synthetic", "colour")),
    ],
)
def test_unknown_keys_are_rejected_by_name(data: dict[str, object], where: tuple[str, ...]) -> None:
    with pytest.raises(ValidationError) as caught:
        CAMERA.validate_python(data)
    errors = caught.value.errors()
    assert [(e["loc"], e["type"]) for e in errors] == [(where, "extra_forbidden")]


def test_clear_messages_for_bad_values() -> None:
    with pytest.raises(
        ValidationError, match=r"'webcam'.*expected tags: 'genicam', 'folder', 'video', 'synthetic'"
    ):
        CAMERA.validate_python({"kind": "webcam"})
    with pytest.raises(ValidationError, match=r"one of serial_number, device_id, device_index, not \["):
        GenicamCameraConfig(cti=[Path("a.cti")], serial_number="1", device_index=0)
    with pytest.raises(ValidationError, match=r"not GenICam node names: 'Exposure Time'"):
        GenicamCameraConfig(cti=[Path("a.cti")], nodes={"Exposure Time": 1.0})
    with pytest.raises(ValidationError, match="cti"):
        GenicamCameraConfig(cti=[])
    with pytest.raises(ValidationError, match="fetch_timeout_s"):
        GenicamCameraConfig(cti=[Path("a.cti")], fetch_timeout_s=0)


@pytest.mark.parametrize(
    "model",
    [GenicamCameraConfig, FolderCameraConfig, VideoCameraConfig, SyntheticCameraConfig, ReconnectConfig],
)
def test_every_field_is_described_and_extra_is_forbidden(model: type[BaseModel]) -> None:
    assert model.model_config.get("extra") == "forbid"
    undescribed = [name for name, field in model.model_fields.items() if not field.description]
    assert undescribed == []


def test_make_source_picks_the_implementation(tmp_path: Path) -> None:
    cases = [
        ({"kind": "genicam", "cti": ["a.cti"]}, GenicamSource),
        ({"kind": "folder", "path": str(tmp_path)}, FolderSource),
        ({"kind": "video", "path": str(tmp_path / "v.avi")}, VideoSource),
        ({"kind": "synthetic"}, SyntheticSource),
    ]
    for data, cls in cases:
        source = make_source(CAMERA.validate_python(data))
        assert type(source) is cls
        assert isinstance(source, FrameSource)
        assert source.name.startswith(str(data["kind"]) + ":")


def test_open_source_opens_or_says_why_not(tmp_path: Path) -> None:
    source = open_source(SyntheticCameraConfig(width=32, height=32, rate_hz=None))
    assert source.read(timeout_s=1.0).image.shape == (32, 32)
    source.open()  # the acquisition stage opens again in its thread: a no-op on an open source
    assert source.read(timeout_s=1.0).frame_id == 1
    source.close()
    with pytest.raises(CameraNotFoundError, match="does not exist"):
        open_source(FolderCameraConfig(path=tmp_path / "missing"))

"""GenICam cameras through harvesters and GenTL producers (``.cti``); the only importer of harvesters/genicam.

``GenicamSource.open`` loads the producers, picks the device (serial number, device id or index), applies the
configured node settings in the order they are written and reads them back (one INFO line), checks that the
pixel format can be converted to gray, and starts acquisition. ``read`` holds the camera's buffer only while
its image is copied out (``pixels.to_gray`` always returns a new array) and gives it straight back to the
producer. GenTL/GenApi exceptions are translated here, once:

- no frame within the timeout → ``CameraTimeoutError`` (or ``CameraDisconnectedError`` when the device's
  access status says it is gone, or after ``disconnect_after_timeouts`` timeouts in a row);
- any other GenTL/GenApi failure while streaming → ``CameraDisconnectedError``; the acquisition stage then
  calls ``close()`` and ``open()`` again with ``reconnect.Backoff``;
- a buffer that cannot be turned into an image → ``FrameUnreadableError`` (one ``not_inspected`` frame).

Frame ids and timestamps come from the buffer where the device provides them; where it does not (id or
timestamp 0, or "not available"), that is logged once and the source's own counter / host monotonic time is
used instead.
"""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
from genicam import genapi, gentl
from harvesters.core import Harvester
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from linewatch.acquisition import pixels
from linewatch.acquisition.reconnect import ReconnectConfig
from linewatch.errors import (
    CameraDisconnectedError,
    CameraNotFoundError,
    CameraSettingError,
    CameraTimeoutError,
    FrameUnreadableError,
    UnsupportedPixelFormatError,
)
from linewatch.frames import Capture

_log = logging.getLogger(__name__)

NodeValue = bool | int | float | str
_NODE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_GENAPI_TAIL = re.compile(r"\s*:\s*\w+Exception thrown (in|by) .*$", re.DOTALL)
# Read back and logged at start even when the config does not set them: what the line engineer asks first.
_REPORTED_NODES = (
    "PixelFormat",
    "Width",
    "Height",
    "OffsetX",
    "OffsetY",
    "ExposureTime",
    "Gain",
    "TriggerMode",
    "TriggerSource",
    "AcquisitionFrameRate",
)
_WRITABLE = (genapi.EAccessMode.RW, genapi.EAccessMode.WO)
_READABLE = (genapi.EAccessMode.RW, genapi.EAccessMode.RO)
# GenTL access statuses that mean "not ours any more" (another host took it, or it cannot be reached).
_LOST_STATUSES = (
    gentl.DEVICE_ACCESS_STATUS_LIST.DEVICE_ACCESS_STATUS_NOACCESS,
    gentl.DEVICE_ACCESS_STATUS_LIST.DEVICE_ACCESS_STATUS_BUSY,
)
_GENICAM_ERRORS = (gentl.GenericException, genapi.GenericException)


class GenicamCameraConfig(BaseModel):
    """A GenICam camera (GigE Vision, USB3 Vision, ...) reached through its GenTL producer."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["genicam"] = Field(default="genicam", description="Selects this camera type")
    cti: list[Path] = Field(
        min_length=1, description="GenTL producer files (.cti) to load, e.g. the camera vendor's producer"
    )
    serial_number: str | None = Field(default=None, description="Pick the device with this serial number")
    device_id: str | None = Field(default=None, description="Pick the device with this GenTL device id")
    device_index: int | None = Field(
        default=None,
        ge=0,
        description="Pick the n-th device found (0 = first); used when no serial/id is given",
    )
    nodes: dict[str, NodeValue] = Field(
        default_factory=dict,
        description=(
            "GenICam node settings applied at start, in the order written (PixelFormat before Width/Height, "
            "selectors before what they select), e.g. {PixelFormat = 'Mono8', ExposureTime = 2000.0}"
        ),
    )
    num_buffers: int = Field(default=8, ge=1, le=256, description="Buffers announced to the GenTL producer")
    fetch_timeout_s: float = Field(
        default=1.0, gt=0, description="How long one read waits for a frame before reporting a camera timeout"
    )
    disconnect_after_timeouts: int | None = Field(
        default=None,
        ge=1,
        description=(
            "Treat this many fetch timeouts in a row as a lost camera (reconnect). Set it for free-running "
            "cameras; leave null for triggered lines that may legitimately pause"
        ),
    )
    reconnect: ReconnectConfig = Field(
        default_factory=ReconnectConfig, description="Back-off between reconnection attempts"
    )

    @field_validator("nodes")
    @classmethod
    def _node_names(cls, nodes: dict[str, NodeValue]) -> dict[str, NodeValue]:
        bad = [name for name in nodes if not _NODE_NAME.match(name)]
        if bad:
            raise ValueError(f"not GenICam node names: {', '.join(map(repr, bad))}")
        return nodes

    @model_validator(mode="after")
    def _one_device_selector(self) -> GenicamCameraConfig:
        given = [
            name for name in ("serial_number", "device_id", "device_index") if getattr(self, name) is not None
        ]
        if len(given) > 1:
            raise ValueError(
                f"select the device by one of serial_number, device_id, device_index, not {given}"
            )
        return self


def _describe(info: Any) -> str:
    """One device, the way an engineer recognises it: id, serial, vendor, model."""
    parts = []
    for attr in ("id_", "serial_number", "vendor", "model"):
        try:
            parts.append(f"{attr.rstrip('_')}={getattr(info, attr)}")
        except _GENICAM_ERRORS:
            continue
    return " ".join(parts)


def _reason(exc: BaseException) -> str:
    """The readable part of a GenTL/GenApi message (without "XException thrown in node ... (file, line)")."""
    text = str(exc).strip() or type(exc).__name__
    return _GENAPI_TAIL.sub("", text).strip()


class GenicamSource:
    """A FrameSource reading a GenICam camera through harvesters."""

    def __init__(self, config: GenicamCameraConfig) -> None:
        self.config = config
        self._harvester: Harvester | None = None
        self._ia: Any = None
        self._device = self._selector()
        self._count = 0  # frames delivered since construction (own frame id where the device has none)
        self._timeouts_in_row = 0
        self._own_frame_ids = False
        self._last_device_frame_id: int | None = None
        self._host_timestamps = False
        self.settings: dict[str, object] = {}  # what the device reported after open (for status/logs)

    def _selector(self) -> str:
        if self.config.serial_number is not None:
            return f"serial={self.config.serial_number}"
        if self.config.device_id is not None:
            return self.config.device_id
        return f"#{self.config.device_index or 0}"

    @property
    def name(self) -> str:
        return f"genicam:{self._device}"

    # --- open -------------------------------------------------------------------------------------------

    def open(self) -> None:
        if self._ia is not None:  # already open: nothing to do
            return
        for cti in self.config.cti:
            if not cti.is_file():
                raise CameraNotFoundError(f"GenTL producer {cti} does not exist")
        harvester = Harvester()
        try:
            self._ia = self._start(harvester)
            self._harvester = harvester
        except BaseException:
            if self._ia is not None:
                self._destroy(self._ia)
                self._ia = None
            harvester.reset()
            raise

    def _start(self, harvester: Harvester) -> Any:
        for cti in self.config.cti:
            harvester.add_file(str(cti))
        try:
            harvester.update()
        except _GENICAM_ERRORS as exc:
            files = ", ".join(map(str, self.config.cti))
            raise CameraNotFoundError(f"cannot load GenTL producer(s) {files}: {_reason(exc)}") from exc
        info = self._pick(list(harvester.device_info_list))
        try:
            ia = harvester.create(info)
        except (*_GENICAM_ERRORS, ValueError) as exc:
            raise CameraNotFoundError(
                f"device {_describe(info)} was found but cannot be opened (in use by another process?): "
                f"{_reason(exc)}"
            ) from exc
        self._ia = ia  # so that open() destroys it if anything below fails
        self._device = _describe_id(info) or self._device
        ia.num_buffers = self.config.num_buffers
        node_map = ia.remote_device.node_map
        applied = self._apply_nodes(node_map)
        self.settings = self._report(node_map)
        pixel_format = self.settings.get("PixelFormat")
        if isinstance(pixel_format, str) and not pixels.is_supported(pixel_format):
            offered = _symbolics(node_map, "PixelFormat")
            usable = [f for f in offered if pixels.is_supported(f)]
            raise UnsupportedPixelFormatError(
                f"{self.name}: PixelFormat {pixel_format!r} cannot be converted to grayscale; set "
                f"nodes.PixelFormat to one of {usable or sorted(pixels.SUPPORTED_PIXEL_FORMATS)}"
            )
        _log.info(
            "%s: set %s; device reports %s",
            self.name,
            ", ".join(f"{k}={v!r} (reads {r!r})" for k, (v, r) in applied.items()) or "nothing",
            ", ".join(f"{k}={v!r}" for k, v in self.settings.items()),
        )
        try:
            ia.start()
        except _GENICAM_ERRORS as exc:
            raise CameraDisconnectedError(f"{self.name}: cannot start acquisition: {_reason(exc)}") from exc
        self._timeouts_in_row = 0
        return ia

    def _pick(self, devices: list[Any]) -> Any:
        present = "; ".join(f"[{i}] {_describe(d)}" for i, d in enumerate(devices)) or "none"
        files = ", ".join(map(str, self.config.cti))
        if self.config.serial_number is not None or self.config.device_id is not None:
            attr, wanted = (
                ("serial_number", self.config.serial_number)
                if self.config.serial_number is not None
                else ("id_", self.config.device_id)
            )
            for device in devices:
                try:
                    if getattr(device, attr) == wanted:
                        return device
                except _GENICAM_ERRORS:
                    continue
            raise CameraNotFoundError(
                f"no device with {attr.rstrip('_')} {wanted!r} via {files}; devices present: {present}"
            )
        index = self.config.device_index or 0
        if index >= len(devices):
            raise CameraNotFoundError(
                f"no device at index {index} via {files} ({len(devices)} found); devices present: {present}"
            )
        return devices[index]

    def _apply_nodes(self, node_map: Any) -> dict[str, tuple[NodeValue, object]]:
        applied: dict[str, tuple[NodeValue, object]] = {}
        for name, value in self.config.nodes.items():
            where = f"{self.name}: nodes.{name} = {value!r}"
            if not node_map.has_node(name):
                raise CameraSettingError(f"{where}: the device has no node {name!r}")
            node = node_map.get_node(name)
            mode = node.node.get_access_mode()
            if node.node.principal_interface_type == genapi.EInterfaceType.intfICommand:
                raise CameraSettingError(f"{where}: {name!r} is a command, not a setting")
            if mode not in _WRITABLE:
                raise CameraSettingError(
                    f"{where}: {name!r} is not writable (access mode {genapi.EAccessMode(mode).name})"
                )
            try:
                node.value = value
            except (*_GENICAM_ERRORS, TypeError, ValueError) as exc:
                offered = _symbolics(node_map, name)
                hint = f" (the device offers {', '.join(offered)})" if offered else ""
                raise CameraSettingError(f"{where}: refused by the device: {_reason(exc)}{hint}") from exc
            applied[name] = (value, _read(node))
        return applied

    def _report(self, node_map: Any) -> dict[str, object]:
        names = list(dict.fromkeys([*_REPORTED_NODES, *self.config.nodes]))
        report: dict[str, object] = {}
        for name in names:
            if node_map.has_node(name):
                value = _read(node_map.get_node(name))
                if value is not None:
                    report[name] = value
        return report

    # --- read -------------------------------------------------------------------------------------------

    def read(self, timeout_s: float) -> Capture:
        ia = self._ia
        if ia is None:
            raise CameraDisconnectedError(f"{self.name} is not open")
        # harvesters takes timeout=0 as "wait forever"; a read must always come back.
        timeout = max(float(timeout_s), 1e-3)
        try:
            buffer = ia.fetch(timeout=timeout)
        except gentl.TimeoutException as exc:
            self._timeouts_in_row += 1
            self._check_alive(ia)
            limit = self.config.disconnect_after_timeouts
            if limit is not None and self._timeouts_in_row >= limit:
                raise CameraDisconnectedError(
                    f"{self.name}: no frame for {self._timeouts_in_row} fetches of {timeout:g} s in a row"
                ) from exc
            raise CameraTimeoutError(f"{self.name}: no frame within {timeout:g} s") from exc
        except (*_GENICAM_ERRORS, IndexError) as exc:
            # harvesters fails with IndexError when its acquirer lost its data stream.
            raise CameraDisconnectedError(f"{self.name}: {type(exc).__name__}: {_reason(exc)}") from exc
        try:
            with buffer:  # gives the buffer back to the producer as soon as the image is copied out
                return self._copy_out(buffer, time.monotonic_ns())
        except _GENICAM_ERRORS as exc:
            raise CameraDisconnectedError(f"{self.name}: {type(exc).__name__}: {_reason(exc)}") from exc

    def _copy_out(self, buffer: Any, acquired_ns: int) -> Capture:
        self._count += 1
        self._timeouts_in_row = 0
        frame_id = self._frame_id(buffer)
        timestamp_ns = self._timestamp_ns(buffer, acquired_ns)
        payload = buffer.payload
        components = payload.components if payload is not None else []
        if not components:
            raise FrameUnreadableError(
                f"{self.name}: buffer {frame_id} carries no image component",
                frame_id=frame_id,
                timestamp_ns=timestamp_ns,
                acquired_ns=acquired_ns,
                item="buffer",
            )
        component = components[0]
        try:
            image = pixels.to_gray(component.data, component.data_format, component.height, component.width)
        except (ValueError, UnsupportedPixelFormatError) as exc:
            raise FrameUnreadableError(
                f"{self.name}: buffer {frame_id}: {exc}",
                frame_id=frame_id,
                timestamp_ns=timestamp_ns,
                acquired_ns=acquired_ns,
                item="buffer",
            ) from exc
        return Capture(image=image, frame_id=frame_id, timestamp_ns=timestamp_ns, acquired_ns=acquired_ns)

    def _frame_id(self, buffer: Any) -> int:
        if not self._own_frame_ids:
            try:
                frame_id: int | None = int(buffer.module.frame_id)
            except _GENICAM_ERRORS:
                frame_id = None
            # Some transports start counting at 0, so only an id that stays 0 means "no frame ids".
            if frame_id is not None and not (frame_id == 0 and self._last_device_frame_id == 0):
                self._last_device_frame_id = frame_id
                return frame_id
            self._own_frame_ids = True
            _log.info("%s: the device sends no frame ids; using this source's frame counter", self.name)
        return self._count

    def _timestamp_ns(self, buffer: Any, acquired_ns: int) -> int:
        if not self._host_timestamps:
            # harvesters' Buffer.timestamp falls back from timestamp_ns to ticks, then to 0.
            try:
                ticks = int(buffer.timestamp)
                # Asked only when there are ticks: harvesters' fallback chain fails oddly on devices without.
                frequency = int(buffer.timestamp_frequency) if ticks > 0 else 0
            except (*_GENICAM_ERRORS, AttributeError):
                ticks, frequency = 0, 0
            if ticks > 0 and frequency > 0:
                return ticks if frequency == 1_000_000_000 else ticks * 1_000_000_000 // frequency
            self._host_timestamps = True
            _log.info("%s: the device sends no timestamps; using host monotonic time", self.name)
        return acquired_ns

    def _check_alive(self, ia: Any) -> None:
        """After a timeout: is the device still ours? (GenTL access status, queried from the producer.)"""
        try:
            status = ia.device.module.access_status
        except _GENICAM_ERRORS as exc:
            raise CameraDisconnectedError(f"{self.name}: device unreachable: {_reason(exc)}") from exc
        except AttributeError as exc:  # harvesters dropped the device proxy: the acquirer was destroyed
            raise CameraDisconnectedError(f"{self.name}: the device handle is gone") from exc
        if status in _LOST_STATUSES:
            raise CameraDisconnectedError(f"{self.name}: device access status is {status}")

    # --- close ------------------------------------------------------------------------------------------

    def close(self) -> None:
        """Stop, give every buffer back, close the device and the producers. Safe to call twice."""
        ia, harvester = self._ia, self._harvester
        self._ia, self._harvester = None, None
        if ia is not None:
            self._destroy(ia)
        if harvester is not None:
            try:
                harvester.reset()
            except _GENICAM_ERRORS as exc:  # a lost device may fail to close; the handles are dropped anyway
                _log.warning("%s: releasing the GenTL producer failed: %s", self.name, _reason(exc))

    def _destroy(self, ia: Any) -> None:
        try:
            ia.destroy()
        except _GENICAM_ERRORS as exc:
            _log.warning("%s: releasing the device failed: %s", self.name, _reason(exc))


def _describe_id(info: Any) -> str | None:
    try:
        return str(info.id_)
    except _GENICAM_ERRORS:
        return None


def _read(node: Any) -> object:
    """A node's current value (plain Python), or None where it cannot be read."""
    try:
        if node.node.get_access_mode() not in _READABLE:
            return None
        value = node.value
    except (*_GENICAM_ERRORS, AttributeError):
        return None
    if isinstance(value, np.generic):
        return value.item()
    return value if isinstance(value, bool | int | float | str) else str(value)


def _symbolics(node_map: Any, name: str) -> list[str]:
    try:
        return list(node_map.get_node(name).symbolics)
    except (*_GENICAM_ERRORS, AttributeError):
        return []


__all__ = ["GenicamCameraConfig", "GenicamSource"]

"""The one exception tree of linewatch.

Third-party exceptions (harvesters/GenTL, onnxruntime, tensorrt, paho, sqlite) are translated once, at the
module that owns that runtime, with ``raise X(...) from exc``; everything above that edge sees only these.

    LinewatchError
    ├── ConfigError                 invalid settings; carries every problem as (location, message)
    ├── BundleError                 a product bundle cannot be used
    │   ├── BundleNotFoundError     no such product id / directory, or an id that is not a plain name
    │   ├── BundleSchemaError       bundle.json missing, unreadable, wrong schema version or invalid
    │   ├── BundleIntegrityError    a file's sha256 differs from the manifest (or a file is missing)
    │   └── BundleInputMismatchError the model's inputs/outputs disagree with the manifest's input spec
    ├── AcquisitionError            the camera side
    │   ├── CameraNotFoundError     no .cti, no device matching serial/id/index
    │   ├── CameraTimeoutError      no frame within the fetch timeout
    │   ├── CameraDisconnectedError the device went away (access status, transport error)
    │   ├── SourceExhaustedError    a finite source (folder without loop, video file) has no more frames
    │   ├── FrameUnreadableError    one frame could not be read/decoded; the source goes on (→ not_inspected)
    │   ├── CameraSettingError      a configured GenICam node is missing, not writable or refuses the value
    │   └── UnsupportedPixelFormatError the camera delivers a pixel format linewatch cannot turn into gray
    ├── InferenceError              the backend failed on a frame or could not load
    │   ├── BackendUnavailableError the runtime (tensorrt, pycuda, a GPU) is not installed or usable
    │   └── EngineIncompatibleError a compiled plan was built for another GPU / TensorRT version
    ├── PublishError                MQTT / journal side
    └── CommandError                a malformed or refused MQTT/CLI command (answered, never fatal)
"""

from __future__ import annotations


class LinewatchError(Exception):
    """Base of every error linewatch raises on purpose."""


class ConfigError(LinewatchError):
    """Invalid configuration. ``problems`` holds ``(location, message)`` pairs, printed one per line."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        super().__init__("\n".join(f"{loc}: {msg}" for loc, msg in problems))


class BundleError(LinewatchError):
    """A product bundle cannot be used; the message says which file and why."""


class BundleNotFoundError(BundleError):
    pass


class BundleSchemaError(BundleError):
    pass


class BundleIntegrityError(BundleError):
    pass


class BundleInputMismatchError(BundleError):
    pass


class AcquisitionError(LinewatchError):
    """The camera or frame source failed."""


class CameraNotFoundError(AcquisitionError):
    pass


class CameraTimeoutError(AcquisitionError):
    pass


class CameraDisconnectedError(AcquisitionError):
    pass


class SourceExhaustedError(AcquisitionError):
    pass


class FrameUnreadableError(AcquisitionError):
    """One frame could not be read or decoded (a corrupt image file, a buffer of the wrong size).

    The source itself is fine: the next ``read`` returns the following frame. The acquisition stage turns this
    into a ``not_inspected`` result for ``frame_id`` (reason: the message), so the frame is never silent.
    ``item`` names what failed (a file name, ``"buffer"``).
    """

    def __init__(
        self, message: str, *, frame_id: int, timestamp_ns: int, acquired_ns: int, item: str
    ) -> None:
        self.frame_id = frame_id
        self.timestamp_ns = timestamp_ns
        self.acquired_ns = acquired_ns
        self.item = item
        super().__init__(message)


class CameraSettingError(AcquisitionError):
    """A configured node setting cannot be applied; the message names the node, the value and the reason."""


class UnsupportedPixelFormatError(AcquisitionError):
    """The camera is set to a pixel format that ``linewatch.acquisition.pixels`` cannot convert to gray."""


class InferenceError(LinewatchError):
    """The inference backend failed."""


class BackendUnavailableError(InferenceError):
    pass


class EngineIncompatibleError(InferenceError):
    pass


class PublishError(LinewatchError):
    """Publishing (MQTT, journal) failed."""


class CommandError(LinewatchError):
    """A command (MQTT or CLI) was malformed or refused. Always answered, never fatal to the daemon."""

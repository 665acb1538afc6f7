"""The values that flow through the pipeline: Frame → InferenceOutput → Verdict (frozen dataclasses)."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True, slots=True)
class GroundTruth:
    """What a synthetic source knows about a frame it made (tests and the demo score themselves with it)."""

    defective: bool
    defect_kind: str | None = None
    # Defect mask in frame pixels (uint8, 0/255) or None for good frames.
    mask: npt.NDArray[np.uint8] | None = None


@dataclass(frozen=True, slots=True)
class Frame:
    """One image from the camera, already copied out of the camera's buffer.

    ``image`` is 2-D grayscale: uint8, or uint16 scaled to full range (Mono10/12 are shifted up), so that
    preprocessing can always divide by the dtype's maximum.
    """

    seq: int  # linewatch's own consecutive number, assigned by the acquisition stage
    frame_id: int  # the camera's frame id (or the source's counter where the device has none)
    timestamp_ns: int  # camera timestamp where the device has one, else host time (monotonic, ns)
    acquired_ns: int  # host time.monotonic_ns() when the image was copied out
    image: npt.NDArray[Any]
    source: str = ""
    ground_truth: GroundTruth | None = None


@dataclass(frozen=True, slots=True)
class InferenceOutput:
    """What the backend returns for one frame: the image score and (optionally) the distance map."""

    score: float
    # Position of the heatmap maximum, in heatmap cells (row, col).
    argmax_rc: tuple[int, int]
    heatmap: npt.NDArray[np.float32] | None = None


class VerdictKind(StrEnum):
    PASS = "pass"
    FAIL = "fail"
    NOT_INSPECTED = "not_inspected"


@dataclass(frozen=True, slots=True)
class DefectLocation:
    """Where the maximum of the distance map lies, in frame pixels (centre of its 32x32 neighbourhood)."""

    x: int
    y: int


@dataclass(frozen=True, slots=True)
class Verdict:
    """The decision for one frame. Every acquired frame gets exactly one, ``not_inspected`` included."""

    seq: int
    frame_id: int
    verdict: VerdictKind
    product_id: str | None
    bundle_id: str | None
    score: float | None
    threshold: float | None
    location: DefectLocation | None
    timestamp_ns: int
    acquired_ns: int
    # Stage latencies in milliseconds (queue wait, inference, total so far); filled by the pipeline.
    latencies_ms: dict[str, float] = field(default_factory=dict)
    reason: str | None = None  # set for not_inspected

    @property
    def is_reject(self) -> bool:
        return self.verdict is not VerdictKind.PASS


@dataclass(frozen=True, slots=True)
class Capture:
    """What a FrameSource hands over: an image already copied out of the camera's buffer.

    The acquisition stage turns it into a Frame by giving it the next ``seq``.
    """

    image: npt.NDArray[Any]
    frame_id: int
    timestamp_ns: int
    acquired_ns: int
    ground_truth: GroundTruth | None = None

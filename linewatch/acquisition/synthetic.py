"""A synthetic camera: the trainer's procedural surfaces (``linewatch.surfaces``) with injected defects.

Each frame is one part of product (``family``, ``style_seed``). With probability ``defect_rate`` a defect of
one of ``defect_kinds`` is injected, and the frame carries its ``GroundTruth`` (kind and pixel mask), so the
demo and the end-to-end tests can score the daemon's verdicts. Frame ``k`` depends only on (``seed``, ``k``):
the good part comes from one random stream and the defect decision from another, so the same seed with
``defect_rate = 0`` renders exactly the good parts that lie under the defects. numpy + cv2 only (no torch).
"""

from __future__ import annotations

import time
from typing import Literal

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, field_validator

from linewatch.acquisition.pacing import RatePacer
from linewatch.errors import CameraDisconnectedError, SourceExhaustedError
from linewatch.frames import Capture, GroundTruth
from linewatch.surfaces import DEFECT_KINDS, FAMILIES, inject_defect, render_surface

# Stream ids mixed into the per-frame seed: the part's look and the defect are drawn independently.
_SURFACE_STREAM = 0
_DEFECT_STREAM = 1


class SyntheticCameraConfig(BaseModel):
    """Procedural parts with injected defects and ground truth (demo, tests, overload experiments)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["synthetic"] = Field(default="synthetic", description="Selects this camera type")
    family: str = Field(default="fractal", description=f"Surface family, one of {', '.join(FAMILIES)}")
    style_seed: int = Field(default=0, ge=0, description="Fixes the product's look within the family")
    width: int = Field(default=512, ge=16, le=8192, description="Frame width in pixels")
    height: int = Field(default=512, ge=16, le=8192, description="Frame height in pixels")
    rate_hz: float | None = Field(
        default=10.0, gt=0, description="Frames per second; null renders as fast as frames are read"
    )
    defect_rate: float = Field(
        default=0.1, ge=0.0, le=1.0, description="Probability that a frame gets an injected defect"
    )
    defect_kinds: list[str] = Field(
        default_factory=lambda: list(DEFECT_KINDS),
        min_length=1,
        description=f"Defects drawn from (uniformly), any of {', '.join(DEFECT_KINDS)}",
    )
    seed: int = Field(default=0, ge=0, description="Seed of the part sequence: same seed, same frames")
    frame_count: int | None = Field(
        default=None, ge=1, description="Stop after this many frames (SourceExhaustedError); null: endless"
    )
    fetch_timeout_s: float = Field(
        default=1.0, gt=0, description="How long one read waits for the next frame (relevant with rate_hz)"
    )

    @field_validator("family")
    @classmethod
    def _known_family(cls, family: str) -> str:
        if family not in FAMILIES:
            raise ValueError(f"unknown surface family {family!r}; known: {', '.join(FAMILIES)}")
        return family

    @field_validator("defect_kinds")
    @classmethod
    def _known_kinds(cls, kinds: list[str]) -> list[str]:
        unknown = [k for k in kinds if k not in DEFECT_KINDS]
        if unknown:
            raise ValueError(f"unknown defect kinds {unknown}; known: {', '.join(DEFECT_KINDS)}")
        if len(set(kinds)) != len(kinds):
            raise ValueError(f"defect kinds listed twice: {kinds}")
        return kinds


class SyntheticSource:
    """A FrameSource rendering ``SyntheticCameraConfig`` parts, paced at ``rate_hz``."""

    def __init__(self, config: SyntheticCameraConfig) -> None:
        self.config = config
        self._open = False
        self._next_frame = 0
        self._pacer = RatePacer(config.rate_hz)

    @property
    def name(self) -> str:
        return f"synthetic:{self.config.family}#{self.config.style_seed}"

    def open(self) -> None:
        """Start the part sequence at frame 0 (after ``close``; opening an open source changes nothing)."""
        if self._open:
            return
        self._open = True
        self._next_frame = 0
        self._pacer.restart()

    def render(self, frame_id: int) -> tuple[npt.NDArray[np.uint8], GroundTruth]:
        """Frame ``frame_id`` of this configuration and its ground truth (what ``read`` delivers for it)."""
        c = self.config
        surface_rng = np.random.default_rng([c.seed, frame_id, _SURFACE_STREAM])
        image = render_surface(c.family, c.height, c.width, surface_rng, style_seed=c.style_seed)
        defect_rng = np.random.default_rng([c.seed, frame_id, _DEFECT_STREAM])
        if defect_rng.random() >= c.defect_rate:
            return image, GroundTruth(defective=False)
        kind = c.defect_kinds[int(defect_rng.integers(len(c.defect_kinds)))]
        defective, mask = inject_defect(image, kind, defect_rng)
        return defective, GroundTruth(defective=True, defect_kind=kind, mask=mask)

    def read(self, timeout_s: float) -> Capture:
        if not self._open:
            raise CameraDisconnectedError(f"{self.name} is not open")
        if self.config.frame_count is not None and self._next_frame >= self.config.frame_count:
            raise SourceExhaustedError(f"{self.name}: all {self.config.frame_count} frames delivered")
        self._pacer.wait(timeout_s)
        frame_id = self._next_frame
        self._next_frame += 1
        image, truth = self.render(frame_id)
        acquired_ns = time.monotonic_ns()
        return Capture(
            image=image,
            frame_id=frame_id,
            timestamp_ns=acquired_ns,
            acquired_ns=acquired_ns,
            ground_truth=truth,
        )

    def close(self) -> None:
        self._open = False

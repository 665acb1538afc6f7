"""Reconnection back-off for a camera that went away.

The policy lives in the acquisition stage: on ``CameraDisconnectedError`` it calls ``source.close()``, waits
``backoff.wait(stop)``, calls ``source.open()`` again, publishes its status meanwhile, and ``backoff.reset()``
once a frame arrives. This module only says how long to wait: ``initial_s``, then ``factor`` times longer
after every failed attempt, never more than ``max_s`` (no jitter: one process talks to one camera).
"""

from __future__ import annotations

import threading

from pydantic import BaseModel, ConfigDict, Field, model_validator


class ReconnectConfig(BaseModel):
    """How quickly the acquisition stage retries opening a camera that went away."""

    model_config = ConfigDict(extra="forbid")

    initial_s: float = Field(
        default=0.5, gt=0, description="Wait before the first reconnection attempt, seconds"
    )
    max_s: float = Field(default=30.0, gt=0, description="Longest wait between two attempts, seconds")
    factor: float = Field(default=2.0, ge=1.0, description="Each failed attempt multiplies the wait by this")

    @model_validator(mode="after")
    def _max_not_below_initial(self) -> ReconnectConfig:
        if self.max_s < self.initial_s:
            raise ValueError(f"max_s ({self.max_s}) must not be smaller than initial_s ({self.initial_s})")
        return self


class Backoff:
    """Exponential back-off: ``next_delay_s()`` yields initial_s, initial_s·factor, … capped at max_s."""

    def __init__(self, initial_s: float = 0.5, max_s: float = 30.0, factor: float = 2.0) -> None:
        if initial_s <= 0 or max_s < initial_s or factor < 1.0:
            raise ValueError(
                f"need 0 < initial_s <= max_s and factor >= 1, got {initial_s}, {max_s}, {factor}"
            )
        self.initial_s = initial_s
        self.max_s = max_s
        self.factor = factor
        self.attempts = 0  # failed attempts since the last reset
        self._delay_s = initial_s

    @classmethod
    def from_config(cls, config: ReconnectConfig) -> Backoff:
        return cls(config.initial_s, config.max_s, config.factor)

    def next_delay_s(self) -> float:
        """The wait before the next attempt; counts one more attempt."""
        # Grown step by step (not factor**attempts) so a camera that stays away for days cannot overflow it.
        delay = self._delay_s
        self._delay_s = min(self.max_s, delay * self.factor)
        self.attempts += 1
        return delay

    def wait(self, stop: threading.Event) -> bool:
        """Sleep ``next_delay_s()`` unless ``stop`` is set first. Returns True when woken by ``stop``."""
        return stop.wait(self.next_delay_s())

    def reset(self) -> None:
        """The camera is back: the next outage starts again from ``initial_s``."""
        self.attempts = 0
        self._delay_s = self.initial_s

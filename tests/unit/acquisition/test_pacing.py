"""RatePacer on a fake clock (the same two callables, time.monotonic and time.sleep, it uses for real)."""

from __future__ import annotations

import pytest

from linewatch.acquisition.pacing import RatePacer
from linewatch.errors import CameraTimeoutError


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_frames_are_delivered_at_the_rate_without_drift() -> None:
    clock = FakeClock()
    pacer = RatePacer(10.0, clock=clock, sleep=clock.sleep)
    times = []
    for _ in range(5):
        pacer.wait(timeout_s=1.0)
        times.append(clock.now)
        clock.now += 0.03  # the consumer's own work between reads does not add to the period
    assert times == pytest.approx([100.0, 100.1, 100.2, 100.3, 100.4])


def test_none_never_waits() -> None:
    clock = FakeClock()
    pacer = RatePacer(None, clock=clock, sleep=clock.sleep)
    for _ in range(100):
        pacer.wait(timeout_s=0.0)
    assert clock.slept == []


def test_a_frame_beyond_the_timeout_is_a_camera_timeout() -> None:
    clock = FakeClock()
    pacer = RatePacer(0.5, clock=clock, sleep=clock.sleep)  # one frame every 2 s
    pacer.wait(timeout_s=1.0)
    with pytest.raises(CameraTimeoutError, match="after the 1 s timeout"):
        pacer.wait(timeout_s=1.0)
    assert clock.now == pytest.approx(101.0)  # waited the timeout, like a camera fetch
    pacer.wait(timeout_s=1.5)  # due at 102.0
    assert clock.now == pytest.approx(102.0)


def test_after_a_stall_there_is_no_burst() -> None:
    clock = FakeClock()
    pacer = RatePacer(10.0, clock=clock, sleep=clock.sleep)
    pacer.wait(1.0)
    clock.now += 5.0  # consumer blocked for 50 periods
    start = clock.now
    for _ in range(4):
        pacer.wait(1.0)
    # The first read after the stall is immediate, then the period again: no burst of missed frames.
    assert clock.now - start == pytest.approx(0.3)


def test_rate_must_be_positive() -> None:
    with pytest.raises(ValueError, match="rate_hz"):
        RatePacer(0.0)

from __future__ import annotations

import threading

import pytest
from pydantic import ValidationError

from linewatch.acquisition.reconnect import Backoff, ReconnectConfig


def test_delays_grow_by_factor_up_to_max_and_reset_starts_over() -> None:
    backoff = Backoff(initial_s=0.5, max_s=5.0, factor=2.0)
    assert [backoff.next_delay_s() for _ in range(7)] == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0, 5.0]
    assert backoff.attempts == 7
    backoff.reset()
    assert backoff.attempts == 0
    assert backoff.next_delay_s() == 0.5


def test_a_camera_away_for_days_does_not_overflow() -> None:
    backoff = Backoff(initial_s=1.0, max_s=60.0, factor=10.0)
    for _ in range(100_000):
        delay = backoff.next_delay_s()
    assert delay == 60.0


def test_wait_returns_at_once_when_stopping() -> None:
    backoff = Backoff(initial_s=60.0, max_s=60.0)
    stop = threading.Event()
    stop.set()
    assert backoff.wait(stop) is True  # would otherwise sleep a minute
    assert backoff.attempts == 1


def test_wait_sleeps_the_delay_when_not_stopped() -> None:
    backoff = Backoff(initial_s=0.01, max_s=0.01)
    assert backoff.wait(threading.Event()) is False


def test_from_config_and_validation() -> None:
    backoff = Backoff.from_config(ReconnectConfig(initial_s=0.25, max_s=1.0, factor=3.0))
    assert [backoff.next_delay_s() for _ in range(3)] == [0.25, 0.75, 1.0]
    with pytest.raises(ValidationError, match=r"max_s \(1.0\) must not be smaller than initial_s \(2.0\)"):
        ReconnectConfig(initial_s=2.0, max_s=1.0)
    with pytest.raises(ValidationError, match="initial_s"):
        ReconnectConfig(initial_s=0)
    with pytest.raises(ValidationError, match="jitter"):
        ReconnectConfig.model_validate({"jitter": 0.1})
    with pytest.raises(ValueError, match="initial_s <= max_s"):
        Backoff(initial_s=2.0, max_s=1.0)

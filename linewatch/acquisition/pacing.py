"""Frame pacing for replay and synthetic sources: deliver at ``rate_hz`` the way a free-running camera would.

``RatePacer.wait(timeout_s)`` returns when the next frame is due. Like a camera, a source whose next frame
is further away than ``timeout_s`` waits ``timeout_s`` and raises ``CameraTimeoutError`` (the caller simply
reads again). ``rate_hz=None`` never waits (as fast as the consumer reads: overload tests). Lateness within
a period is made up (no drift); after a longer stall the schedule restarts from now instead of bursting the
missed frames out.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from linewatch.errors import CameraTimeoutError


class RatePacer:
    def __init__(
        self,
        rate_hz: float | None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if rate_hz is not None and rate_hz <= 0:
            raise ValueError(f"rate_hz must be positive or None, got {rate_hz}")
        self.period_s = None if rate_hz is None else 1.0 / rate_hz
        self._clock = clock
        self._sleep = sleep
        self._due: float | None = None  # when the next frame may be delivered

    def restart(self) -> None:
        """The next frame is due at once (on open)."""
        self._due = None

    def wait(self, timeout_s: float) -> None:
        if self.period_s is None:
            return
        now = self._clock()
        due = now if self._due is None else self._due
        if due - now > timeout_s:
            self._sleep(max(timeout_s, 0.0))
            raise CameraTimeoutError(
                f"next frame due in {due - now:.3f} s, after the {timeout_s:g} s timeout"
            )
        if due > now:
            self._sleep(due - now)
        now = self._clock()
        # Schedule from the due time (no drift from sleep jitter); after a stall longer than a period,
        # from now (no burst of the missed frames).
        self._due = due + self.period_s if now - due <= self.period_s else now + self.period_s

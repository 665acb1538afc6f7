"""CPU priority of the daemon's threads: inference first.

On a small machine the inference backend's threads use every core, and each of its parallel operators waits
for its slowest thread; a scoring, publishing or journal thread that takes a core at that moment stalls the
whole operator. Those threads are not on the critical path (their queues absorb a delay), so they run at a
lower CPU priority (Linux nice is per thread) and the scheduler lets inference preempt them at once.
Measured with `linewatch bench` (clusters bundle, 2 cores): pipeline/backend 0.95 / 0.95 at the same
priority, 0.97 / 0.95 at nice 5, 0.96 / 0.96 at nice 10; nice 5 keeps those threads ~25 % of a busy core.
"""

from __future__ import annotations

import logging
import os
import threading

log = logging.getLogger(__name__)

OFF_CRITICAL_PATH_NICENESS = 5


def lower_current_thread_priority(niceness: int = OFF_CRITICAL_PATH_NICENESS) -> bool:
    """Raise the calling thread's nice value by ``niceness`` (never lowers it: that needs privileges).
    True when applied; False where threads have no nice value of their own (not Linux) or the call failed."""
    if niceness <= 0 or not hasattr(os, "setpriority"):
        return False
    tid = threading.get_native_id()
    try:
        current = os.getpriority(os.PRIO_PROCESS, tid)
        os.setpriority(os.PRIO_PROCESS, tid, min(19, current + niceness))
    except OSError as exc:  # a sandbox without the syscall: the thread keeps the normal priority
        log.debug("cannot lower the priority of thread %s: %s", threading.current_thread().name, exc)
        return False
    return True

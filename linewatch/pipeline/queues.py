"""A bounded queue whose overflow policy is explicit and whose every drop is counted.

``block``: a full queue makes the producer wait (the camera's own buffers fill up; the camera then loses
frames, which the acquisition stage sees as frame-id gaps and reports). ``drop_oldest``: the oldest waiting
item is removed to make room and handed back to the producer, which turns it into a ``not_inspected``
result — a drop is never silent.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from enum import StrEnum
from typing import Generic, TypeVar

T = TypeVar("T")


class OverflowPolicy(StrEnum):
    BLOCK = "block"
    DROP_OLDEST = "drop_oldest"


class QueueClosedError(Exception):
    """``put`` on a closed queue, or ``get`` on a closed and empty one."""


@dataclass(frozen=True, slots=True)
class PutResult(Generic[T]):
    """What ``put`` did: ``accepted`` False only when a ``block`` put timed out (the item is not queued);
    ``dropped`` is the oldest item removed to make room (``drop_oldest`` only)."""

    accepted: bool
    dropped: T | None = None


@dataclass(frozen=True, slots=True)
class QueueCounters:
    size: int
    depth: int
    max_depth: int
    put: int
    got: int
    dropped: int
    blocked_s: float


class BoundedQueue(Generic[T]):
    """Thread-safe FIFO of at most ``size`` items (one producer, one consumer in the pipeline)."""

    def __init__(self, size: int, policy: OverflowPolicy | str) -> None:
        if size < 1:
            raise ValueError(f"queue size must be at least 1, got {size}")
        self.size = size
        self.policy = OverflowPolicy(policy)
        self._items: deque[T] = deque()
        self._lock = threading.Lock()
        self._not_empty = threading.Condition(self._lock)
        self._not_full = threading.Condition(self._lock)
        self._closed = False
        self._put = 0
        self._got = 0
        self._dropped = 0
        self._max_depth = 0
        self._blocked_s = 0.0

    def put(self, item: T, timeout_s: float | None = None) -> PutResult[T]:
        """Queue ``item``. ``block`` waits up to ``timeout_s`` (None: forever) for room; ``drop_oldest``
        never waits. Raises ``QueueClosedError`` once the queue is closed."""
        with self._lock:
            if self._closed:
                raise QueueClosedError("queue is closed")
            dropped: T | None = None
            if len(self._items) >= self.size:
                if self.policy is OverflowPolicy.DROP_OLDEST:
                    dropped = self._items.popleft()
                    self._dropped += 1
                else:
                    start = time.monotonic()
                    ok = self._not_full.wait_for(
                        lambda: self._closed or len(self._items) < self.size, timeout_s
                    )
                    self._blocked_s += time.monotonic() - start
                    if self._closed:
                        raise QueueClosedError("queue is closed")
                    if not ok:
                        return PutResult(accepted=False)
            self._items.append(item)
            self._put += 1
            self._max_depth = max(self._max_depth, len(self._items))
            self._not_empty.notify()
            return PutResult(accepted=True, dropped=dropped)

    def get(self, timeout_s: float | None = None) -> T | None:
        """The oldest item, or None after ``timeout_s`` with nothing queued. A closed queue still hands out
        what it holds, then raises ``QueueClosedError``."""
        with self._lock:
            if not self._not_empty.wait_for(lambda: self._closed or bool(self._items), timeout_s):
                return None
            if not self._items:
                raise QueueClosedError("queue is closed and empty")
            item = self._items.popleft()
            self._got += 1
            self._not_full.notify()
            return item

    def close(self) -> None:
        """No more puts; waiting producers and consumers wake up. Queued items can still be taken."""
        with self._lock:
            self._closed = True
            self._not_empty.notify_all()
            self._not_full.notify_all()

    def take_all(self) -> list[T]:
        """Remove and return everything queued (used when a drain runs out of time)."""
        with self._lock:
            items = list(self._items)
            self._items.clear()
            self._got += len(items)
            self._not_full.notify_all()
            return items

    @property
    def closed(self) -> bool:
        with self._lock:
            return self._closed

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def counters(self) -> QueueCounters:
        with self._lock:
            return QueueCounters(
                size=self.size,
                depth=len(self._items),
                max_depth=self._max_depth,
                put=self._put,
                got=self._got,
                dropped=self._dropped,
                blocked_s=self._blocked_s,
            )

"""The bounded queue: both overflow policies, counted drops, close semantics."""

from __future__ import annotations

import threading
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from linewatch.pipeline.queues import BoundedQueue, OverflowPolicy, QueueClosedError


def test_drop_oldest_never_blocks_and_hands_back_every_dropped_item() -> None:
    q: BoundedQueue[int] = BoundedQueue(3, "drop_oldest")
    dropped = []
    for i in range(10):
        result = q.put(i)
        assert result.accepted
        if result.dropped is not None:
            dropped.append(result.dropped)
    assert dropped == list(range(7))
    assert [q.get(0) for _ in range(3)] == [7, 8, 9]
    c = q.counters()
    assert (c.put, c.got, c.dropped, c.depth, c.max_depth) == (10, 3, 7, 0, 3)


def test_block_waits_for_room_and_loses_nothing() -> None:
    q: BoundedQueue[int] = BoundedQueue(2, OverflowPolicy.BLOCK)
    got: list[int] = []

    def consume() -> None:
        while True:
            try:
                item = q.get(1.0)
            except QueueClosedError:
                return
            if item is not None:
                got.append(item)
                time.sleep(0.001)

    consumer = threading.Thread(target=consume)
    consumer.start()
    for i in range(200):
        assert q.put(i, timeout_s=5.0).accepted
    q.close()
    consumer.join(5)
    assert got == list(range(200))
    assert q.counters().dropped == 0
    assert q.counters().max_depth <= 2


def test_block_put_times_out_without_queueing() -> None:
    q: BoundedQueue[str] = BoundedQueue(1, "block")
    assert q.put("a").accepted
    start = time.monotonic()
    result = q.put("b", timeout_s=0.05)
    assert not result.accepted and result.dropped is None
    assert time.monotonic() - start >= 0.04
    assert len(q) == 1 and q.get(0) == "a"


def test_close_wakes_a_blocked_producer_and_consumer_gets_the_rest() -> None:
    q: BoundedQueue[int] = BoundedQueue(1, "block")
    q.put(1)
    errors: list[BaseException] = []

    def produce() -> None:
        try:
            q.put(2)
        except QueueClosedError as exc:
            errors.append(exc)

    t = threading.Thread(target=produce)
    t.start()
    time.sleep(0.05)
    q.close()
    t.join(2)
    assert not t.is_alive() and len(errors) == 1
    assert q.get(0) == 1
    with pytest.raises(QueueClosedError):
        q.get(0)
    with pytest.raises(QueueClosedError):
        q.put(3)


def test_get_times_out_with_none() -> None:
    q: BoundedQueue[int] = BoundedQueue(1, "drop_oldest")
    assert q.get(0.01) is None


def test_take_all_empties_in_order() -> None:
    q: BoundedQueue[int] = BoundedQueue(5, "block")
    for i in range(4):
        q.put(i)
    assert q.take_all() == [0, 1, 2, 3] and len(q) == 0


def test_bad_size_and_policy_are_refused() -> None:
    with pytest.raises(ValueError):
        BoundedQueue(0, "block")
    with pytest.raises(ValueError):
        BoundedQueue(1, "drop_newest")


@given(size=st.integers(1, 8), n=st.integers(0, 60))
def test_drop_oldest_conserves_items(size: int, n: int) -> None:
    """Every item put is either got or reported dropped, exactly once, in order."""
    q: BoundedQueue[int] = BoundedQueue(size, "drop_oldest")
    dropped = [r.dropped for r in (q.put(i) for i in range(n)) if r.dropped is not None]
    rest = q.take_all()
    assert dropped + rest == list(range(n))
    assert q.counters().dropped == len(dropped) == max(0, n - size)

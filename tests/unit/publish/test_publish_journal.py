"""The SQLite journal: outbox order, audit queries, restart continuity, retention and the image store."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from linewatch.errors import PublishError
from linewatch.frames import VerdictKind
from linewatch.publish.journal import Journal, JournalConfig
from linewatch.publish.payloads import Location, ResultPayload

DAY_NS = 86_400 * 10**9


def result(
    seq: int, verdict: str = "pass", product: str = "widget", unix_ns: int | None = None
) -> ResultPayload:
    return ResultPayload(
        seq=seq,
        frame_id=1000 + seq,
        timestamp_ns=seq * 10,
        acquired_ns=seq * 20,
        acquired_unix_ns=time.time_ns() if unix_ns is None else unix_ns,
        product=product,
        bundle=f"{product}-b1",
        verdict=verdict,  # type: ignore[arg-type]
        score=0.25 * seq,
        threshold=1.5,
        location=None if verdict == "not_inspected" else Location(x=seq, y=2 * seq),
        latencies_ms={"inference": 4.0, "total": 9.5},
        reason="dropped: queue full" if verdict == "not_inspected" else None,
    )


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    j = Journal(JournalConfig(state_dir=tmp_path / "state", batch_ms=5))
    yield j
    j.close()


def test_rows_round_trip_with_every_field(journal: Journal) -> None:
    original = result(3, "fail")
    rid = journal.append(original)
    journal.flush()
    record = journal.get(3)
    assert record is not None and record.record_id == rid
    assert record.result == original
    assert record.published_unix_ns is None and record.image_path is None


def test_batched_writes_commit_without_flush(journal: Journal) -> None:
    for seq in range(20):
        journal.append(result(seq))
    deadline = time.monotonic() + 5.0
    while len(journal.query(limit=None)) < 20 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert [r.result.seq for r in journal.query(limit=None)] == list(range(20))


def test_query_filters_by_time_verdict_and_product(journal: Journal) -> None:
    t0 = 1_700_000_000 * 10**9
    verdicts = ["pass", "fail", "pass", "not_inspected", "fail", "pass"]
    for seq, v in enumerate(verdicts):
        journal.append(result(seq, v, product="a" if seq < 3 else "b", unix_ns=t0 + seq * 10**9))
    journal.flush()
    assert [r.result.seq for r in journal.query(verdict="fail")] == [1, 4]
    assert [r.result.seq for r in journal.query(verdict=VerdictKind.NOT_INSPECTED)] == [3]
    assert [r.result.seq for r in journal.query(since_ns=t0 + 2 * 10**9, until_ns=t0 + 5 * 10**9)] == [
        2,
        3,
        4,
    ]
    assert [r.result.seq for r in journal.query(product="b", verdict="fail")] == [4]
    assert [r.result.seq for r in journal.query(limit=2, newest_first=True)] == [5, 4]
    with pytest.raises(ValueError):
        journal.query(verdict="maybe")


def test_seq_and_unpublished_rows_survive_a_restart(tmp_path: Path) -> None:
    config = JournalConfig(state_dir=tmp_path, batch_ms=1000)
    first = Journal(config)
    assert first.last_seq() is None
    ids = [first.append(result(seq)) for seq in range(10)]
    first.mark_published(ids[:4])
    first.close()  # commits what is queued, no flush needed

    second = Journal(config)
    try:
        assert second.last_seq() == 9  # the pipeline continues at 10
        assert second.last_record_id() == ids[-1]
        pending = second.unpublished()
        assert [r.result.seq for r in pending] == [4, 5, 6, 7, 8, 9]
        assert [r.result.seq for r in second.unpublished(after_record_id=pending[2].record_id, limit=2)] == [
            7,
            8,
        ]
        assert second.unpublished_count() == 6
        assert second.append(result(10)) == ids[-1] + 1
    finally:
        second.close()


def test_retention_by_age_keeps_unpublished_rows(journal: Journal) -> None:
    now = time.time_ns()
    old = [journal.append(result(seq, unix_ns=now - 100 * DAY_NS)) for seq in range(5)]
    journal.append(result(5, unix_ns=now))
    journal.mark_published([*old[:3], old[-1] + 1])
    journal.flush()
    assert journal.apply_retention(now) == 3  # published and older than 90 days
    assert [r.result.seq for r in journal.query(limit=None)] == [3, 4, 5]


def test_retention_by_size_deletes_published_first_then_counts_lost(tmp_path: Path) -> None:
    j = Journal(JournalConfig(state_dir=tmp_path, max_rows=10, batch_ms=5))
    try:
        ids = [j.append(result(seq)) for seq in range(16)]
        j.mark_published(ids[4:8])  # 4..7 published, 0..3 and 8..15 not
        j.flush()
        assert j.apply_retention() == 6
        # 4 published rows went first, then the 2 oldest unpublished (counted as lost).
        assert [r.result.seq for r in j.query(limit=None)] == [2, 3, *range(8, 16)]
        assert j.stats()["lost_unpublished"] == 2
    finally:
        j.close()


def test_image_store_is_bounded_oldest_first(tmp_path: Path) -> None:
    j = Journal(JournalConfig(state_dir=tmp_path, images_max_mb=0.1, batch_ms=5))
    rng = np.random.default_rng(0)
    try:
        paths = []
        for seq in range(12):
            j.append(result(seq, "fail"))
            image = rng.integers(0, 256, size=(128, 128), dtype=np.uint8)  # ~16 kB of noise as PNG
            path = j.store_image(seq, image)
            assert path is not None
            paths.append(path)
        j.flush()
        kept = [p for p in paths if p.exists()]
        assert 0 < len(kept) < len(paths) and kept == paths[-len(kept) :]  # only the oldest were deleted
        assert sum(p.stat().st_size for p in kept) <= 0.1 * 1024 * 1024
        newest = j.get(11)
        assert newest is not None and newest.image_path == paths[-1]
        decoded = cv2.imread(str(paths[-1]), cv2.IMREAD_UNCHANGED)
        assert decoded is not None and decoded.shape == (128, 128)
        oldest = j.get(0)
        assert oldest is not None and oldest.image_path is None  # reference cleared with the file
    finally:
        j.close()


def test_image_policy_rejects_and_every_nth_pass(tmp_path: Path) -> None:
    j = Journal(JournalConfig(state_dir=tmp_path, images_every_nth_pass=3))
    try:
        assert j.image_wanted(VerdictKind.FAIL) and j.image_wanted(VerdictKind.NOT_INSPECTED)
        assert [j.image_wanted(VerdictKind.PASS) for _ in range(6)] == [False, False, True] * 2
    finally:
        j.close()
    off = Journal(JournalConfig(state_dir=tmp_path / "off", images_max_mb=0))
    try:
        assert not off.image_wanted(VerdictKind.FAIL)
        assert off.store_image(1, np.zeros((4, 4), np.uint8)) is None
    finally:
        off.close()


def test_feedback_is_recorded_on_the_decision(journal: Journal) -> None:
    journal.append(result(4, "fail"))
    assert journal.set_feedback(4, "good", "dust on the lens")
    record = journal.get(4)
    assert record is not None and (record.feedback_label, record.feedback_note) == (
        "good",
        "dust on the lens",
    )
    assert not journal.set_feedback(99, "defect")


def test_unusable_state_dir_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(PublishError, match="cannot open the journal"):
        Journal(JournalConfig(state_dir=blocker / "state"))

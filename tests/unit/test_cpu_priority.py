"""Threads off the critical path (scoring, publishing, the journal writer) run at a lower CPU priority than
inference, so the backend's parallel operators are not stalled by them."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from linewatch.cpu_priority import OFF_CRITICAL_PATH_NICENESS, lower_current_thread_priority
from linewatch.pipeline.stages import PublishingStage, ScoringStage, Stage
from linewatch.publish.journal import Journal, JournalConfig

pytestmark = pytest.mark.skipif(not hasattr(os, "setpriority"), reason="per-thread nice is Linux only")


def _nice_of(tid: int) -> int:
    return os.getpriority(os.PRIO_PROCESS, tid)


def test_lowering_affects_only_the_calling_thread() -> None:
    base = _nice_of(threading.get_native_id())
    seen: dict[str, int] = {}

    def worker() -> None:
        assert lower_current_thread_priority(3)
        seen["worker"] = _nice_of(threading.get_native_id())

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert seen["worker"] == min(19, base + 3)
    assert _nice_of(threading.get_native_id()) == base  # the caller (think: inference) is untouched
    assert not lower_current_thread_priority(0)


class _Probe(Stage):
    def run(self) -> None:
        self.nice = _nice_of(threading.get_native_id())
        self.mark_ready()


def test_stages_off_the_critical_path_declare_a_lower_priority_and_get_it() -> None:
    assert ScoringStage.niceness == PublishingStage.niceness == OFF_CRITICAL_PATH_NICENESS > 0
    assert Stage.niceness == 0  # acquisition and inference keep the process priority
    base = _nice_of(threading.get_native_id())
    low = type("LowProbe", (_Probe,), {"niceness": OFF_CRITICAL_PATH_NICENESS})("low")
    normal = _Probe("normal")
    for stage in (low, normal):
        stage.start()
        assert stage.join(5)
    assert low.nice == min(19, base + OFF_CRITICAL_PATH_NICENESS)
    assert normal.nice == base


def test_the_journal_writer_runs_at_the_lower_priority(tmp_path: Path) -> None:
    base = _nice_of(threading.get_native_id())
    journal = Journal(JournalConfig(state_dir=tmp_path))
    try:
        journal.flush()  # the writer has run (and set its priority first thing)
        writer = next(t for t in threading.enumerate() if t.name == "linewatch-journal")
        assert writer.native_id is not None
        assert _nice_of(writer.native_id) == min(19, base + OFF_CRITICAL_PATH_NICENESS)
    finally:
        journal.close()

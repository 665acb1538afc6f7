"""``linewatch history``: the journal's decisions filtered by time, verdict and product, as a table or JSON
lines; reading never deletes anything."""

from __future__ import annotations

import datetime as dt
import json
import time
from pathlib import Path

import pytest
from daemon_support import daemon_config

from linewatch.frames import DefectLocation, Verdict, VerdictKind
from linewatch.publish.journal import Journal, JournalConfig
from linewatch.publish.payloads import ResultPayload
from linewatch.service.cli import main
from linewatch.service.history import parse_time

HOUR_NS = 3600 * 10**9
DAY_NS = 24 * HOUR_NS


def result(seq: int, kind: VerdictKind, product: str, age_ns: int) -> ResultPayload:
    verdict = Verdict(
        seq=seq, frame_id=1000 + seq, verdict=kind, product_id=product, bundle_id=f"{product}@abcdefabcdef",
        score=None if kind is VerdictKind.NOT_INSPECTED else (1.5 if kind is VerdictKind.FAIL else 0.2),
        threshold=1.0, location=None if kind is VerdictKind.NOT_INSPECTED else DefectLocation(12, 34),
        timestamp_ns=0, acquired_ns=0,
        reason="dropped: queue full" if kind is VerdictKind.NOT_INSPECTED else None,
    )
    return ResultPayload.from_verdict(verdict, acquired_unix_ns=time.time_ns() - age_ns)


@pytest.fixture
def state(tmp_path: Path) -> Path:
    state_dir = tmp_path / "state"
    journal = Journal(JournalConfig(state_dir=state_dir, batch_ms=5))
    rows = [
        (0, VerdictKind.FAIL, "alpha", 200 * DAY_NS),  # old, published: older than the default retention
        (1, VerdictKind.PASS, "alpha", 3 * HOUR_NS),
        (2, VerdictKind.FAIL, "alpha", 30 * 60 * 10**9),
        (3, VerdictKind.PASS, "beta", 20 * 60 * 10**9),
        (4, VerdictKind.FAIL, "beta", 10 * 60 * 10**9),
        (5, VerdictKind.NOT_INSPECTED, "beta", 5 * 60 * 10**9),
        (6, VerdictKind.FAIL, "beta", 60 * 10**9),
    ]
    ids = [journal.append(result(*row)) for row in rows]
    journal.mark_published(ids[:5])
    journal.flush()
    assert journal.set_feedback(4, "good", "dust")
    journal.close()
    return state_dir


def seqs_of_table(out: str) -> list[int]:
    return [int(line.split()[1]) for line in out.splitlines()[1:]]


def test_failures_of_the_last_hour_as_a_table(state: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["history", "--state-dir", str(state), "--since", "1h", "--verdict", "fail"]) == 0
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert lines[0].split()[:4] == ["time", "(UTC)", "seq", "frame"]
    assert seqs_of_table(captured.out) == [2, 4, 6]  # oldest first
    row4 = next(line for line in lines if line.split()[1] == "4")
    assert "beta" in row4 and "1.5" in row4 and "12,34" in row4 and "yes" in row4 and "false_reject" in row4
    row6 = next(line for line in lines if line.split()[1] == "6")
    assert row6.split()[-2:] == ["no", "-"]  # not published yet, no feedback
    assert "3 decision(s)" in captured.err


def test_filters_limits_and_json_lines(state: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["history", "--state-dir", str(state), "--product", "beta", "--json"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["seq"] for r in records] == [3, 4, 5, 6]
    assert records[1]["feedback_label"] == "good" and records[1]["feedback_kind"] == "false_reject"
    assert records[1]["feedback_note"] == "dust" and records[1]["schema"] == "linewatch.result/1"
    assert records[2]["verdict"] == "not_inspected" and records[2]["reason"] == "dropped: queue full"
    assert records[3]["published_unix_ns"] is None and records[0]["published_unix_ns"] is not None
    assert main(["history", "--state-dir", str(state), "--limit", "2"]) == 0
    assert seqs_of_table(capsys.readouterr().out) == [5, 6]  # the newest two
    assert main(["history", "--state-dir", str(state), "--limit", "2", "--oldest-first"]) == 0
    assert seqs_of_table(capsys.readouterr().out) == [0, 1]
    since = (dt.datetime.now() - dt.timedelta(minutes=25)).isoformat(timespec="seconds")
    until = (dt.datetime.now(dt.UTC) - dt.timedelta(minutes=7)).isoformat(timespec="seconds")
    assert main(["history", "--state-dir", str(state), "--since", since, "--until", until]) == 0
    assert seqs_of_table(capsys.readouterr().out) == [3, 4]


def test_reading_never_deletes_and_the_config_finds_the_journal(
    state: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = daemon_config(tmp_path / "lw.toml", camera={"kind": "synthetic"}, products_dir=tmp_path,
                           active=None, mqtt_port=1883, journal={"retention_days": 1.0})
    assert main(["history", "--config", str(config), "--limit", "0", "--oldest-first"]) == 0
    assert seqs_of_table(capsys.readouterr().out) == list(range(7))
    time.sleep(0.2)
    journal = Journal(JournalConfig(state_dir=state, retention_interval_s=1e6, retention_days=36500))
    try:
        assert [r.result.seq for r in journal.query(limit=None)] == list(range(7))  # seq 0 is still there
    finally:
        journal.close()


def test_bad_arguments_are_clear(state: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["history", "--state-dir", str(state), "--since", "yesterday"]) == 2
    assert "neither a duration" in capsys.readouterr().err
    assert main(["history", "--state-dir", str(tmp_path / "nothing")]) == 1
    assert "no journal at" in capsys.readouterr().err
    assert main(["history", "--config", str(tmp_path / "missing.toml")]) == 2
    assert "(or give --state-dir)" in capsys.readouterr().err


def test_durations_and_iso_times() -> None:
    now = 1_700_000_000 * 10**9
    assert parse_time("90s", now) == now - 90 * 10**9
    assert parse_time("1.5h", now) == now - 5400 * 10**9
    assert parse_time("2d", now) == now - 2 * DAY_NS
    assert parse_time("2023-11-14T22:13:20+00:00") == now

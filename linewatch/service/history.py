"""``linewatch history``: decisions from the local journal (the audit trail), as a table or JSON lines.

    linewatch history --since 1h --verdict fail
    linewatch history --since 2024-05-01T06:00 --until 2024-05-01T14:00 --product widget-a --json

The journal is found through the config's ``state_dir`` (``--config``) or given directly (``--state-dir``).
Reading never deletes anything: the journal is opened with retention switched off (the daemon applies its
own). Times are printed in UTC; ``--since``/``--until`` take a duration back from now (``90s``, ``15m``,
``1h``, ``2d``, ``1w``) or an ISO-8601 time (local time unless it names a zone).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

from linewatch.config import DEFAULT_CONFIG_PATH, format_problems, load_settings
from linewatch.errors import ConfigError, LinewatchError
from linewatch.products.feedback import feedback_kind
from linewatch.publish.journal import JOURNAL_FILE, Journal, JournalConfig, JournalRecord

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)\s*$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
# Retention that never triggers (100 years: the cutoff still fits SQLite's int64 nanoseconds): a reader must
# not delete what the daemon keeps.
_NO_RETENTION: dict[str, Any] = {"retention_days": 36500.0, "max_rows": 1 << 62, "retention_interval_s": 1e9}


def parse_time(text: str, now_ns: int | None = None) -> int:
    """A duration back from now (``1h``) or an ISO-8601 time → Unix nanoseconds; ValueError otherwise."""
    now = time.time_ns() if now_ns is None else now_ns
    match = _DURATION.match(text)
    if match:
        return now - int(float(match.group(1)) * _UNIT_S[match.group(2)] * 1e9)
    try:
        when = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"{text!r} is neither a duration (90s, 15m, 1h, 2d, 1w) nor an ISO-8601 time (2024-05-01T06:00)"
        ) from None
    if when.tzinfo is None:
        when = when.astimezone()  # local time, as an operator reads the clock on the wall
    return int(when.timestamp() * 1e9)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--config", type=Path, default=None,
                       help=f"config file whose state_dir holds the journal (default {DEFAULT_CONFIG_PATH})")
    where.add_argument("--state-dir", type=Path, default=None, help="directory of journal.sqlite3")
    parser.add_argument("--since", default=None, metavar="WHEN",
                        help="from this time: 1h, 30m, 2d or ISO-8601")
    parser.add_argument("--until", default=None, metavar="WHEN", help="before this time (same forms)")
    parser.add_argument("--verdict", choices=["pass", "fail", "not_inspected"], default=None,
                        help="only this verdict")
    parser.add_argument("--product", default=None, help="only this product id")
    parser.add_argument("--limit", type=int, default=100,
                        help="at most this many rows (default 100; 0 = all)")
    parser.add_argument("--oldest-first", action="store_true",
                        help="oldest first (default: the newest LIMIT rows, printed oldest first)")
    parser.add_argument("--json", action="store_true", help="one JSON object per line instead of a table")


def _state_dir(args: argparse.Namespace) -> tuple[Path | None, JournalConfig | None, str | None]:
    if args.state_dir is not None:
        return args.state_dir, JournalConfig(state_dir=args.state_dir, **_NO_RETENTION), None
    path = args.config or DEFAULT_CONFIG_PATH
    try:
        settings = load_settings(path)
    except ConfigError as exc:
        problem = f"linewatch history: invalid configuration {path} (or give --state-dir)"
        return None, None, format_problems(exc) + "\n" + problem
    config = settings.journal.model_copy(update=_NO_RETENTION)
    return config.state_dir, config, None


def _utc(ns: int) -> str:
    when = dt.datetime.fromtimestamp(ns / 1e9, dt.UTC)
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _json_line(record: JournalRecord) -> str:
    data = record.result.model_dump(mode="json", by_alias=True)
    data.update(
        record_id=record.record_id,
        journaled_unix_ns=record.journaled_unix_ns,
        published_unix_ns=record.published_unix_ns,
        image=None if record.image_path is None else str(record.image_path),
        feedback_label=record.feedback_label,
        feedback_kind=None if record.feedback_label is None
        else feedback_kind(record.result.verdict, record.feedback_label),
        feedback_note=record.feedback_note,
    )
    return json.dumps(data)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def format_table(records: list[JournalRecord]) -> str:
    header = ("time (UTC)", "seq", "frame", "product", "bundle", "verdict", "score", "threshold", "x,y",
              "published", "feedback")  # fmt: skip
    rows = [header]
    for rec in records:
        r = rec.result
        feedback = "-" if rec.feedback_label is None else feedback_kind(r.verdict, rec.feedback_label)
        rows.append((
            _utc(r.acquired_unix_ns), str(r.seq), str(r.frame_id), r.product or "-",
            (r.bundle or "-").split("@")[-1], r.verdict + (f" ({r.reason})" if r.reason else ""),
            _fmt(r.score), _fmt(r.threshold), "-" if r.location is None else f"{r.location.x},{r.location.y}",
            "yes" if rec.published_unix_ns is not None else "no", feedback,
        ))  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
                     for row in rows)  # fmt: skip


def run(args: argparse.Namespace) -> int:
    state_dir, config, problem = _state_dir(args)
    if problem is not None or state_dir is None or config is None:
        print(problem, file=sys.stderr)
        return 2
    if args.limit < 0:
        print("linewatch history: --limit must be >= 0", file=sys.stderr)
        return 2
    try:
        since = None if args.since is None else parse_time(args.since)
        until = None if args.until is None else parse_time(args.until)
    except ValueError as exc:
        print(f"linewatch history: {exc}", file=sys.stderr)
        return 2
    if not (state_dir / JOURNAL_FILE).is_file():
        print(f"linewatch history: no journal at {state_dir / JOURNAL_FILE}", file=sys.stderr)
        return 1
    try:
        journal = Journal(config)
    except LinewatchError as exc:
        print(f"linewatch history: {exc}", file=sys.stderr)
        return 1
    try:
        records = journal.query(
            since_ns=since, until_ns=until, verdict=args.verdict, product=args.product,
            limit=args.limit or None, newest_first=not args.oldest_first,
        )
    except LinewatchError as exc:
        print(f"linewatch history: {exc}", file=sys.stderr)
        return 1
    finally:
        journal.close()
    if not args.oldest_first:
        records.reverse()
    if args.json:
        for record in records:
            print(_json_line(record))
    else:
        print(format_table(records))
        print(f"{len(records)} decision(s)", file=sys.stderr)
    return 0

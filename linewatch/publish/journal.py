"""The decision journal: every result in a local SQLite database, written before it is published.

It is both the MQTT outbox (rows whose ``published_unix_ns`` is NULL are re-sent, in order, after a broker
outage or a daemon restart) and the audit trail (``linewatch history`` reads it via ``Journal.query``).
Reject images (and sampled passes) are kept in a bounded store under ``<state_dir>/images`` and referenced
from their rows.

Writes go through one writer thread (``linewatch-journal``) that owns the only writing connection: a
commit every ``batch_ms`` or ``batch_rows`` rows, WAL mode, ``synchronous=NORMAL`` (a power cut may lose the
last batch, never corrupt the file). Reads open their own connections and never wait for the writer.

Retention: published rows older than ``retention_days`` are deleted; beyond ``max_rows`` the oldest
published rows go first, and only if that is not enough the oldest unpublished ones (counted in
``stats()["lost_unpublished"]`` and logged) — the outbox is bounded on disk too, by size, never by age.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeoutError
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field

from linewatch.cpu_priority import lower_current_thread_priority
from linewatch.errors import PublishError
from linewatch.frames import VerdictKind
from linewatch.png import encode_png
from linewatch.publish.payloads import Location, ResultPayload

log = logging.getLogger(__name__)

JOURNAL_FILE = "journal.sqlite3"
IMAGES_DIR = "images"
_SCHEMA_VERSION = 1

_DDL = """
CREATE TABLE IF NOT EXISTS results (
    id INTEGER PRIMARY KEY,
    seq INTEGER NOT NULL,
    frame_id INTEGER NOT NULL,
    timestamp_ns INTEGER NOT NULL,
    acquired_ns INTEGER NOT NULL,
    acquired_unix_ns INTEGER NOT NULL,
    journaled_unix_ns INTEGER NOT NULL,
    product TEXT,
    bundle TEXT,
    verdict TEXT NOT NULL,
    score REAL,
    threshold REAL,
    loc_x INTEGER,
    loc_y INTEGER,
    latencies_json TEXT NOT NULL,
    reason TEXT,
    published_unix_ns INTEGER,
    image_path TEXT,
    feedback_label TEXT,
    feedback_note TEXT
);
CREATE INDEX IF NOT EXISTS results_time ON results(acquired_unix_ns);
CREATE INDEX IF NOT EXISTS results_verdict_time ON results(verdict, acquired_unix_ns);
CREATE INDEX IF NOT EXISTS results_product_time ON results(product, acquired_unix_ns);
CREATE INDEX IF NOT EXISTS results_seq ON results(seq);
CREATE INDEX IF NOT EXISTS results_unpublished ON results(id) WHERE published_unix_ns IS NULL;
"""

_COLUMNS = (
    "id, seq, frame_id, timestamp_ns, acquired_ns, acquired_unix_ns, journaled_unix_ns, product, bundle, "
    "verdict, score, threshold, loc_x, loc_y, latencies_json, reason, published_unix_ns, image_path, "
    "feedback_label, feedback_note"
)
_INSERT = (
    "INSERT INTO results (id, seq, frame_id, timestamp_ns, acquired_ns, acquired_unix_ns, journaled_unix_ns, "
    "product, bundle, verdict, score, threshold, loc_x, loc_y, latencies_json, reason) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


class JournalConfig(BaseModel):
    """The ``[journal]`` section; files live in ``state_dir``."""

    model_config = ConfigDict(extra="forbid")

    state_dir: Path = Field(description="directory of journal.sqlite3 and images/ (created if missing)")
    retention_days: float = Field(
        default=90.0, gt=0, description="published rows older than this are deleted"
    )
    max_rows: int = Field(
        default=5_000_000,
        ge=10,
        description="size bound: beyond it the oldest rows are deleted (published first); ~300 B per row",
    )
    batch_ms: int = Field(default=50, ge=1, le=5000, description="the writer commits at least this often")
    batch_rows: int = Field(default=500, ge=1, description="... or after this many rows, whichever is first")
    images_max_mb: float = Field(
        default=1024.0, ge=0, description="size cap of the image store, oldest deleted first (0 = no images)"
    )
    images_every_nth_pass: int = Field(
        default=0, ge=0, description="also keep the image of every Nth pass (0 = rejects only)"
    )
    retention_interval_s: float = Field(default=600.0, gt=0, description="how often retention runs")


@dataclass(frozen=True, slots=True)
class JournalRecord:
    """One row of the journal."""

    record_id: int  # the journal's own order (seq may restart if the pipeline is not told last_seq)
    result: ResultPayload
    journaled_unix_ns: int
    published_unix_ns: int | None
    image_path: Path | None
    feedback_label: str | None
    feedback_note: str | None


# A unit of work for the writer thread: runs inside the batch's transaction; its future gets the result
# after the commit.
@dataclass(slots=True)
class _Op:
    run: Callable[[sqlite3.Connection], Any]
    rows: int = 0  # inserts it carries (for batch_rows)
    done: Future[Any] | None = None
    urgent: bool = False  # commit right after it (flush, feedback, close)


_STOP = _Op(run=lambda conn: None, urgent=True)


def _record(row: tuple[Any, ...]) -> JournalRecord:
    (rid, seq, frame_id, ts, acq, acq_unix, jour, product, bundle, verdict, score, thr, x, y, lat, reason,
     pub, img, fb_label, fb_note) = row  # fmt: skip
    result = ResultPayload(
        seq=seq,
        frame_id=frame_id,
        timestamp_ns=ts,
        acquired_ns=acq,
        acquired_unix_ns=acq_unix,
        product=product,
        bundle=bundle,
        verdict=verdict,
        score=score,
        threshold=thr,
        location=None if x is None or y is None else Location(x=x, y=y),
        latencies_ms=json.loads(lat),
        reason=reason,
    )
    return JournalRecord(
        record_id=rid,
        result=result,
        journaled_unix_ns=jour,
        published_unix_ns=pub,
        image_path=None if img is None else Path(img),
        feedback_label=fb_label,
        feedback_note=fb_note,
    )


class Journal:
    """SQLite results journal = outbox + audit trail. Thread-safe; ``close()`` when done."""

    def __init__(self, config: JournalConfig) -> None:
        self.config = config
        self._dir = config.state_dir
        self._images_dir = self._dir / IMAGES_DIR
        try:
            self._images_dir.mkdir(parents=True, exist_ok=True)
            conn = self._connect()
            conn.executescript(_DDL)
            conn.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")
            row = conn.execute("SELECT id, seq FROM results ORDER BY id DESC LIMIT 1").fetchone()
        except (OSError, sqlite3.Error) as exc:
            raise PublishError(f"cannot open the journal {self._dir / JOURNAL_FILE}: {exc}") from exc
        self._conn = conn
        self._lock = threading.Lock()
        self._next_id = 1 if row is None else int(row[0]) + 1
        self._last_seq: int | None = None if row is None else int(row[1])
        self._queue: queue.SimpleQueue[_Op] = queue.SimpleQueue()
        self._pass_count = 0
        self._images: OrderedDict[Path, int] = OrderedDict()
        self._images_bytes = 0
        self._scan_images()
        self._counters = {
            "appended": 0,
            "committed": 0,
            "write_errors": 0,
            "deleted": 0,
            "lost_unpublished": 0,
            "images_stored": 0,
            "images_deleted": 0,
        }
        self._closed = False
        self._thread = threading.Thread(target=self._writer, name="linewatch-journal", daemon=True)
        self._thread.start()

    # ---- setup -------------------------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self._dir / JOURNAL_FILE, timeout=10.0, isolation_level=None,
                               check_same_thread=False)  # fmt: skip
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA busy_timeout = 10000")
        return conn

    def _read(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(self._dir / JOURNAL_FILE, timeout=10.0, isolation_level=None)
            conn.execute("PRAGMA busy_timeout = 10000")
            return conn
        except sqlite3.Error as exc:
            raise PublishError(f"cannot read the journal {self.path}: {exc}") from exc

    def _scan_images(self) -> None:
        files = sorted(self._images_dir.glob("*.png"), key=lambda p: p.stat().st_mtime_ns)
        for path in files:
            size = path.stat().st_size
            self._images[path] = size
            self._images_bytes += size

    @property
    def path(self) -> Path:
        """The SQLite file."""
        return self._dir / JOURNAL_FILE

    @property
    def images_dir(self) -> Path:
        return self._images_dir

    # ---- writer thread -----------------------------------------------------------------------------------

    def _writer(self) -> None:
        lower_current_thread_priority()  # batched commits absorb a delay; inference must not wait for them
        batch_s = self.config.batch_ms / 1000.0
        next_retention = time.monotonic()
        pending: list[_Op] = []  # kept across a failed commit and retried
        stop = False
        while not stop:
            if not pending:
                with contextlib.suppress(queue.Empty):
                    pending.append(self._queue.get(timeout=max(0.0, next_retention - time.monotonic())))
            deadline = time.monotonic() + batch_s
            rows = sum(op.rows for op in pending)
            while pending and not pending[-1].urgent and rows < self.config.batch_rows:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    op = self._queue.get(timeout=remaining)
                except queue.Empty:
                    break
                pending.append(op)
                rows += op.rows
            stop = any(op is _STOP for op in pending)
            if time.monotonic() >= next_retention:
                next_retention = time.monotonic() + self.config.retention_interval_s
                pending.append(_Op(run=self._retention))
            if self._commit(pending):
                pending = []
            elif not stop:
                time.sleep(1.0)  # disk trouble: keep the batch, retry shortly
        if pending:
            log.error("journal closed with %d operations it could not commit", len(pending))
        self._conn.close()

    def _commit(self, ops: list[_Op]) -> bool:
        results: list[Any] = []
        try:
            self._conn.execute("BEGIN IMMEDIATE")
            for op in ops:
                results.append(op.run(self._conn))
            self._conn.execute("COMMIT")
        except sqlite3.Error as exc:
            self._counters["write_errors"] += 1
            if self._counters["write_errors"] in (1, 10, 100) or self._counters["write_errors"] % 1000 == 0:
                log.error("journal commit failed (%d times so far), retrying: %s",
                          self._counters["write_errors"], exc)  # fmt: skip
            with contextlib.suppress(sqlite3.Error):
                self._conn.execute("ROLLBACK")
            for op in ops:
                if op.done is not None and op.urgent and not op.done.done():
                    op.done.set_exception(PublishError(f"journal commit failed: {exc}"))
            # Ops whose future already failed are not retried; the rows stay.
            ops[:] = [op for op in ops if op.done is None or not op.done.done()]
            return False
        self._counters["committed"] += sum(op.rows for op in ops)
        for op, res in zip(ops, results, strict=True):
            if op.done is not None and not op.done.done():
                op.done.set_result(res)
        return True

    def _submit(self, op: _Op) -> None:
        if self._closed:
            raise PublishError("the journal is closed")
        self._queue.put(op)

    def _wait(self, op: _Op, timeout_s: float) -> Any:
        assert op.done is not None
        self._submit(op)
        try:
            return op.done.result(timeout=timeout_s)
        except FutureTimeoutError as exc:
            raise PublishError(f"the journal writer did not commit within {timeout_s:.1f} s") from exc

    # ---- writes ------------------------------------------------------------------------------------------

    def append(self, result: ResultPayload) -> int:
        """Queue a result for the next batch commit; returns its record id (assigned at once, in order)."""
        loc = result.location
        now = time.time_ns()
        with self._lock:
            rid = self._next_id
            self._next_id += 1
            self._last_seq = result.seq
            self._counters["appended"] += 1
            params = (
                rid, result.seq, result.frame_id, result.timestamp_ns, result.acquired_ns,
                result.acquired_unix_ns, now, result.product, result.bundle, result.verdict, result.score,
                result.threshold, None if loc is None else loc.x, None if loc is None else loc.y,
                json.dumps(result.latencies_ms), result.reason,
            )  # fmt: skip
            self._submit(_Op(run=lambda conn: conn.execute(_INSERT, params), rows=1))
        return rid

    def mark_published(self, record_ids: list[int], published_unix_ns: int | None = None) -> None:
        """Queue 'acknowledged by the broker' for these records (committed with the next batch)."""
        if not record_ids:
            return
        ns = time.time_ns() if published_unix_ns is None else published_unix_ns
        params = [(ns, rid) for rid in record_ids]
        self._submit(
            _Op(
                run=lambda conn: conn.executemany(
                    "UPDATE results SET published_unix_ns = ? WHERE id = ? AND published_unix_ns IS NULL",
                    params,
                )
            )
        )

    def flush(self, timeout_s: float = 10.0) -> None:
        """Block until everything queued before this call is committed (PublishError on timeout/failure)."""
        self._wait(_Op(run=lambda conn: None, done=Future(), urgent=True), timeout_s)

    def close(self) -> None:
        """Commit everything queued and stop the writer thread."""
        if self._closed:
            return
        self._queue.put(_STOP)
        self._closed = True
        self._thread.join(timeout=30.0)
        if self._thread.is_alive():
            log.error("journal writer did not stop within 30 s; unpublished rows are re-sent after restart")

    def set_feedback(self, seq: int, label: str, note: str = "") -> bool:
        """Record an operator's label on the newest record with this seq; False when there is none."""

        def run(conn: sqlite3.Connection) -> bool:
            cur = conn.execute(
                "UPDATE results SET feedback_label = ?, feedback_note = ? "
                "WHERE id = (SELECT max(id) FROM results WHERE seq = ?)",
                (label, note, seq),
            )
            return cur.rowcount > 0

        return bool(self._wait(_Op(run=run, done=Future(), urgent=True), 10.0))

    def apply_retention(self, now_unix_ns: int | None = None) -> int:
        """Delete rows beyond the age and size bounds now (also runs every ``retention_interval_s``);
        returns the number of rows deleted."""
        return int(
            self._wait(
                _Op(run=lambda conn: self._retention(conn, now_unix_ns), done=Future(), urgent=True), 60.0
            )
        )

    def _retention(self, conn: sqlite3.Connection, now_unix_ns: int | None = None) -> int:
        now = time.time_ns() if now_unix_ns is None else now_unix_ns
        cutoff = now - int(self.config.retention_days * 86400 * 1e9)
        gone = conn.execute(
            "DELETE FROM results WHERE acquired_unix_ns < ? AND published_unix_ns IS NOT NULL "
            "RETURNING image_path",
            (cutoff,),
        ).fetchall()
        count = int(conn.execute("SELECT count(*) FROM results").fetchone()[0])
        excess = count - self.config.max_rows
        lost = 0
        if excess > 0:
            gone += conn.execute(
                "DELETE FROM results WHERE id IN (SELECT id FROM results WHERE published_unix_ns IS NOT NULL "
                "ORDER BY id LIMIT ?) RETURNING image_path",
                (excess,),
            ).fetchall()
            excess = count - len(gone) - self.config.max_rows
            # still too many: the broker has been away for max_rows results; the disk bound wins.
            if excess > 0:
                lost_rows = conn.execute(
                    "DELETE FROM results WHERE id IN (SELECT id FROM results ORDER BY id LIMIT ?) "
                    "RETURNING image_path",
                    (excess,),
                ).fetchall()
                lost = len(lost_rows)
                gone += lost_rows
        for (image,) in gone:
            if image is not None:
                self._forget_image(Path(image))
        if lost:
            self._counters["lost_unpublished"] += lost
            log.warning("journal over max_rows=%d: deleted %d unpublished results (oldest first)",
                        self.config.max_rows, lost)  # fmt: skip
        self._counters["deleted"] += len(gone)
        return len(gone)

    # ---- images ------------------------------------------------------------------------------------------

    def image_wanted(self, verdict: VerdictKind) -> bool:
        """True for every reject and every ``images_every_nth_pass``-th pass (counts passes as it asks)."""
        if self.config.images_max_mb <= 0:
            return False
        if verdict is not VerdictKind.PASS:
            return True
        n = self.config.images_every_nth_pass
        if n == 0:
            return False
        with self._lock:
            self._pass_count += 1
            return self._pass_count % n == 0

    def store_image(self, seq: int, image: npt.NDArray[np.uint8] | npt.NDArray[np.uint16]) -> Path | None:
        """Write the frame as PNG under ``<state_dir>/images``, reference it from the newest record with
        this seq (call after the result was appended) and delete the oldest images beyond
        ``images_max_mb``. Returns the file's path, None when the store is disabled (``images_max_mb=0``).
        """
        if self.config.images_max_mb <= 0:
            return None
        try:
            encoded = encode_png(image)
        except ValueError as exc:
            raise PublishError(f"cannot store the image of seq {seq}: {exc}") from exc
        path = self._images_dir / f"{seq:012d}-{time.time_ns()}.png"
        try:
            path.write_bytes(encoded)
        except OSError as exc:
            raise PublishError(f"cannot write {path}: {exc}") from exc
        cap = int(self.config.images_max_mb * 1024 * 1024)
        evicted: list[Path] = []
        with self._lock:
            self._images[path] = len(encoded)
            self._images_bytes += len(encoded)
            self._counters["images_stored"] += 1
            while self._images_bytes > cap and len(self._images) > 1:
                old, size = self._images.popitem(last=False)
                self._images_bytes -= size
                evicted.append(old)
        for old in evicted:
            old.unlink(missing_ok=True)
        self._counters["images_deleted"] += len(evicted)
        ref = str(path)
        gone = [(str(p),) for p in evicted]

        def run(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE results SET image_path = ? WHERE id = (SELECT max(id) FROM results WHERE seq = ?)",
                (ref, seq),
            )
            if gone:
                conn.executemany("UPDATE results SET image_path = NULL WHERE image_path = ?", gone)

        self._submit(_Op(run=run))
        return path

    def _forget_image(self, path: Path) -> None:
        with self._lock:
            size = self._images.pop(path, None)
            if size is not None:
                self._images_bytes -= size
        path.unlink(missing_ok=True)
        self._counters["images_deleted"] += 1

    # ---- reads -------------------------------------------------------------------------------------------

    def last_seq(self) -> int | None:
        """The seq of the newest record (committed or queued), None for an empty journal.

        The pipeline continues numbering at ``last_seq() + 1`` after a restart."""
        with self._lock:
            return self._last_seq

    def unpublished(self, after_record_id: int = 0, limit: int = 500) -> list[JournalRecord]:
        """Committed, not-yet-published records with ``record_id > after_record_id``, oldest first."""
        return self._select(
            "WHERE published_unix_ns IS NULL AND id > ? ORDER BY id LIMIT ?", (after_record_id, limit)
        )

    def last_record_id(self) -> int:
        """The record id of the newest record (committed or queued), 0 for an empty journal."""
        with self._lock:
            return self._next_id - 1

    def unpublished_count(self) -> int:
        conn = self._read()
        try:
            return int(
                conn.execute("SELECT count(*) FROM results WHERE published_unix_ns IS NULL").fetchone()[0]
            )
        except sqlite3.Error as exc:
            raise PublishError(f"cannot read the journal {self.path}: {exc}") from exc
        finally:
            conn.close()

    def query(
        self,
        since_ns: int | None = None,
        until_ns: int | None = None,
        verdict: VerdictKind | str | None = None,
        product: str | None = None,
        limit: int | None = 1000,
        newest_first: bool = False,
    ) -> list[JournalRecord]:
        """Records acquired in ``[since_ns, until_ns)`` (wall clock, Unix ns), optionally only one verdict
        and/or product; oldest first unless ``newest_first``. Sees committed rows (call ``flush`` first
        for the last few milliseconds)."""
        where: list[str] = []
        params: list[Any] = []
        if since_ns is not None:
            where.append("acquired_unix_ns >= ?")
            params.append(since_ns)
        if until_ns is not None:
            where.append("acquired_unix_ns < ?")
            params.append(until_ns)
        if verdict is not None:
            value = verdict.value if isinstance(verdict, VerdictKind) else VerdictKind(verdict).value
            where.append("verdict = ?")
            params.append(value)
        if product is not None:
            where.append("product = ?")
            params.append(product)
        sql = ("WHERE " + " AND ".join(where) + " " if where else "") + (
            "ORDER BY id DESC" if newest_first else "ORDER BY id"
        )
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        return self._select(sql, tuple(params))

    def get(self, seq: int) -> JournalRecord | None:
        """The newest committed record with this seq."""
        rows = self._select("WHERE seq = ? ORDER BY id DESC LIMIT 1", (seq,))
        return rows[0] if rows else None

    def _select(self, tail: str, params: tuple[Any, ...]) -> list[JournalRecord]:
        conn = self._read()
        try:
            rows = conn.execute(f"SELECT {_COLUMNS} FROM results {tail}", params).fetchall()
        except sqlite3.Error as exc:
            raise PublishError(f"cannot read the journal {self.path}: {exc}") from exc
        finally:
            conn.close()
        return [_record(row) for row in rows]

    def stats(self) -> dict[str, int]:
        """Counters of this run: appended, committed, write_errors, deleted, lost_unpublished, images_*,
        queued (waiting for the writer)."""
        out = dict(self._counters)
        out["queued"] = self._counters["appended"] - self._counters["committed"]
        return out

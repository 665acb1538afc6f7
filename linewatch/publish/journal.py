"""The decision journal: every result in a local SQLite database, written before it is published.

It is both the MQTT outbox (rows whose ``published_unix_ns`` is NULL are re-sent, in order, after a broker
outage or a daemon restart) and the audit trail (``linewatch history`` reads it via ``Journal.query``).
Reject images (and sampled passes) are kept in a bounded store under ``<state_dir>/images`` and referenced
from their rows.

Writes are batched on one writer thread (``linewatch-journal``): a commit every ``batch_ms`` or
``batch_rows`` rows, WAL mode, ``synchronous=NORMAL`` (a power cut may lose the last batch, never corrupt
the file). Reads use their own connections and never wait for the writer.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field

from linewatch.frames import VerdictKind
from linewatch.publish.payloads import ResultPayload


class JournalConfig(BaseModel):
    """The ``[journal]`` section; files live in ``state_dir``."""

    model_config = ConfigDict(extra="forbid")

    state_dir: Path = Field(description="directory of journal.sqlite3 and images/ (created if missing)")
    retention_days: float = Field(
        default=90.0, gt=0, description="published rows older than this are deleted"
    )
    max_rows: int = Field(
        default=5_000_000,
        ge=1000,
        description="size bound: beyond it the oldest rows are deleted (published first); ~300 B per row",
    )
    batch_ms: int = Field(default=50, ge=1, le=5000, description="the writer commits at least this often")
    batch_rows: int = Field(
        default=500, ge=1, description="... or after this many rows, whichever comes first"
    )
    images_max_mb: float = Field(
        default=1024.0, ge=0, description="size cap of the image store (oldest deleted)"
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


class Journal:
    """SQLite results journal = outbox + audit trail. Thread-safe."""

    def __init__(self, config: JournalConfig) -> None:
        raise NotImplementedError

    @property
    def path(self) -> Path:
        """The SQLite file."""
        raise NotImplementedError

    def close(self) -> None:
        """Commit everything queued and stop the writer thread."""
        raise NotImplementedError

    def append(self, result: ResultPayload) -> int:
        """Queue a result for the next batch commit; returns its record id (assigned at once)."""
        raise NotImplementedError

    def mark_published(self, record_ids: list[int], published_unix_ns: int | None = None) -> None:
        """Queue 'acknowledged by the broker' for these records."""
        raise NotImplementedError

    def flush(self, timeout_s: float = 10.0) -> None:
        """Block until everything queued before this call is committed (PublishError on timeout/failure)."""
        raise NotImplementedError

    def last_seq(self) -> int | None:
        """The seq of the newest record (committed or queued), None for an empty journal.

        The pipeline continues numbering at ``last_seq() + 1`` after a restart."""
        raise NotImplementedError

    def unpublished(self, after_record_id: int = 0, limit: int = 500) -> list[JournalRecord]:
        """Committed, not-yet-published records with ``record_id > after_record_id``, oldest first."""
        raise NotImplementedError

    def unpublished_count(self) -> int:
        raise NotImplementedError

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
        raise NotImplementedError

    def get(self, seq: int) -> JournalRecord | None:
        """The newest committed record with this seq."""
        raise NotImplementedError

    def image_wanted(self, verdict: VerdictKind) -> bool:
        """True for every reject and every ``images_every_nth_pass``-th pass."""
        raise NotImplementedError

    def store_image(self, seq: int, image: npt.NDArray[np.uint8] | npt.NDArray[np.uint16]) -> Path:
        """Write the frame as PNG under ``<state_dir>/images``, reference it from the seq's record and
        delete the oldest images beyond ``images_max_mb``. Returns the file's path."""
        raise NotImplementedError

    def set_feedback(self, seq: int, label: str, note: str = "") -> bool:
        """Record an operator's label on the seq's record; False when no such record exists."""
        raise NotImplementedError

    def apply_retention(self, now_unix_ns: int | None = None) -> int:
        """Delete rows beyond the age and size bounds now (also runs periodically); returns rows deleted."""
        raise NotImplementedError

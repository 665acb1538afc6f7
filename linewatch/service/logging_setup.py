"""Logging for the daemon: journald-friendly lines, and one summary line per interval instead of per frame.

Under systemd (``JOURNAL_STREAM`` set) the journal adds time stamps and the unit name itself, so lines carry
only the level and the logger; elsewhere they start with a time stamp. Every line is prefixed with a
syslog priority (``<N>``) under journald so ``journalctl -p warning`` works.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import TextIO

from linewatch.pipeline.pipeline import PipelineSnapshot, rates

# syslog priorities for the journal's "<N>" prefix (sd-daemon(3)).
_PRIORITY = {
    logging.DEBUG: 7,
    logging.INFO: 6,
    logging.WARNING: 4,
    logging.ERROR: 3,
    logging.CRITICAL: 2,
}


class JournalFormatter(logging.Formatter):
    """``<priority>level logger: message`` — the journal records the time."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        priority = _PRIORITY.get(record.levelno, 6)
        return "\n".join(f"<{priority}>{line}" for line in text.splitlines() or [""])


def under_journald(environ: dict[str, str] | None = None) -> bool:
    env = os.environ if environ is None else environ
    return bool(env.get("JOURNAL_STREAM"))


def setup_logging(
    level: str = "INFO", stream: TextIO | None = None, environ: dict[str, str] | None = None
) -> logging.Handler:
    """Install one handler on the root logger (replacing earlier ones) and return it."""
    handler = logging.StreamHandler(stream or sys.stderr)
    if under_journald(environ):
        handler.setFormatter(JournalFormatter("%(levelname)s %(name)s: %(message)s"))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    return handler


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def summary_line(snap: PipelineSnapshot, previous: PipelineSnapshot | None) -> str:
    """One line for the log (and systemd's STATUS=): rates since ``previous``, counts since start."""
    fps_in, fps_out, _ = rates(snap, previous)
    total = snap.latency.get("total")
    inference = snap.latency.get("inference")
    parts = [
        f"fps in {fps_in:.1f} out {fps_out:.1f}",
        f"pass {snap.passed} fail {snap.failed} not_inspected {snap.not_inspected}",
        f"dropped {snap.dropped}",
        f"latency p50 {_ms(total.p50_ms if total else None)} ms p99 {_ms(total.p99_ms if total else None)} ms"
        f" (inference p50 {_ms(inference.p50_ms if inference else None)} ms)",
        f"queue {snap.queue_depth}/{snap.queue_size}",
        f"camera {snap.camera_state}",
    ]
    acq = snap.acquisition
    if acq.timeouts or acq.camera_gaps or acq.unreadable or acq.reconnects:
        parts.append(
            f"timeouts {acq.timeouts} gaps {acq.camera_gaps} unreadable {acq.unreadable} "
            f"reconnects {acq.reconnects}"
        )
    if snap.inference_failures:
        parts.append(f"inference failures {snap.inference_failures}")
    if snap.exposure_rejects:
        parts.append(f"exposure out of range {snap.exposure_rejects}")
    return " | ".join(parts)

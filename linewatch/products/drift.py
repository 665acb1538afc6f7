"""Score drift: do good parts creep toward the threshold?

The monitor keeps the scores of the last ``window`` passes of the active bundle and compares a quantile of
them with the bundle's calibration record (``Calibration.good_scores``: the same quantile of the good
calibration images' scores; with the fit's cross-fitted calibration those come from prototypes without
the scored image, so they sit a little above what new good parts score against the bundle's prototype of all
images, and the monitor starts with slightly more headroom than it reports). At calibration, good parts had
*headroom* ``threshold - q_cal`` below the threshold; when the rolling quantile has used up more than
``max_headroom_used`` of it,

    q_now >= q_cal + max_headroom_used * (threshold - q_cal)

the station's ``status`` turns ``degraded`` with the figures in the reason (the parts, the light or the lens
changed; a refit or a look at the camera is due before false rejects climb), and ``stats`` carries them
(``StatsPayload.drift``). Only passes count: fails are what the threshold is for.

Without a calibration quantile (a bundle written with a fixed threshold) the reference is the quantile of
the first ``min_samples`` passes after activation. When the calibration's quantile already lies at or above
the threshold there is no headroom to measure; then only ``q_now >= threshold`` counts as degraded. A
product switch starts a new window (scores of another bundle say nothing about this one).

Threads: ``observe`` runs on the publishing thread (through ``DriftSink``), ``assess`` on the daemon's main
thread; a lock guards the window. Observing is an append; the percentiles are computed when assessed.
"""

from __future__ import annotations

import logging
import math
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from linewatch.bundle.manifest import BundleManifest
from linewatch.frames import Verdict, VerdictKind
from linewatch.pipeline.stages import ResultSink
from linewatch.publish.payloads import DriftStats

log = logging.getLogger(__name__)

_QUANTILES = {"p50": 50.0, "p95": 95.0, "p99": 99.0}


class DriftConfig(BaseModel):
    """``[products.drift]``: when good-part scores creeping toward the threshold make the status degraded."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = Field(default=True, description="Watch the scores of passing parts for drift")
    window: int = Field(default=500, ge=10, le=1_000_000, description="Recent passing scores kept")
    min_samples: int = Field(
        default=100, ge=1, description="Passes needed (after each product switch) before drift is judged"
    )
    quantile: Literal["p50", "p95", "p99"] = Field(
        default="p95",
        description="Quantile of the passing scores compared with the same quantile of the calibration",
    )
    max_headroom_used: float = Field(
        default=0.5,
        gt=0.0,
        le=1.0,
        description="Degraded when the quantile has used more than this fraction of the headroom between "
        "its calibration value and the threshold (1.0: only when good parts reach the threshold)",
    )


@dataclass(frozen=True, slots=True)
class DriftAssessment:
    degraded: bool
    reason: str | None  # why degraded (None when fine)
    stats: DriftStats | None  # the figures for ``stats``; None before any pass of the active bundle


def _percentile(values: np.ndarray, q: float) -> float:
    return float(np.percentile(values, q))


class DriftMonitor:
    """Rolling passing-score distribution of the active bundle vs its calibration record."""

    def __init__(
        self, config: DriftConfig, manifest_for: Callable[[str], BundleManifest | None]
    ) -> None:
        """``manifest_for(bundle_id)`` gives the manifest of the bundle that produced a verdict (the active
        one), or None when it is not known (verdicts of that bundle are then not counted)."""
        self.config = config
        self._manifest_for = manifest_for
        self._lock = threading.Lock()
        self._scores: deque[float] = deque(maxlen=config.window)
        self._bundle_id: str | None = None
        self._manifest: BundleManifest | None = None
        self._baseline: float | None = None  # reference quantile when the calibration has none
        self.observed = 0

    def observe(self, verdict: Verdict) -> None:
        """Count a verdict (publishing thread). Only passes with a finite score of a known bundle count."""
        if not self.config.enabled or verdict.verdict is not VerdictKind.PASS:
            return
        score, bundle_id = verdict.score, verdict.bundle_id
        if score is None or bundle_id is None or not math.isfinite(score):
            return
        with self._lock:
            if bundle_id != self._bundle_id:
                manifest = self._manifest_for(bundle_id)
                if manifest is None:
                    return
                self._bundle_id, self._manifest = bundle_id, manifest
                self._scores.clear()
                self._baseline = None
            self._scores.append(score)
            self.observed += 1
            if (self._baseline is None and self._calibration_q() is None
                    and len(self._scores) == self.config.min_samples):
                self._baseline = _percentile(np.asarray(self._scores), _QUANTILES[self.config.quantile])

    def _calibration_q(self) -> float | None:
        if self._manifest is None:
            return None
        value = self._manifest.calibration.good_scores.get(self.config.quantile)
        return None if value is None or not math.isfinite(value) else float(value)

    def assess(self) -> DriftAssessment:
        """Judge the window now (main thread)."""
        with self._lock:
            manifest = self._manifest
            scores = np.asarray(self._scores, dtype=np.float64)
            cal_q = self._calibration_q()
            baseline = self._baseline
        if manifest is None or scores.size == 0:
            return DriftAssessment(False, None, None)
        threshold = manifest.threshold
        p50, p95 = _percentile(scores, 50.0), _percentile(scores, 95.0)
        q_now = _percentile(scores, _QUANTILES[self.config.quantile])
        cal_p95 = manifest.calibration.good_scores.get("p95")
        stats = DriftStats(
            window=int(scores.size),
            good_score_p50=p50,
            good_score_p95=p95,
            calibration_good_p95=cal_p95 if cal_p95 is not None and math.isfinite(cal_p95) else None,
            threshold=threshold if math.isfinite(threshold) else None,
            margin_ratio=p95 / threshold if threshold > 0 and math.isfinite(threshold) else None,
        )
        if scores.size < self.config.min_samples:
            return DriftAssessment(False, None, stats)
        q = self.config.quantile
        reference, source = (cal_q, "calibration") if cal_q is not None else (baseline, "first passes")
        if reference is None:
            return DriftAssessment(False, None, stats)
        headroom = threshold - reference
        # The reason stays the same while the figures move (it is the retained status); stats carry them.
        if headroom <= 0:
            if q_now >= threshold:
                return DriftAssessment(True, (
                    f"score drift: the {q} of good-part scores reached the threshold {threshold:.4g} "
                    "(figures in stats.drift)"), stats)  # fmt: skip
            return DriftAssessment(False, None, stats)
        used = (q_now - reference) / headroom
        if used >= self.config.max_headroom_used:
            return DriftAssessment(True, (
                f"score drift: good parts creep toward the threshold {threshold:.4g}: their {q} used more "
                f"than {self.config.max_headroom_used:.0%} of its headroom at {source} ({reference:.4g}) "
                "(figures in stats.drift)"), stats)  # fmt: skip
        return DriftAssessment(False, None, stats)


class DriftSink:
    """A ResultSink in front of the real one (the MqttPublisher): every verdict is handed on first, then
    observed by the drift monitor. A monitor fault never touches the results."""

    def __init__(self, sink: ResultSink, monitor: DriftMonitor) -> None:
        self.sink = sink
        self.monitor = monitor
        self.monitor_errors = 0

    def heatmap_wanted(self, verdict: VerdictKind) -> bool:
        return self.sink.heatmap_wanted(verdict)

    def publish_result(self, verdict: Verdict) -> None:
        self.sink.publish_result(verdict)
        try:
            self.monitor.observe(verdict)
        except Exception as exc:
            self.monitor_errors += 1
            if self.monitor_errors == 1:
                log.error("drift monitor failed on seq %d: %s (further failures are counted)",
                          verdict.seq, exc)

    def publish_heatmap(self, seq: int, png: bytes) -> None:
        self.sink.publish_heatmap(seq, png)

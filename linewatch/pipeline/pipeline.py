"""The Pipeline: the four stages wired by their queues, started together and drained on stop."""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass, replace

from linewatch.acquisition.reconnect import Backoff
from linewatch.acquisition.source import FrameSource
from linewatch.bundle.registry import LoadedBundle
from linewatch.errors import LinewatchError
from linewatch.frames import Frame
from linewatch.pipeline.product import ActiveProduct, BackendFactory, ProductHolder
from linewatch.pipeline.queues import BoundedQueue, OverflowPolicy
from linewatch.pipeline.stages import (
    AcquisitionCounters,
    AcquisitionStage,
    ImageStore,
    InferenceStage,
    Inspected,
    LatencyWindow,
    Outcome,
    PublishingStage,
    ResultSink,
    ScoringStage,
    Stage,
    VerdictObserver,
    not_inspected,
)

log = logging.getLogger(__name__)

# Per-stage latency windows (ms): queue (camera → inference thread), inference (preprocessing + backend),
# scoring, publish (journal + hand-over to MQTT), total (camera → handed to the publisher).
LATENCY_NAMES = ("queue", "inference", "scoring", "publish", "total")
# Between inference and scoring, and in front of the publisher: small, blocking (nothing is dropped
# there); their sizes bound memory if a later stage stalls, and the watchdog sees the stall.
INSPECTED_QUEUE_SIZE = 16
RESULTS_QUEUE_SIZE = 1024
# The inference thread needs the GIL back after every backend call, while scoring, publishing, MQTT and
# the journal run Python on other threads; with CPython's default 5 ms switch interval it can wait up to
# 5 ms per frame for it. 0.5 ms: `linewatch bench` pipeline/backend 0.95 → 0.96 (two paired runs each).
GIL_SWITCH_INTERVAL_S = 0.0005


class PipelineStartError(LinewatchError):
    """A stage could not start (the camera or the first product); carries the underlying error."""


@dataclass(frozen=True, slots=True)
class LatencySummary:
    p50_ms: float | None
    p99_ms: float | None


@dataclass(frozen=True, slots=True)
class PipelineSnapshot:
    """Cumulative counters since start plus latency percentiles over the last ``window_s`` seconds."""

    taken_ns: int
    window_s: float
    frames_in: int  # seqs assigned (frames read + camera gaps + unreadable frames)
    frames_out: int  # verdicts handed to the sink
    passed: int
    failed: int
    not_inspected: int
    not_inspected_reasons: dict[str, int]
    verdicts: dict[str, dict[str, int]]  # product id ("" = none) → verdict → results
    dropped: int
    queue_depth: int
    queue_size: int
    acquisition: AcquisitionCounters
    inference_failures: int
    exposure_rejects: int  # frames not inspected for brightness / contrast outside the good range
    publish_errors: int
    latency: dict[str, LatencySummary]
    heartbeat_age_s: dict[str, float]
    camera_state: str
    camera_reason: str | None
    product_id: str | None
    bundle_id: str | None
    backend: str | None
    product_switches: int  # activations of a different product after the first one


class Pipeline:
    """acquisition → inference → scoring → publishing, one thread each.

    ``start()`` returns once the camera is open (or being reconnected) and the first product's backend is
    loaded and warmed up on the inference thread, or raises what prevented it. ``stop(drain_timeout_s)``
    stops acquiring and lets every frame already numbered reach the sink; frames still waiting for inference
    when the drain time is up are reported ``not_inspected`` instead of being lost. ``latency_horizon_s`` is
    the longest window ``snapshot`` will be asked for (None: the latency percentiles keep the last 20 000
    frames whatever their age).
    """

    def __init__(
        self,
        source: FrameSource,
        backend_factory: BackendFactory,
        sink: ResultSink,
        *,
        bundle: LoadedBundle | None,
        queue_size: int = 8,
        overflow: OverflowPolicy | str = OverflowPolicy.BLOCK,
        first_seq: int = 0,
        read_timeout_s: float = 1.0,
        backoff: Backoff | None = None,
        heatmaps: bool = True,
        heatmap_max_side: int = 512,
        image_store: ImageStore | None = None,
        observer: VerdictObserver | None = None,
        latency_horizon_s: float | None = None,
    ) -> None:
        self.source = source
        self.sink = sink
        self.first_seq = first_seq
        self.holder = ProductHolder(backend_factory)
        self.frames: BoundedQueue[Frame] = BoundedQueue(queue_size, overflow)
        self.inspected: BoundedQueue[Inspected] = BoundedQueue(INSPECTED_QUEUE_SIZE, OverflowPolicy.BLOCK)
        self.results: BoundedQueue[Outcome] = BoundedQueue(RESULTS_QUEUE_SIZE, OverflowPolicy.BLOCK)
        self.latency = {name: LatencyWindow(horizon_s=latency_horizon_s) for name in LATENCY_NAMES}
        self.acquisition = AcquisitionStage(
            source,
            self.frames,
            self.results,
            self.holder,
            first_seq=first_seq,
            read_timeout_s=read_timeout_s,
            backoff=backoff or Backoff(),
        )
        self.inference = InferenceStage(self.frames, self.inspected, self.holder, want_heatmap=heatmaps)
        self.scoring = ScoringStage(self.inspected, self.results, sink, heatmap_max_side=heatmap_max_side)
        self.publishing = PublishingStage(
            self.results, sink, first_seq=first_seq, latency=self.latency, image_store=image_store,
            observer=observer,
        )
        self.stages: tuple[Stage, ...] = (self.acquisition, self.inference, self.scoring, self.publishing)
        self._initial = self.holder.activate(bundle) if bundle is not None else None
        self._started = False
        self._stopped = False

    # -- lifecycle -------------------------------------------------------------------------------------

    def start(self, timeout_s: float = 120.0) -> None:
        """Start the stages downstream first, so the first frame finds everything running."""
        if self._started:
            raise RuntimeError("pipeline already started")
        self._started = True
        sys.setswitchinterval(min(sys.getswitchinterval(), GIL_SWITCH_INTERVAL_S))
        for stage in (self.publishing, self.scoring, self.inference):
            stage.start()
        try:
            self.inference.ready.result(timeout_s)
            if self._initial is not None:
                self._initial.result(timeout_s)
            self.acquisition.start()
            self.acquisition.ready.result(timeout_s)
        except Exception as exc:
            self.stop(drain_timeout_s=5.0)
            raise PipelineStartError(str(exc)) from exc

    def stop(self, drain_timeout_s: float = 10.0) -> bool:
        """Stop acquiring, drain every numbered frame to the sink, close the backend. True when every stage
        ended within the time (frames not inferred by ``drain_timeout_s`` are reported not_inspected)."""
        if self._stopped:
            return True
        self._stopped = True
        deadline = time.monotonic() + drain_timeout_s
        self.acquisition.stop_event.set()
        if self.acquisition.alive or self.acquisition.ready.done():
            # A read blocks at most read_timeout_s; then the thread notices the stop.
            self.acquisition.join(max(0.0, deadline - time.monotonic()) + self.acquisition.read_timeout_s + 5)
        self.frames.close()
        if not self.inference.join(max(0.0, deadline - time.monotonic())):
            log.warning("drain time (%.1f s) is up: frames still waiting are reported not_inspected",
                        drain_timeout_s)
            self.inference.abort.set()
            # A frame inside the backend finishes; what is still queued is answered without inference.
            self.inference.join(60.0)
        self._account_leftovers()
        self.inspected.close()
        self.scoring.join(30.0)
        self.results.close()
        self.publishing.join(30.0)
        ended = all(not s.alive for s in self.stages)
        if not ended:
            log.error("stages still running after stop: %s", [s.name for s in self.stages if s.alive])
        return ended

    def _account_leftovers(self) -> None:
        """Frames left in the inference queue by a dead inference thread still get their verdicts."""
        if self.inference.alive:
            return
        product = self.holder.current
        for frame in self.frames.take_all():
            reason = "inference stage ended before this frame"
            if self.inference.error is not None:
                reason = f"inference stage failed: {self.inference.error}"
            verdict = not_inspected(
                frame.seq, frame.frame_id, frame.timestamp_ns, frame.acquired_ns, reason, product
            )
            while not self.results.put(Outcome(verdict), timeout_s=1.0).accepted:
                if not self.publishing.alive:
                    break

    # -- state -----------------------------------------------------------------------------------------

    @property
    def finished(self) -> bool:
        """The source is exhausted (a finite folder or video) or the acquisition stage ended by itself."""
        return self.acquisition.exhausted or (self._started and self.acquisition.done.is_set())

    @property
    def failed_stages(self) -> list[tuple[str, BaseException]]:
        return [(s.name, s.error) for s in self.stages if s.error is not None]

    @property
    def product(self) -> ActiveProduct | None:
        return self.holder.current

    def heartbeats_fresh(self, max_age_s: float) -> bool:
        """Every stage alive and its heartbeat younger than ``max_age_s`` (what the watchdog checks)."""
        return all(s.alive and s.heartbeat_age_s() <= max_age_s for s in self.stages)

    @property
    def last_seq(self) -> int:
        """The last seq assigned so far (``first_seq - 1`` before the first frame)."""
        return self.acquisition.next_seq - 1

    def snapshot(self, window_s: float = 10.0) -> PipelineSnapshot:
        counts = self.publishing.counts_snapshot()
        product = self.holder.current
        latency = {}
        for name, window in self.latency.items():
            p50, p99 = window.percentiles(window_s)
            latency[name] = LatencySummary(p50, p99)
        acq = self.acquisition.counters
        verdicts: dict[str, dict[str, int]] = {}
        for (product_id, kind), count in sorted(counts.per_product.items()):
            verdicts.setdefault(product_id, {})[kind] = count
        return PipelineSnapshot(
            taken_ns=time.monotonic_ns(),
            window_s=window_s,
            frames_in=self.acquisition.next_seq - self.first_seq,
            frames_out=self.publishing.processed,
            passed=counts.passed,
            failed=counts.failed,
            not_inspected=counts.not_inspected,
            not_inspected_reasons=dict(counts.reasons),
            verdicts=verdicts,
            dropped=acq.dropped,
            queue_depth=len(self.frames),
            queue_size=self.frames.size,
            acquisition=replace(acq),
            inference_failures=self.inference.failures,
            exposure_rejects=self.inference.exposure_rejects,
            publish_errors=self.publishing.publish_errors,
            latency=latency,
            heartbeat_age_s={s.name: s.heartbeat_age_s() for s in self.stages},
            camera_state=self.acquisition.camera_state,
            camera_reason=self.acquisition.camera_reason,
            product_id=None if product is None else product.product_id,
            bundle_id=None if product is None else product.bundle_id,
            backend=None if product is None else product.backend.name,
            product_switches=self.holder.product_switches,
        )


def rates(snap: PipelineSnapshot, previous: PipelineSnapshot | None) -> tuple[float, float, float]:
    """(frames in per s, verdicts out per s, seconds) between two snapshots; zeros without a previous one."""
    if previous is None:
        return 0.0, 0.0, max(snap.window_s, 1e-3)
    seconds = max((snap.taken_ns - previous.taken_ns) / 1e9, 1e-3)
    return (
        max(0.0, (snap.frames_in - previous.frames_in) / seconds),
        max(0.0, (snap.frames_out - previous.frames_out) / seconds),
        seconds,
    )

"""The four pipeline stages, one thread each (DESIGN 4):

    acquisition ──frames──▶ [inference queue, bounded, block|drop_oldest] ──▶ inference ──▶ [scoring queue]
        │                                                                                        │
        └── not_inspected (camera gaps, unreadable frames, queue drops) ──▶ [results queue] ◀── scoring
                                                                                │
                                                                           publishing ──▶ ResultSink

Every acquired frame gets a ``seq`` (consecutive) and exactly one Verdict; the publishing stage hands them
to the sink in ``seq`` order whatever path they took. Each stage has a heartbeat (monotonic ns, refreshed
at least every ``POLL_S`` while it is healthy, even when idle) and counters; no stage logs per frame.
"""

from __future__ import annotations

import heapq
import logging
import threading
import time
from abc import ABC, abstractmethod
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from linewatch.acquisition.reconnect import Backoff
from linewatch.acquisition.source import FrameSource
from linewatch.cpu_priority import OFF_CRITICAL_PATH_NICENESS, lower_current_thread_priority
from linewatch.errors import (
    AcquisitionError,
    CameraDisconnectedError,
    CameraNotFoundError,
    CameraTimeoutError,
    FrameUnreadableError,
    SourceExhaustedError,
)
from linewatch.frames import Capture, Frame, InferenceOutput, Verdict, VerdictKind
from linewatch.inference.preprocessing import exposure_of, normalise_image, scale_image
from linewatch.pipeline.product import ActiveProduct, ProductHolder
from linewatch.pipeline.queues import BoundedQueue, QueueClosedError
from linewatch.scoring.decision import decide
from linewatch.scoring.heatmap import heatmap_png
from linewatch.scoring.location import defect_location

log = logging.getLogger(__name__)

# How long a stage waits on an empty queue before it refreshes its heartbeat and looks at its flags.
POLL_S = 0.2
# A frame-id jump larger than this is a counter reset or wrap, not lost frames: no results are invented.
MAX_GAP = 10_000

REASON_DROPPED = "dropped: queue full"
REASON_NO_PRODUCT = "no active product"
REASON_SHUTDOWN = "shutdown: drain timeout before inference"
REASON_EXPOSURE = "exposure outside the good parts' range"


class ResultSink(Protocol):
    """Where verdicts go (``MqttPublisher`` in the daemon). ``publish_*`` are called from the publishing
    thread only, in ``seq`` order; ``heatmap_wanted`` from the scoring thread, also in ``seq`` order."""

    def heatmap_wanted(self, verdict: VerdictKind) -> bool: ...

    def publish_result(self, verdict: Verdict) -> None: ...

    def publish_heatmap(self, seq: int, png: bytes) -> None: ...


class ImageStore(Protocol):
    """Keeps the frames of rejects (and sampled passes) on disk, referenced from the journal (``Journal``).
    Called from the publishing thread, after the frame's result was handed to the sink."""

    def image_wanted(self, verdict: VerdictKind) -> bool: ...

    def store_image(self, seq: int, image: npt.NDArray[Any]) -> Path | None: ...


def ms_between(start_ns: int, end_ns: int) -> float:
    return (end_ns - start_ns) / 1e6


class LatencyWindow:
    """Recent latency samples with their time, for percentiles over the last N seconds (thread-safe).

    ``horizon_s``: the longest window anyone will ask for; older samples are dropped as new ones arrive, so
    the memory held follows frame rate × horizon and stops growing once the daemon has run that long (a soak
    then sees a flat RSS, and growth means a leak). ``maxlen`` caps it at any frame rate.
    """

    def __init__(self, maxlen: int = 20_000, horizon_s: float | None = None) -> None:
        self._samples: deque[tuple[int, float]] = deque(maxlen=maxlen)
        self._horizon_ns = None if horizon_s is None else int(horizon_s * 1e9)
        self._lock = threading.Lock()

    def add(self, value_ms: float, now_ns: int | None = None) -> None:
        now = time.monotonic_ns() if now_ns is None else now_ns
        with self._lock:
            self._samples.append((now, value_ms))
            if self._horizon_ns is not None:
                while self._samples[0][0] < now - self._horizon_ns:
                    self._samples.popleft()

    def __len__(self) -> int:
        with self._lock:
            return len(self._samples)

    def percentiles(self, window_s: float, qs: tuple[float, ...] = (50.0, 99.0)) -> tuple[float | None, ...]:
        since = time.monotonic_ns() - int(window_s * 1e9)
        values: list[float] = []
        with self._lock:
            # Newest first, stopping at the window's start: the cost follows the window, not the buffer.
            for t, v in reversed(self._samples):
                if t < since:
                    break
                values.append(v)
        if not values:
            return tuple(None for _ in qs)
        return tuple(float(x) for x in np.percentile(np.asarray(values), qs))


class Stage(ABC):
    """A thread with a heartbeat, a readiness future and a record of how it ended."""

    # Nice value added to this stage's thread: stages off the critical path yield the CPU to inference.
    niceness = 0

    def __init__(self, name: str) -> None:
        self.name = name
        self.heartbeat_ns = time.monotonic_ns()
        self.ready: Future[None] = Future()
        self.done = threading.Event()
        self.error: BaseException | None = None
        self.processed = 0
        self._thread = threading.Thread(target=self._main, name=f"linewatch-{name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout_s: float | None = None) -> bool:
        self._thread.join(timeout_s)
        return not self._thread.is_alive()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def beat(self) -> None:
        self.heartbeat_ns = time.monotonic_ns()

    def heartbeat_age_s(self) -> float:
        return (time.monotonic_ns() - self.heartbeat_ns) / 1e9

    def _main(self) -> None:
        lower_current_thread_priority(self.niceness)
        try:
            self.run()
        except BaseException as exc:
            self.error = exc
            if self.ready.done():
                log.exception("stage %s died", self.name)
            else:
                self.ready.set_exception(exc)
        finally:
            if not self.ready.done():
                self.ready.set_result(None)
            self.done.set()

    def mark_ready(self) -> None:
        if not self.ready.done():
            self.ready.set_result(None)

    @abstractmethod
    def run(self) -> None:
        """The stage's loop, on its own thread; returns when the stage is done."""


@dataclass(slots=True)
class Inspected:
    """Inference → scoring: a frame, the product it was inspected with and the backend's answer (or why
    there is none)."""

    frame: Frame
    product: ActiveProduct | None
    output: InferenceOutput | None
    reason: str | None
    dequeued_ns: int
    inferred_ns: int


@dataclass(slots=True)
class Outcome:
    """Scoring (or acquisition, for frames that never reach inference) → publishing."""

    verdict: Verdict
    heatmap_png: bytes | None = None
    image: npt.NDArray[Any] | None = None  # the frame, for the image store (inspected frames only)

    def __lt__(self, other: Outcome) -> bool:
        return self.verdict.seq < other.verdict.seq


def not_inspected(
    seq: int,
    frame_id: int,
    timestamp_ns: int,
    acquired_ns: int,
    reason: str,
    product: ActiveProduct | None,
    latencies_ms: dict[str, float] | None = None,
) -> Verdict:
    """A frame that got no decision. It names the product the line was running, so an auditor can tell
    which product's parts went uninspected."""
    return Verdict(
        seq=seq,
        frame_id=frame_id,
        verdict=VerdictKind.NOT_INSPECTED,
        product_id=None if product is None else product.product_id,
        bundle_id=None if product is None else product.bundle_id,
        score=None,
        threshold=None,
        location=None,
        timestamp_ns=timestamp_ns,
        acquired_ns=acquired_ns,
        latencies_ms=latencies_ms or {},
        reason=reason,
    )


def put_until_accepted(queue: BoundedQueue[Outcome], item: Outcome, stage: Stage) -> None:
    """Queue an outcome, waiting (with heartbeats) while a ``block`` queue is full."""
    while not queue.put(item, timeout_s=POLL_S).accepted:
        stage.beat()


# ---------------------------------------------------------------------------------------------------------


@dataclass(slots=True)
class AcquisitionCounters:
    frames: int = 0  # images read from the source
    timeouts: int = 0
    unreadable: int = 0
    camera_gaps: int = 0  # frames the camera lost (frame-id gaps), each reported not_inspected
    frame_id_resets: int = 0  # frame-id jumps too large or backwards: counter reset, nothing invented
    dropped: int = 0  # frames the queue policy dropped
    disconnects: int = 0
    reconnects: int = 0
    errors: int = 0  # other acquisition errors (each followed by a reconnect)


class AcquisitionStage(Stage):
    """Reads the source, numbers frames, reports what never reaches inference, reconnects on device loss.

    The source is opened, read and closed on this thread only. ``CameraNotFoundError`` on the first open is
    fatal (nothing to inspect: a missing .cti, an unknown device); later, a vanished device is retried with
    back-off while ``camera_state`` says ``reconnecting``.
    """

    def __init__(
        self,
        source: FrameSource,
        frames: BoundedQueue[Frame],
        results: BoundedQueue[Outcome],
        holder: ProductHolder,
        *,
        first_seq: int,
        read_timeout_s: float,
        backoff: Backoff,
    ) -> None:
        super().__init__("acquisition")
        self.source = source
        self.frames = frames
        self.results = results
        self.holder = holder
        self.next_seq = first_seq
        self.read_timeout_s = read_timeout_s
        self.backoff = backoff
        self.stop_event = threading.Event()
        self.counters = AcquisitionCounters()
        self.camera_state = "starting"
        self.camera_reason: str | None = None
        self.exhausted = False
        self._last_frame_id: int | None = None

    def _set_state(self, state: str, reason: str | None) -> None:
        self.camera_state, self.camera_reason = state, reason

    def _take_seq(self) -> int:
        seq = self.next_seq
        self.next_seq += 1
        return seq

    def _report(self, verdict: Verdict) -> None:
        put_until_accepted(self.results, Outcome(verdict), self)

    def run(self) -> None:
        try:
            self.source.open()
        except CameraDisconnectedError as exc:
            # Reachable later, perhaps (a camera still booting): keep trying while the status says so.
            self.counters.disconnects += 1
            self._set_state("reconnecting", str(exc))
            self.mark_ready()
            if not self._reconnect():
                return
        else:
            self._set_state("streaming", None)
            self.mark_ready()
        try:
            self._loop()
        finally:
            self._close_source()
            if not self.exhausted:
                self._set_state("stopped", None)

    def _close_source(self) -> None:
        try:
            self.source.close()
        except Exception as exc:
            log.warning("closing %s failed: %s", self.source.name, exc)

    def _loop(self) -> None:
        while not self.stop_event.is_set():
            self.beat()
            try:
                capture = self.source.read(self.read_timeout_s)
            except CameraTimeoutError:
                self.counters.timeouts += 1
                continue
            except FrameUnreadableError as exc:
                self.counters.unreadable += 1
                self._account_frame_id(exc.frame_id, exc.timestamp_ns, exc.acquired_ns)
                self._report(
                    not_inspected(
                        self._take_seq(), exc.frame_id, exc.timestamp_ns, exc.acquired_ns,
                        f"unreadable frame: {exc}", self.holder.current,
                    )
                )
                continue
            except SourceExhaustedError as exc:
                log.info("source exhausted: %s", exc)
                self.exhausted = True
                self._set_state("exhausted", str(exc))
                return
            except CameraDisconnectedError as exc:
                self.counters.disconnects += 1
                log.warning("%s disconnected: %s", self.source.name, exc)
                if not self._reconnect(str(exc)):
                    return
                continue
            except Exception as exc:  # also an error the source did not translate: reopen, do not die
                self.counters.errors += 1
                untranslated = not isinstance(exc, AcquisitionError)
                log.error("%s failed: %s; reopening it", self.source.name, exc, exc_info=untranslated)
                if not self._reconnect(f"{type(exc).__name__}: {exc}" if untranslated else str(exc)):
                    return
                continue
            self.backoff.reset()
            self._accept(capture)

    def _account_frame_id(self, frame_id: int, timestamp_ns: int, acquired_ns: int) -> None:
        """Frame ids the camera skipped become not_inspected results before this frame's own."""
        last, self._last_frame_id = self._last_frame_id, frame_id
        if last is None:
            return
        missing = frame_id - last - 1
        if missing == 0:
            return
        if missing < 0 or missing > MAX_GAP:
            self.counters.frame_id_resets += 1
            return
        product = self.holder.current
        for lost_id in range(last + 1, frame_id):
            self.counters.camera_gaps += 1
            self._report(
                not_inspected(
                    self._take_seq(), lost_id, timestamp_ns, acquired_ns,
                    "camera lost the frame (frame id gap)", product,
                )
            )

    def _accept(self, capture: Capture) -> None:
        self.counters.frames += 1
        self._account_frame_id(capture.frame_id, capture.timestamp_ns, capture.acquired_ns)
        frame = Frame(
            seq=self._take_seq(),
            frame_id=capture.frame_id,
            timestamp_ns=capture.timestamp_ns,
            acquired_ns=capture.acquired_ns,
            image=capture.image,
            source=self.source.name,
            ground_truth=capture.ground_truth,
        )
        # The frame has its seq now: it must reach a verdict, so a full ``block`` queue is waited out (the
        # queue is closed only after this thread has ended).
        while True:
            result = self.frames.put(frame, timeout_s=POLL_S)
            if result.dropped is not None:
                old = result.dropped
                self.counters.dropped += 1
                self._report(
                    not_inspected(
                        old.seq, old.frame_id, old.timestamp_ns, old.acquired_ns, REASON_DROPPED,
                        self.holder.current,
                    )
                )
            if result.accepted:
                return
            self.beat()

    def _reconnect(self, reason: str | None = None) -> bool:
        """Close, then reopen with back-off until it works or the stage is stopped. True when open."""
        self._close_source()
        self._last_frame_id = None  # a reopened device may restart its frame counter
        if reason is not None:
            self._set_state("reconnecting", reason)
        while not self.stop_event.is_set():
            self.beat()
            if self.backoff.wait(self.stop_event):
                return False
            try:
                self.source.open()
            except (CameraDisconnectedError, CameraNotFoundError) as exc:
                # A device that was unplugged is "not found" until it is back: keep trying.
                self._set_state("reconnecting", str(exc))
                continue
            except Exception as exc:  # any other failure to open (translated or not): retry with back-off
                self.counters.errors += 1
                self._set_state("reconnecting", str(exc))
                continue
            self.counters.reconnects += 1
            log.info("%s reopened after %d attempt(s)", self.source.name, self.backoff.attempts)
            self._set_state("streaming", None)
            return True
        return False


# ---------------------------------------------------------------------------------------------------------


class InferenceStage(Stage):
    """Owns the backend (created, used and closed on this thread) and inspects one frame at a time."""

    def __init__(
        self,
        frames: BoundedQueue[Frame],
        inspected: BoundedQueue[Inspected],
        holder: ProductHolder,
        *,
        want_heatmap: bool,
    ) -> None:
        super().__init__("inference")
        self.frames = frames
        self.inspected = inspected
        self.holder = holder
        self.want_heatmap = want_heatmap
        self.abort = threading.Event()
        self.failures = 0
        self.exposure_rejects = 0  # frames outside the bundle's good brightness / contrast range
        self.failure_reasons: Counter[str] = Counter()
        self.last_failure: str | None = None

    def run(self) -> None:
        try:
            self.holder.apply_pending()  # the first product: its backend is made on this thread
            self.mark_ready()
            while True:
                self.beat()
                self.holder.apply_pending()
                try:
                    frame = self.frames.get(POLL_S)
                except QueueClosedError:
                    return
                if frame is None:
                    continue
                self._put(self._inspect(frame))
        finally:
            self.holder.close()

    def _put(self, item: Inspected) -> None:
        while not self.inspected.put(item, timeout_s=POLL_S).accepted:
            self.beat()

    def _inspect(self, frame: Frame) -> Inspected:
        dequeued_ns = time.monotonic_ns()
        product = self.holder.current
        if self.abort.is_set():
            return Inspected(frame, product, None, REASON_SHUTDOWN, dequeued_ns, dequeued_ns)
        if product is None:
            return Inspected(frame, None, None, REASON_NO_PRODUCT, dequeued_ns, dequeued_ns)
        manifest = product.bundle.manifest
        try:
            scaled = scale_image(frame.image, manifest.input, manifest.preprocessing)
            level = None  # the image mean, when the exposure check has it already
            if manifest.exposure is not None:
                level, contrast = exposure_of(scaled)
                problem = manifest.exposure.problem(level, contrast)
                if problem is not None:  # lamp, shutter or blank frame: no score would mean anything
                    self.exposure_rejects += 1
                    reason = f"{REASON_EXPOSURE}: {problem}"
                    return Inspected(frame, product, None, reason, dequeued_ns, time.monotonic_ns())
            batch = normalise_image(scaled, manifest.preprocessing, level)[np.newaxis]
            outputs = product.backend.infer(batch, want_heatmap=self.want_heatmap)
            if len(outputs) != 1:
                raise ValueError(f"backend returned {len(outputs)} outputs for 1 image")
        except Exception as exc:  # one bad frame (or a backend hiccup) must not stop the line
            self.failures += 1
            reason = f"inference failed: {exc}"
            self.failure_reasons[type(exc).__name__] += 1
            if self.last_failure is None:
                log.error("%s (further failures are counted, not logged)", reason)
            self.last_failure = reason
            return Inspected(frame, product, None, reason, dequeued_ns, time.monotonic_ns())
        self.processed += 1
        return Inspected(frame, product, outputs[0], None, dequeued_ns, time.monotonic_ns())


# ---------------------------------------------------------------------------------------------------------


class ScoringStage(Stage):
    """Pure decisions (threshold, location) and, for heatmaps the sink wants, rendering and PNG encoding."""

    niceness = OFF_CRITICAL_PATH_NICENESS

    def __init__(
        self,
        inspected: BoundedQueue[Inspected],
        results: BoundedQueue[Outcome],
        sink: ResultSink,
        *,
        heatmap_max_side: int,
    ) -> None:
        super().__init__("scoring")
        self.inspected = inspected
        self.results = results
        self.sink = sink
        self.heatmap_max_side = heatmap_max_side
        self.heatmaps_rendered = 0
        self.errors = 0

    def run(self) -> None:
        self.mark_ready()
        while True:
            self.beat()
            try:
                item = self.inspected.get(POLL_S)
            except QueueClosedError:
                return
            if item is None:
                continue
            put_until_accepted(self.results, self._score(item), self)
            self.processed += 1

    def _score(self, item: Inspected) -> Outcome:
        frame, product, output = item.frame, item.product, item.output
        latencies = {
            "queue": ms_between(frame.acquired_ns, item.dequeued_ns),
            "inference": ms_between(item.dequeued_ns, item.inferred_ns),
        }
        if output is None or product is None:
            reason = item.reason or "not inspected"
            verdict = not_inspected(
                frame.seq, frame.frame_id, frame.timestamp_ns, frame.acquired_ns, reason, product, latencies
            )
            return Outcome(verdict, image=frame.image)
        try:
            return self._decide(item, product, output, latencies)
        except Exception as exc:  # never lose the frame, whatever went wrong
            self.errors += 1
            log.error("scoring seq %d failed: %s", frame.seq, exc)
            verdict = not_inspected(
                frame.seq, frame.frame_id, frame.timestamp_ns, frame.acquired_ns,
                f"scoring failed: {exc}", product, latencies,
            )
            return Outcome(verdict)

    def _decide(
        self, item: Inspected, product: ActiveProduct, output: InferenceOutput, latencies: dict[str, float]
    ) -> Outcome:
        frame = item.frame
        manifest = product.bundle.manifest
        threshold = product.threshold
        kind, reason = decide(output.score, threshold)
        height, width = frame.image.shape[:2]
        location = (
            None if kind is VerdictKind.NOT_INSPECTED
            else defect_location(output.argmax_rc, (height, width), manifest)
        )
        png: bytes | None = None
        inspected = kind is not VerdictKind.NOT_INSPECTED
        if output.heatmap is not None and inspected and self.sink.heatmap_wanted(kind):
            png = heatmap_png(frame.image, output.heatmap, manifest, threshold, self.heatmap_max_side)
            self.heatmaps_rendered += 1
        latencies["scoring"] = ms_between(item.inferred_ns, time.monotonic_ns())
        verdict = Verdict(
            seq=frame.seq,
            frame_id=frame.frame_id,
            verdict=kind,
            product_id=product.product_id,
            bundle_id=product.bundle_id,
            score=output.score,
            threshold=threshold,
            location=location,
            timestamp_ns=frame.timestamp_ns,
            acquired_ns=frame.acquired_ns,
            latencies_ms=latencies,
            reason=reason,
        )
        return Outcome(verdict, png, frame.image)


# ---------------------------------------------------------------------------------------------------------


@dataclass(slots=True)
class VerdictCounts:
    passed: int = 0
    failed: int = 0
    not_inspected: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    # (product id or "" without one, verdict) → results: what ``stats`` and /metrics count per product.
    per_product: Counter[tuple[str, str]] = field(default_factory=Counter)


# Called from the publishing thread with every verdict after the sink has it, its ``latencies_ms`` completed
# with "publish" (the time the sink took); e.g. ``linewatch.service.metrics.Metrics.observe_verdict``.
VerdictObserver = Callable[[Verdict], None]


class PublishingStage(Stage):
    """Puts outcomes back in ``seq`` order and hands them to the sink: result first, then its heatmap."""

    niceness = OFF_CRITICAL_PATH_NICENESS

    def __init__(
        self,
        results: BoundedQueue[Outcome],
        sink: ResultSink,
        *,
        first_seq: int,
        latency: dict[str, LatencyWindow],
        image_store: ImageStore | None = None,
        observer: VerdictObserver | None = None,
    ) -> None:
        super().__init__("publishing")
        self.results = results
        self.sink = sink
        self.image_store = image_store
        self.observer = observer
        self.observer_errors = 0
        self.images_stored = 0
        self.image_errors = 0
        self.next_seq = first_seq
        self.latency = latency
        self.counts = VerdictCounts()
        self.publish_errors = 0
        self._pending: list[Outcome] = []
        self._lock = threading.Lock()

    @property
    def reorder_depth(self) -> int:
        return len(self._pending)

    def run(self) -> None:
        self.mark_ready()
        while True:
            self.beat()
            try:
                item = self.results.get(POLL_S)
            except QueueClosedError:
                break
            if item is None:
                continue
            heapq.heappush(self._pending, item)
            while self._pending and self._pending[0].verdict.seq <= self.next_seq:
                self._emit(heapq.heappop(self._pending))
        # Everything upstream has finished: whatever is left goes out in order. A hole here would be a bug
        # upstream; say so rather than wait for a frame that cannot come.
        while self._pending:
            outcome = heapq.heappop(self._pending)
            if outcome.verdict.seq != self.next_seq:
                log.error("results %d..%d never arrived", self.next_seq, outcome.verdict.seq - 1)
            self._emit(outcome)

    def _emit(self, outcome: Outcome) -> None:
        now_ns = time.monotonic_ns()
        verdict = outcome.verdict
        latencies = dict(verdict.latencies_ms)
        latencies["total"] = ms_between(verdict.acquired_ns, now_ns)
        verdict = replace(verdict, latencies_ms=latencies)
        # The sink may keep the verdict (the journal writes it on its own thread): never change its dict.
        observed = dict(latencies)
        try:
            self.sink.publish_result(verdict)
            # publish: journal write + hand-over to the MQTT client (the result only; a heatmap is extra).
            observed["publish"] = ms_between(now_ns, time.monotonic_ns())
            if outcome.heatmap_png is not None:
                self.sink.publish_heatmap(verdict.seq, outcome.heatmap_png)
        except Exception as exc:  # the sink journals first; a failure here is counted and shown in status
            self.publish_errors += 1
            if self.publish_errors == 1:
                log.error("publishing seq %d failed: %s (further failures are counted)", verdict.seq, exc)
        for name, value in observed.items():
            window = self.latency.get(name)
            if window is not None:
                window.add(value, now_ns)
        if outcome.image is not None and self.image_store is not None:
            self._store_image(verdict, outcome.image)
        with self._lock:
            if verdict.verdict is VerdictKind.PASS:
                self.counts.passed += 1
            elif verdict.verdict is VerdictKind.FAIL:
                self.counts.failed += 1
            else:
                self.counts.not_inspected += 1
                self.counts.reasons[(verdict.reason or "").split(":")[0]] += 1
            self.counts.per_product[(verdict.product_id or "", verdict.verdict.value)] += 1
            self.processed += 1
        self.next_seq = verdict.seq + 1
        if self.observer is not None:
            self._observe(self.observer, replace(verdict, latencies_ms=observed))

    def _observe(self, observer: VerdictObserver, verdict: Verdict) -> None:
        try:
            observer(verdict)
        except Exception as exc:  # metrics must never cost a result
            self.observer_errors += 1
            if self.observer_errors == 1:
                log.error("observing seq %d failed: %s (further failures are counted)", verdict.seq, exc)

    def _store_image(self, verdict: Verdict, image: npt.NDArray[Any]) -> None:
        store = self.image_store
        if store is None or not store.image_wanted(verdict.verdict):
            return
        try:
            if store.store_image(verdict.seq, image) is not None:
                self.images_stored += 1
        except Exception as exc:  # a full disk must not stop the results
            self.image_errors += 1
            if self.image_errors == 1:
                log.error("storing the image of seq %d failed: %s (further failures are counted)",
                          verdict.seq, exc)

    def counts_snapshot(self) -> VerdictCounts:
        with self._lock:
            counts = self.counts
            return VerdictCounts(counts.passed, counts.failed, counts.not_inspected, Counter(counts.reasons),
                                 Counter(counts.per_product))

"""Fault injection for the fault tests: wrappers around REAL components that follow the same protocols.

``FaultySource`` wraps a real FrameSource (GenicamSource on viky.cti, SyntheticSource, FolderSource) and,
on the read calls named in its schedule, injects what a line camera does when it misbehaves:

* ``LoseFrames(n)``: the camera delivers n frames that never reach the host (they are read from the real
  source and thrown away), and the fetch times out (``CameraTimeoutError``). The next frame's id jumps.
* ``Timeout()``: a fetch timeout without lost frames (a triggered line that paused).
* ``Raise(exc)``: the read raises ``exc`` (a driver error, or an exception nobody translated).
* ``Vanish(absent_opens)``: the device disappears: the real source is closed, the read raises
  ``CameraDisconnectedError``, and the next ``absent_opens`` ``open`` calls fail with
  ``CameraNotFoundError`` (the device is not enumerated) before it comes back.

``FaultyCameras`` plugs that into a running ``Daemon`` (its ``source_factory``): the daemon's camera, wrapped.

``FaultyBackend`` wraps a real InferenceBackend (OnnxruntimeBackend) and raises on chosen ``infer`` calls.

Also the setup the fault tests share: the products they inspect with (fitted with the session's tiny trained
backbone), viky.cti as their camera, waiting for every result, and thread accounting for leak checks. Import
from here (tests/ is on sys.path), never from conftest.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from mqtt_support import Subscriber, first_seen_seqs

from linewatch.acquisition import (
    Backoff,
    CameraConfig,
    FrameSource,
    GenicamCameraConfig,
    SyntheticCameraConfig,
    SyntheticSource,
    make_source,
)
from linewatch.bundle.registry import LoadedBundle, load_product
from linewatch.errors import (
    CameraDisconnectedError,
    CameraNotFoundError,
    CameraTimeoutError,
    InferenceError,
)
from linewatch.frames import Capture, InferenceOutput
from linewatch.inference.backend import InferenceBackend
from linewatch.inference.onnxruntime import OnnxruntimeBackend, OnnxruntimeConfig
from linewatch.pipeline.pipeline import Pipeline
from linewatch.pipeline.product import BackendFactory
from linewatch.publish.journal import Journal, JournalConfig
from linewatch.publish.mqtt import MqttConfig, MqttPublisher

# ---------------------------------------------------------------------------------------------------------
# Camera faults


@dataclass(frozen=True)
class LoseFrames:
    """``n`` frames are taken by the camera but lost before the host gets them; the fetch times out."""

    n: int


@dataclass(frozen=True)
class Timeout:
    """A fetch timeout, no frame lost."""


@dataclass(frozen=True)
class Raise:
    """The read raises this exception."""

    exc: BaseException


@dataclass(frozen=True)
class Vanish:
    """The device goes away; it is not found for ``absent_opens`` open attempts, then it is back."""

    absent_opens: int = 2


Fault = LoseFrames | Timeout | Raise | Vanish


@dataclass
class InjectionLog:
    """What the wrapper did, for the test's expectations."""

    lost_frame_ids: list[int] = field(default_factory=list)
    timeouts: int = 0
    raised: int = 0
    vanished: int = 0
    refused_opens: int = 0
    opens: int = 0
    delivered: int = 0


class FaultySource:
    """A FrameSource around a real one, injecting ``schedule[i]`` on the i-th ``read`` call (0-based, counted
    over the wrapper's whole life, reconnects included). Used from one thread, like every FrameSource."""

    def __init__(self, inner: FrameSource, schedule: Mapping[int, Fault]) -> None:
        self.inner = inner
        self.schedule = dict(schedule)
        self.reads = 0
        self.log = InjectionLog()
        self._absent_opens = 0
        self._last_frame_id: int | None = None

    @property
    def name(self) -> str:
        return f"faulty({self.inner.name})"

    def open(self) -> None:
        if self._absent_opens > 0:
            self._absent_opens -= 1
            self.log.refused_opens += 1
            raise CameraNotFoundError(f"{self.inner.name}: device not found (injected: unplugged)")
        self.inner.open()
        self.log.opens += 1

    def close(self) -> None:
        self.inner.close()

    def read(self, timeout_s: float) -> Capture:
        index = self.reads
        self.reads += 1
        fault = self.schedule.get(index)
        if isinstance(fault, LoseFrames):
            for _ in range(fault.n):
                lost = self.inner.read(timeout_s)
                self.log.lost_frame_ids.append(lost.frame_id)
            self.log.timeouts += 1
            raise CameraTimeoutError(f"{self.inner.name}: no frame within {timeout_s:g} s (injected)")
        if isinstance(fault, Timeout):
            self.log.timeouts += 1
            raise CameraTimeoutError(f"{self.inner.name}: no frame within {timeout_s:g} s (injected)")
        if isinstance(fault, Raise):
            self.log.raised += 1
            raise fault.exc
        if isinstance(fault, Vanish):
            self.log.vanished += 1
            self.inner.close()
            self._absent_opens = fault.absent_opens
            raise CameraDisconnectedError(f"{self.inner.name}: device removed (injected)")
        capture = self.inner.read(timeout_s)
        self.log.delivered += 1
        return capture


class FaultyCameras:
    """A ``Daemon`` ``source_factory``: the source the daemon would make for its camera config
    (``make_source``), wrapped in a FaultySource playing ``schedule``. ``made`` holds what it made."""

    def __init__(self, schedule: Mapping[int, Fault]) -> None:
        self.schedule = dict(schedule)
        self.made: list[FaultySource] = []

    def __call__(self, config: CameraConfig) -> FrameSource:
        source = FaultySource(make_source(config), self.schedule)
        self.made.append(source)
        return source

    @property
    def reads(self) -> int:
        return sum(source.reads for source in self.made)

    @property
    def source(self) -> FaultySource:
        """The one source a daemon run made."""
        assert len(self.made) == 1, f"{len(self.made)} sources made"
        return self.made[0]


# ---------------------------------------------------------------------------------------------------------
# Inference faults


class _WrappedBackend:
    """An InferenceBackend that hands every call to ``inner`` (a real backend); the wrappers below change
    only what they are about."""

    label = "wrapped"

    def __init__(self, inner: InferenceBackend) -> None:
        self.inner = inner

    @property
    def name(self) -> str:
        return f"{self.label}({self.inner.name})"

    @property
    def backbone_id(self) -> str:
        return self.inner.backbone_id

    def set_prototype(self, mean: npt.NDArray[np.float32], scale: npt.NDArray[np.float32]) -> None:
        self.inner.set_prototype(mean, scale)

    def warmup(self) -> None:
        self.inner.warmup()

    def infer(self, images: npt.NDArray[np.float32], want_heatmap: bool) -> list[InferenceOutput]:
        return self.inner.infer(images, want_heatmap)

    def close(self) -> None:
        self.inner.close()


class FaultyBackend(_WrappedBackend):
    """An InferenceBackend around a real one that raises on the ``infer`` calls ``fail_on`` picks (0-based,
    warm-up calls made through this wrapper included). Records which call numbers failed."""

    label = "faulty"

    def __init__(
        self,
        inner: InferenceBackend,
        fail_on: Callable[[int], bool],
        exc: Callable[[int], BaseException] = lambda i: InferenceError(f"injected failure on call {i}"),
    ) -> None:
        super().__init__(inner)
        self.fail_on = fail_on
        self.exc = exc
        self.calls = 0
        self.failed_calls: list[int] = []
        self.closed = False

    def infer(self, images: npt.NDArray[np.float32], want_heatmap: bool) -> list[InferenceOutput]:
        index = self.calls
        self.calls += 1
        if self.fail_on(index):
            self.failed_calls.append(index)
            raise self.exc(index)
        return self.inner.infer(images, want_heatmap)

    def close(self) -> None:
        self.closed = True
        self.inner.close()


class SlowBackend(_WrappedBackend):
    """A real backend that takes at least ``min_s`` per call (a slow model/CPU), to overload the line
    deterministically on any machine. Protocol-true; the delay sits where the model runs."""

    label = "slow"

    def __init__(self, inner: InferenceBackend, min_s: float) -> None:
        super().__init__(inner)
        self.min_s = min_s
        self.calls = 0

    def infer(self, images: npt.NDArray[np.float32], want_heatmap: bool) -> list[InferenceOutput]:
        start = time.monotonic()
        out = self.inner.infer(images, want_heatmap)
        self.calls += 1
        left = self.min_s - (time.monotonic() - start)
        if left > 0:
            time.sleep(left)
        return out


# ---------------------------------------------------------------------------------------------------------
# The products and cameras the fault tests inspect with, results, and thread accounting

SIZE = 128
CAMERA_FAMILY = "stripes"
STRIPES_PRODUCT = "stripes-part"
WHITE_PRODUCT = "white"


def camera_config(**overrides: object) -> SyntheticCameraConfig:
    """The synthetic camera of the fault tests (stripes parts, some defects), 128×128."""
    values: dict[str, object] = {
        "family": CAMERA_FAMILY, "width": SIZE, "height": SIZE, "rate_hz": 20.0, "defect_rate": 0.2,
        "defect_kinds": ["noise_patch", "crack", "spot"], "seed": 3,
    }  # fmt: skip
    values.update(overrides)
    return SyntheticCameraConfig.model_validate(values)


def fit_stripes_product(
    products_dir: Path, product_id: str = STRIPES_PRODUCT, input_size: tuple[int, int] | None = None
) -> Path:
    """A bundle fitted on good stripes parts (another seed than the camera's) with the tiny backbone;
    ``input_size`` (model input, frames are resized to it) defaults to the camera's 128×128."""
    from daemon_support import fit_bundle

    good = SyntheticSource(camera_config(defect_rate=0.0, rate_hz=None, seed=5))
    return fit_bundle(products_dir, product_id, [good.render(i)[0] for i in range(24)], input_size=input_size)


def load_stripes_product(products_dir: Path) -> LoadedBundle:
    """``fit_stripes_product`` into ``products_dir``, loaded (verified) the way the daemon loads it."""
    fit_stripes_product(products_dir)
    return load_product(products_dir, STRIPES_PRODUCT)


def fit_white_product(products_dir: Path) -> Path:
    """``white``: fitted on near-white noise like viky.cti's white field (its moving dark square is the
    anomaly)."""
    from daemon_support import fit_bundle

    rng = np.random.default_rng(0)
    good = [rng.integers(240, 256, (SIZE, SIZE), dtype=np.uint8) for _ in range(20)]
    return fit_bundle(products_dir, WHITE_PRODUCT, good)


def viky_camera_config(cti: Path, rate_hz: float, **options: object) -> GenicamCameraConfig:
    """viky.cti as the fault tests' camera: Mono8, 128×128 at ``rate_hz``, 2 s fetch timeout."""
    values: dict[str, object] = {
        "cti": [cti], "device_index": 0, "fetch_timeout_s": 2.0,
        "nodes": {"PixelFormat": "Mono8", "Width": SIZE, "Height": SIZE, "AcquisitionFrameRate": rate_hz},
    }  # fmt: skip
    values.update(options)
    return GenicamCameraConfig.model_validate(values)


def all_results(sub: Subscriber, last_seq: int, timeout_s: float = 10.0) -> list[dict[str, Any]]:
    """Every result ``sub`` received (re-sent copies included), once seqs 0..``last_seq`` have all arrived:
    the line has stopped and ``last_seq`` was the last it numbered."""
    sub.wait_for(lambda: len(first_seen_seqs(sub.json("result"))) >= last_seq + 1, timeout_s, "all results")
    return sub.json("result")


def thread_names() -> list[str]:
    return sorted(t.name for t in threading.enumerate())


def wait_for_threads(before: list[str], timeout_s: float = 10.0) -> list[str]:
    """Wait until only the threads of ``before`` are left (threads end asynchronously after a join of their
    owner returned); returns the threads still there that were not there before."""
    deadline = time.monotonic() + timeout_s
    while True:
        extra = list(before)
        now = thread_names()
        leaked = []
        for name in now:
            if name in extra:
                extra.remove(name)
            else:
                leaked.append(name)
        if not leaked or time.monotonic() > deadline:
            return leaked
        time.sleep(0.05)


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str, poll_s: float = 0.02) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(poll_s)


# ---------------------------------------------------------------------------------------------------------
# A line assembled in-process the way `linewatch run` assembles it (journal → MqttPublisher, Pipeline) around
# a source and a backend factory the test chooses. (Tests of the daemon's own loop, status included, run
# the Daemon itself: daemon_support.DaemonThread with FaultyCameras.)


@dataclass
class Line:
    pipeline: Pipeline
    publisher: MqttPublisher
    journal: Journal


@contextmanager
def running_line(
    source: FrameSource,
    backend_factory: BackendFactory,
    bundle: LoadedBundle | None,
    state_dir: Path,
    mqtt: MqttConfig,
    *,
    station: str = "faults",
    queue_size: int = 8,
    overflow: str = "block",
    backoff: Backoff | None = None,
    read_timeout_s: float = 1.0,
    drain_timeout_s: float = 10.0,
    wait_connected: bool = True,
) -> Iterator[Line]:
    """Journal, publisher (started) and pipeline (started); all stopped and closed on exit (pipeline drained
    first, then the publisher flushes and says ``stopped``)."""
    journal = Journal(JournalConfig(state_dir=state_dir, batch_ms=10))
    publisher = MqttPublisher(mqtt, station, journal)
    pipeline = Pipeline(
        source, backend_factory, publisher, bundle=bundle, queue_size=queue_size, overflow=overflow,
        read_timeout_s=read_timeout_s, backoff=backoff or Backoff(0.2, 0.5), image_store=journal,
    )  # fmt: skip
    try:
        publisher.set_status("starting", None)
        publisher.start()
        if wait_connected:
            wait_until(lambda: publisher.connected, 10.0, "the publisher's connection")
        pipeline.start(timeout_s=60.0)
        yield Line(pipeline, publisher, journal)
    finally:
        pipeline.stop(drain_timeout_s=drain_timeout_s)
        publisher.close("stopped", "test over", timeout_s=10.0)
        journal.close()


def ort_factory(threads: int = 1) -> BackendFactory:
    """The daemon's ONNX Runtime backend, one intra-op thread (the test machine is shared)."""

    def make(bundle: LoadedBundle) -> InferenceBackend:
        return OnnxruntimeBackend(bundle, OnnxruntimeConfig(intra_op_threads=threads))

    return make

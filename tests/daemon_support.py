"""Helpers for the daemon's tests: manifests, fake-but-protocol-true sources and backends, bundles.

Importable from any test because tests/conftest.py puts this directory on sys.path (pytest's default
"prepend" import mode).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from harness import free_port

from linewatch.acquisition import CameraConfig, FrameSource, make_source
from linewatch.bundle.manifest import (
    SCHEMA_VERSION,
    BundleManifest,
    Calibration,
    InputSpec,
    Preprocessing,
    Provenance,
)
from linewatch.config import load_settings
from linewatch.errors import (
    CameraDisconnectedError,
    CameraTimeoutError,
    FrameUnreadableError,
    InferenceError,
    SourceExhaustedError,
)
from linewatch.frames import Capture, GroundTruth, InferenceOutput
from linewatch.pipeline.pipeline import Pipeline
from linewatch.service.daemon import Daemon


def make_manifest(
    height: int = 64, width: int = 64, threshold: float = 1.0, product_id: str = "widget", h: int = 4
) -> BundleManifest:
    """A valid manifest for tests that need one without files on disk (the scoring shapes of FeatureNet(h),
    from the trainer, as a fitted bundle has them)."""
    from trainer.fit import scoring_spec

    return BundleManifest(
        schema_version=SCHEMA_VERSION,
        product_id=product_id,
        bundle_id=f"{product_id}@000000000000",
        input=InputSpec(height=height, width=width),
        preprocessing=Preprocessing(),
        scoring=scoring_spec(h, height, width),
        threshold=threshold,
        calibration=Calibration(method="quantile", target_frr=0.005, n_images=0, threshold=threshold),
        provenance=Provenance(
            backbone="test",
            backbone_sha256="0" * 64,
            trainer_version="test",
            good_images="none",
            n_prototype_images=0,
            seed=0,
            created_at="2024-01-01T00:00:00Z",
        ),
        backbone_id="0" * 64,
        files={},
    )


# ---------------------------------------------------------------------------------------------------------
# A FrameSource made of a script of events (protocol-true: open/read(timeout)/close, raising the
# documented errors). Each event is an image (uint8 2-D array), or one of the markers below.


class Gap:
    """Skip ``n`` camera frame ids (the camera lost frames)."""

    def __init__(self, n: int) -> None:
        self.n = n


class Unreadable:
    """The next frame cannot be decoded (FrameUnreadableError)."""


class Timeout:
    """No frame within the timeout (CameraTimeoutError)."""


class Disconnect:
    """The device goes away (CameraDisconnectedError); the next ``open`` succeeds."""


class ScriptedSource:
    """Plays a list of events; exhausted at the end (or loops forever when ``loop``)."""

    def __init__(
        self,
        events: list[Any],
        *,
        interval_s: float = 0.0,
        loop: bool = False,
        fail_open_times: int = 0,
    ) -> None:
        self.events = events
        self.interval_s = interval_s
        self.loop = loop
        self.fail_open_times = fail_open_times
        self.opens = 0
        self.closes = 0
        self.reads = 0
        self.delivered = 0
        self.thread_ids: set[int] = set()
        self._pos = 0
        self._frame_id = 0
        self._opened = False
        self._next_due = 0.0

    @property
    def name(self) -> str:
        return "scripted"

    def open(self) -> None:
        self.thread_ids.add(threading.get_ident())
        self.opens += 1
        if self.opens <= self.fail_open_times:
            raise CameraDisconnectedError("scripted: device not reachable yet")
        self._opened = True

    def close(self) -> None:
        self.closes += 1
        self._opened = False

    def read(self, timeout_s: float) -> Capture:
        self.thread_ids.add(threading.get_ident())
        if not self._opened:
            raise CameraDisconnectedError("scripted: read on a closed source")
        self.reads += 1
        if self.interval_s:
            now = time.monotonic()
            if self._next_due > now:
                time.sleep(self._next_due - now)
            self._next_due = max(now, self._next_due) + self.interval_s
        while True:
            if self._pos >= len(self.events):
                if not self.loop:
                    raise SourceExhaustedError("scripted: no more events")
                self._pos = 0
            event = self.events[self._pos]
            self._pos += 1
            if isinstance(event, Gap):
                self._frame_id += event.n
                continue
            now_ns = time.monotonic_ns()
            if isinstance(event, Timeout):
                time.sleep(min(timeout_s, 0.01))
                raise CameraTimeoutError("scripted: timeout")
            if isinstance(event, Disconnect):
                self._opened = False
                raise CameraDisconnectedError("scripted: device lost")
            frame_id = self._frame_id
            self._frame_id += 1
            if isinstance(event, Unreadable):
                raise FrameUnreadableError(
                    "scripted: cannot decode frame",
                    frame_id=frame_id,
                    timestamp_ns=now_ns,
                    acquired_ns=now_ns,
                    item=f"frame{frame_id}",
                )
            image, truth = event if isinstance(event, tuple) else (event, None)
            self.delivered += 1
            return Capture(
                image=image, frame_id=frame_id, timestamp_ns=now_ns, acquired_ns=now_ns, ground_truth=truth
            )


def dark_square_image(size: int, x: int, y: int, side: int = 12) -> npt.NDArray[np.uint8]:
    img = np.full((size, size), 235, dtype=np.uint8)
    img[y : y + side, x : x + side] = 20
    return img


def frames_with_truth(
    n: int, size: int = 64, every: int = 3
) -> list[tuple[npt.NDArray[np.uint8], GroundTruth]]:
    """``n`` images; every ``every``-th has a dark square (defective), the others are plain."""
    out = []
    for i in range(n):
        if i % every == 0:
            out.append((dark_square_image(size, 20, 30), GroundTruth(defective=True, defect_kind="square")))
        else:
            out.append((np.full((size, size), 235, dtype=np.uint8), GroundTruth(defective=False)))
    return out


class DarknessBackend:
    """An InferenceBackend whose 'model' is the darkness of the preprocessed image: heatmap cell = mean
    darkness of its receptive field, score = max. Protocol-true (name, backbone_id, set_prototype, warmup,
    infer, close), used from one thread, with a hook to fail on chosen calls."""

    def __init__(
        self,
        manifest: BundleManifest,
        *,
        fail_on: Callable[[int], bool] | None = None,
        delay_s: float = 0.0,
    ) -> None:
        self.manifest = manifest
        self.fail_on = fail_on
        self.delay_s = delay_s
        self.calls = 0
        self.closed = False
        self.warmed = False
        self.prototype_sets = 0
        self.thread_ids: set[int] = set()
        self.offset = 0.0

    @property
    def name(self) -> str:
        return "darkness"

    @property
    def backbone_id(self) -> str:
        return self.manifest.backbone_id

    def set_prototype(self, mean: npt.NDArray[np.float32], scale: npt.NDArray[np.float32]) -> None:
        self.thread_ids.add(threading.get_ident())
        self.prototype_sets += 1
        self.offset = float(mean.reshape(-1)[0])

    def warmup(self) -> None:
        self.thread_ids.add(threading.get_ident())
        self.warmed = True

    def infer(self, images: npt.NDArray[np.float32], want_heatmap: bool) -> list[InferenceOutput]:
        self.thread_ids.add(threading.get_ident())
        index = self.calls
        self.calls += 1
        if self.delay_s:
            time.sleep(self.delay_s)
        if self.fail_on is not None and self.fail_on(index):
            raise InferenceError(f"darkness: injected fault on call {index}")
        outs = []
        sc = self.manifest.scoring
        for img in images:
            dark = (1.0 - img[0]) / 2.0  # [-1, 1] → darkness in [0, 1]
            # Mean darkness of every 32×32 window at stride 2, via an integral image.
            ii = np.pad(dark.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
            rf, st = sc.receptive_field, sc.stride
            rows = np.arange(sc.heatmap_height) * st
            cols = np.arange(sc.heatmap_width) * st
            r0, c0 = rows[:, None], cols[None, :]
            sums = ii[r0 + rf, c0 + rf] - ii[r0, c0 + rf] - ii[r0 + rf, c0] + ii[r0, c0]
            heat = (sums / (rf * rf) + self.offset).astype(np.float32)
            r, c = np.unravel_index(int(np.argmax(heat)), heat.shape)
            outs.append(
                InferenceOutput(
                    score=float(heat.max()),
                    argmax_rc=(int(r), int(c)),
                    heatmap=heat if want_heatmap else None,
                )
            )
        return outs

    def close(self) -> None:
        self.closed = True


def iter_chunks(seq: list[Any], n: int) -> Iterator[list[Any]]:
    for i in range(0, len(seq), n):
        yield seq[i : i + n]


class CollectingSink:
    """A ResultSink that keeps everything it is given (and checks the call order contract)."""

    def __init__(self, heatmaps_for: tuple[str, ...] = ("fail",)) -> None:
        self.heatmaps_for = heatmaps_for
        self.verdicts: list[Any] = []
        self.heatmaps: list[tuple[int, bytes]] = []
        self.events: list[tuple[str, int]] = []
        self.publish_threads: set[int] = set()
        self._lock = threading.Lock()

    def heatmap_wanted(self, verdict: Any) -> bool:
        return str(verdict) in self.heatmaps_for

    def publish_result(self, verdict: Any) -> None:
        with self._lock:
            self.publish_threads.add(threading.get_ident())
            self.verdicts.append(verdict)
            self.events.append(("result", verdict.seq))

    def publish_heatmap(self, seq: int, png: bytes) -> None:
        with self._lock:
            self.heatmaps.append((seq, png))
            self.events.append(("heatmap", seq))

    def wait_for(self, n: int, timeout_s: float = 20.0) -> None:
        deadline = time.monotonic() + timeout_s
        while len(self.verdicts) < n:
            if time.monotonic() > deadline:
                raise AssertionError(f"only {len(self.verdicts)} of {n} verdicts within {timeout_s} s")
            time.sleep(0.01)


# ---------------------------------------------------------------------------------------------------------
# End to end: configs, bundles and `linewatch run` as a subprocess (what a user runs).

REPO = Path(__file__).resolve().parents[1]


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str | Path):
        return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML for {value!r}")


def to_toml(data: dict[str, Any], prefix: str = "") -> str:
    """Just enough TOML for test configs: scalars, lists, nested tables."""
    lines = [f"{k} = {_toml_value(v)}" for k, v in data.items() if not isinstance(v, dict) and v is not None]
    out = "\n".join(lines) + ("\n" if lines else "")
    for key, value in data.items():
        if isinstance(value, dict):
            name = f"{prefix}.{key}" if prefix else key
            out += f"\n[{name}]\n" + to_toml(value, name)
    return out


def daemon_config(
    path: Path,
    *,
    camera: dict[str, Any],
    products_dir: Path,
    active: str | None,
    mqtt_port: int,
    station: str = "e2e",
    **sections: dict[str, Any],
) -> Path:
    """Write a daemon config; state lives next to it (``<dir>/state``)."""
    data: dict[str, Any] = {
        "state_dir": path.parent / "state",
        "station": {"id": station},
        "camera": camera,
        "products": {"dir": products_dir, **({"active": active} if active else {})},
        "mqtt": {"host": "127.0.0.1", "port": mqtt_port, "reconnect_max_delay_s": 1},
        "inference": {"backend": "onnxruntime", "onnxruntime": {"intra_op_threads": 1}},
        "logging": {"summary_interval_s": 1.0},
        "service": {"stats_interval_s": 1.0},
        # Served, on a port of its own: the default 9850 may be taken by another daemon on this machine.
        "metrics": {"host": "127.0.0.1", "port": free_port()},
    }
    for name, values in sections.items():
        data[name] = {**data.get(name, {}), **values}
    path.write_text(to_toml(data))
    return path


class DaemonThread:
    """``linewatch run`` inside this process: ``Daemon(load_settings(config)).run()`` on a thread of its own
    (the process's signal handlers aside), so a test can plug in a camera (``source_factory``) and read the
    running daemon's pipeline and metrics. ``stop()`` does what SIGTERM does and returns the exit code."""

    def __init__(
        self, config: Path, source_factory: Callable[[CameraConfig], FrameSource] = make_source
    ) -> None:
        self.daemon = Daemon(load_settings(config), config_path=config, source_factory=source_factory)
        self._exit_code: int | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="test-daemon", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._exit_code = self.daemon.run()
        except BaseException as exc:  # handed to the test by stop()
            self._error = exc

    def pipeline(self, timeout_s: float = 60.0) -> Pipeline:
        """The daemon's pipeline, once it has made it."""
        deadline = time.monotonic() + timeout_s
        while self.daemon.pipeline is None:
            if not self._thread.is_alive():
                raise AssertionError(f"the daemon ended first: {self._exit_code}, {self._error!r}")
            if time.monotonic() > deadline:
                raise AssertionError(f"the daemon made no pipeline within {timeout_s} s")
            time.sleep(0.02)
        return self.daemon.pipeline

    def stop(self, timeout_s: float = 60.0) -> int:
        self.daemon.stop_requested.set()
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            raise AssertionError(f"the daemon did not stop within {timeout_s} s")
        if self._error is not None:
            raise self._error
        assert self._exit_code is not None
        return self._exit_code


class DaemonProcess:
    """``python -m linewatch run --config PATH`` in its own process, output captured to files."""

    def __init__(self, config: Path, env: dict[str, str] | None = None) -> None:
        self.config = config
        self.log_path = config.parent / f"daemon-{time.monotonic_ns()}.log"
        clean = {
            k: v for k, v in os.environ.items() if not k.startswith("LINEWATCH_") and k != "NOTIFY_SOCKET"
        }
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "linewatch", "run", "--config", str(config)],
            stdout=self._log, stderr=subprocess.STDOUT, env={**clean, **(env or {})}, cwd=REPO,
        )

    def wait(self, timeout_s: float = 60.0) -> int:
        try:
            return self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(f"daemon still running after {timeout_s} s:\n{self.output()}") from None
        finally:
            if not self._log.closed:
                self._log.flush()

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def output(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._log.close()


def journal_records(state_dir: Path) -> list[Any]:
    """Every result the daemon journaled, oldest first (read with the journal's own reader)."""
    from linewatch.publish.journal import Journal, JournalConfig

    journal = Journal(JournalConfig(state_dir=state_dir))
    try:
        return journal.query(limit=None)
    finally:
        journal.close()


def fit_bundle(
    products_dir: Path,
    product_id: str,
    good_images: list[npt.NDArray[np.uint8]],
    *,
    input_size: tuple[int, int] | None = None,
    backbone: Any = None,
    exposure_check: bool = True,
) -> Path:
    """``trainer fit`` on these good images (written as PNGs), with the session's tiny trained backbone."""
    import cv2
    from fit_support import tiny_backbone

    from trainer.fit import FitOptions, fit_product

    good = products_dir.parent / f"good-{product_id}"
    good.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(good_images):
        cv2.imwrite(str(good / f"{i:04d}.png"), image)
    result = fit_product(
        good, product_id, products_dir, backbone if backbone is not None else tiny_backbone(),
        # a plain holdout: one k-means instead of six keeps the daemon tests quick on two cores
        FitOptions(input_size=input_size, threads=1, calibration="holdout", calibration_fraction=0.4,
                   exposure_check=exposure_check),
    )
    return result.path


def fit_stripes_product(products_dir: Path, size: int, n_good: int = 40) -> Path:
    """``stripes-part``: fitted on good synthetic stripes parts (seed 5, other parts than the cameras' in the
    tests show) with a seeded, untrained FeatureNet(16). Daemon tests are about the daemon, not accuracy
    (benchmarks/accuracy.py is)."""
    import torch

    from linewatch.acquisition import SyntheticCameraConfig, SyntheticSource
    from trainer.model import FeatureNet

    good = SyntheticSource(SyntheticCameraConfig(family="stripes", width=size, height=size, defect_rate=0.0,
                                                 rate_hz=None, seed=5))
    torch.manual_seed(0)
    return fit_bundle(products_dir, "stripes-part", [good.render(i)[0] for i in range(n_good)],
                      backbone=FeatureNet(16))

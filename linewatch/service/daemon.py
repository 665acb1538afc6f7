"""``linewatch run``: the inspection daemon of one station (camera → model → verdicts over MQTT).

Start: settings (an invalid config prints every problem as ``location: message`` and exits 2), journal,
MQTT publisher (status ``starting``), the active product's bundle (verified), the camera source, then the
pipeline (the camera opened and the backend loaded on their own threads). Then ``READY=1`` and status
``online``. While running, the main thread publishes ``stats``, logs one summary line per interval, turns
the camera and product state into ``status`` (``degraded`` with the reason), and pings the systemd watchdog
only while every stage's heartbeat is fresh.

Metrics (``[metrics]``, Prometheus on a loopback port): the same pipeline snapshot that makes ``stats`` sets
the totals and levels four times a second (``_observe``), and the publishing stage hands every verdict to
``Metrics.observe_verdict`` (verdict counters, per-stage latency histograms).

Products: ``product/set`` and ``product/prepare`` (MQTT, or ``linewatch product set ID``) and SIGHUP (which
re-reads ``products.active`` from the config file) switch products through ``linewatch.products.switcher``:
prepared beside the running one, swapped in between two frames; every command is answered on
``product/response`` and the retained ``product`` state follows. ``feedback`` labels journal decisions and
fills the review folder; good-part score drift turns the status ``degraded`` and goes into ``stats``.

Stop: SIGTERM/SIGINT (or a finite source running out) → ``STOPPING=1``, drain in-flight frames, status
``stopped``, exit 0. A failure to start exits 1 with one clear line; a stage that dies exits 1 (systemd
restarts the service).

This module and everything it imports never imports torch: the daemon runs in its own process.
"""

from __future__ import annotations

import argparse
import faulthandler
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from types import FrameType
from typing import cast

from linewatch import __version__
from linewatch.acquisition import CameraConfig, FrameSource, make_source
from linewatch.acquisition.reconnect import Backoff, ReconnectConfig
from linewatch.bundle.manifest import BundleManifest
from linewatch.bundle.registry import LoadedBundle, load_product
from linewatch.config import LinewatchSettings, add_config_argument, format_problems, load_settings
from linewatch.errors import ConfigError, LinewatchError
from linewatch.inference.backend import InferenceBackend
from linewatch.inference.selection import create_backend
from linewatch.pipeline.pipeline import Pipeline, PipelineSnapshot, rates
from linewatch.pipeline.product import ActiveProduct
from linewatch.products.commands import ProductCommandHandler
from linewatch.products.drift import DriftMonitor, DriftSink
from linewatch.products.feedback import FeedbackRecorder
from linewatch.products.switcher import ProductSwitcher
from linewatch.publish.journal import Journal
from linewatch.publish.mqtt import MqttPublisher
from linewatch.publish.payloads import DriftStats, StageLatency, StatsPayload, StatusState, VerdictName
from linewatch.service.logging_setup import setup_logging, summary_line
from linewatch.service.metrics import Metrics, MetricsServer, serve
from linewatch.service.sdnotify import SystemdNotifier

log = logging.getLogger("linewatch.daemon")

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2
TICK_S = 0.25
# Counting the journal's unacknowledged rows is a query: once a second is fresh enough for a gauge.
JOURNAL_BACKLOG_INTERVAL_S = 1.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_argument(parser)


def run(args: argparse.Namespace) -> int:
    # A fatal signal prints every thread's stack to stderr (the journal): systemd's watchdog kills a stuck
    # daemon with SIGABRT, and the journal then shows which stage hung and where.
    faulthandler.enable(all_threads=True)
    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        print(format_problems(exc), file=sys.stderr)
        print(f"linewatch: invalid configuration ({len(exc.problems)} problem(s)); not started",
              file=sys.stderr)
        return EXIT_CONFIG
    setup_logging(settings.logging.level)
    daemon = Daemon(settings, config_path=args.config)
    daemon.install_signal_handlers()
    return daemon.run()


class Daemon:
    """One station's lifecycle around a Pipeline.

    ``source_factory`` makes the camera source from ``settings.camera`` (default: the acquisition package's
    ``make_source``); another factory plugs in another FrameSource, e.g. a test's fault-injecting one. The
    process's signal handlers are installed by ``run(args)``, not here, so a Daemon can also run inside
    another program: ``stop_requested.set()`` then does what SIGTERM does.
    """

    def __init__(
        self,
        settings: LinewatchSettings,
        config_path: Path | None = None,
        *,
        source_factory: Callable[[CameraConfig], FrameSource] = make_source,
    ) -> None:
        self.settings = settings
        self.config_path = config_path  # re-read on SIGHUP for products.active
        self.source_factory = source_factory
        self.pipeline: Pipeline | None = None  # the running line, from run() on (its counters stay readable)
        self.reload_requested = threading.Event()
        self.switcher: ProductSwitcher | None = None
        self.drift: DriftMonitor | None = None
        self.stop_requested = threading.Event()
        self.notifier = SystemdNotifier()
        self.backend_report: str | None = None
        self._status: tuple[StatusState, str | None] | None = None
        self._status_bundle: str | None = None
        self._signals = 0
        self.metrics: Metrics | None = None
        self._journal_backlog: int | None = None
        self._backlog_error_logged = False

    # -- signals -------------------------------------------------------------------------------------------

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._signals += 1
        if self._signals == 1:
            log.info("%s received: draining and stopping", signal.Signals(signum).name)
        self.stop_requested.set()

    def _on_sighup(self, signum: int, frame: FrameType | None) -> None:
        self.reload_requested.set()  # the main loop re-reads products.active (no work in a signal handler)

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGHUP, self._on_sighup)

    # -- pieces --------------------------------------------------------------------------------------------

    def _make_backend(self, bundle: LoadedBundle) -> InferenceBackend:
        backend, report = create_backend(self.settings.inference, bundle)
        log.info("%s", report)
        self.backend_report = report
        return backend

    def _load_active(self) -> LoadedBundle | None:
        products = self.settings.products
        if products.active is None:
            log.warning("no products.active configured: every frame is reported not_inspected")
            return None
        return load_product(products.dir, products.active)

    def _reload_active_product(self) -> None:
        """SIGHUP: re-read the config file and activate its ``products.active`` (prepared beside the running
        product, swapped in between two frames). A bad config or bundle leaves the running product."""
        if self.switcher is None or self.config_path is None:
            log.warning("SIGHUP: no config file to re-read; the product stays")
            return
        try:
            products = load_settings(self.config_path).products
        except ConfigError as exc:
            log.error("SIGHUP: %s is invalid, the product stays: %s", self.config_path,
                      "; ".join(f"{loc}: {msg}" for loc, msg in exc.problems))
            return
        if products.dir.resolve() != self.settings.products.dir.resolve():
            log.warning("SIGHUP: products.dir changed to %s; that takes a restart (still reading %s)",
                        products.dir, self.settings.products.dir)
        if products.active is None:
            log.warning("SIGHUP: products.active is not set in %s; the product stays", self.config_path)
            return
        log.info("SIGHUP: activating products.active = %s", products.active)
        wanted = products.active

        def done(future: Future[ActiveProduct]) -> None:
            exc = future.exception()
            if exc is None:
                log.info("SIGHUP: %s active (bundle %s)", wanted, future.result().bundle_id)
            else:
                log.error("SIGHUP: %s not activated, the product stays: %s", wanted, exc)

        self.switcher.activate(wanted).add_done_callback(done)

    # -- run -----------------------------------------------------------------------------------------------

    def run(self) -> int:
        settings = self.settings
        station = settings.station.id
        try:
            journal = Journal(settings.journal)
        except LinewatchError as exc:
            print(f"linewatch: cannot start: {exc}", file=sys.stderr)
            return EXIT_FAILURE
        publisher: MqttPublisher | None = None
        server: MetricsServer | None = None
        try:
            if settings.metrics.enabled:
                self.metrics = Metrics(station=station)
                server = serve(settings.metrics, self.metrics)  # a port in use: ConfigError naming it
                log.info("metrics on http://%s:%d/metrics", settings.metrics.host, server.port)
            publisher = MqttPublisher(settings.mqtt, station, journal, version=__version__)
            self._set_status(publisher, "starting", None)
            publisher.start()
            return self._run_with(journal, publisher)
        except LinewatchError as exc:
            print(f"linewatch: cannot start: {exc}", file=sys.stderr)
            if publisher is not None:
                self._close_publisher(publisher, f"start failed: {exc}", timeout_s=2.0)
            return EXIT_FAILURE
        finally:
            if server is not None:
                server.shutdown()
            self.notifier.close()
            journal.close()

    def _run_with(self, journal: Journal, publisher: MqttPublisher) -> int:
        settings = self.settings
        bundle = self._load_active()
        source = self.source_factory(settings.camera)
        last_seq = journal.last_seq()
        first_seq = 0 if last_seq is None else last_seq + 1
        reconnect = getattr(settings.camera, "reconnect", None)  # replay sources have no reconnect section
        if not isinstance(reconnect, ReconnectConfig):
            reconnect = ReconnectConfig()

        def manifest_for(bundle_id: str) -> BundleManifest | None:
            # Verdicts come only after pipeline.start(), so `pipeline` (bound below) exists by then.
            product = pipeline.product
            return product.bundle.manifest if product is not None and product.bundle_id == bundle_id else None

        # The drift monitor sees every verdict right after the publisher has it.
        self.drift = DriftMonitor(settings.products.drift, manifest_for)
        pipeline = Pipeline(
            source,
            self._make_backend,
            DriftSink(publisher, self.drift),
            bundle=bundle,
            queue_size=settings.queue.size,
            overflow=settings.queue.overflow,
            first_seq=first_seq,
            read_timeout_s=float(getattr(settings.camera, "fetch_timeout_s", 1.0)),
            backoff=Backoff.from_config(reconnect),
            heatmaps=settings.mqtt.heatmap_max_per_s > 0,
            heatmap_max_side=settings.scoring.heatmap_max_side_px,
            image_store=journal,
            observer=None if self.metrics is None else self.metrics.observe_verdict,
            # the longest window a snapshot is taken over: latency samples older than that are let go
            latency_horizon_s=max(settings.service.stats_interval_s, settings.logging.summary_interval_s),
        )
        self.pipeline = pipeline
        self.switcher = ProductSwitcher(
            settings.products.dir,
            pipeline.holder,
            self._make_backend,
            max_prepared=settings.products.max_prepared,
            activate_timeout_s=settings.products.command_timeout_s,
            on_state=publisher.publish_product_state,
        )
        log.info("starting station %s: camera %s, product %s, first seq %d", settings.station.id,
                 source.name, "none" if bundle is None else bundle.bundle_id, first_seq)
        try:
            pipeline.start(timeout_s=settings.service.start_timeout_s)  # raises PipelineStartError
        except BaseException:
            self.switcher.close()
            raise
        self.switcher.publish_state()
        review_dir = settings.products.review_dir or settings.state_dir / "review"
        publisher.subscribe_commands(
            ProductCommandHandler(self.switcher, FeedbackRecorder(journal, review_dir),
                                  timeout_s=settings.products.command_timeout_s)
        )
        started = pipeline.snapshot()
        self._update_status(publisher, started)
        self._refresh_journal_backlog(journal)
        self._observe(started, publisher)
        self.notifier.ready(f"inspecting: {source.name}")
        log.info("running (%s)", self.backend_report or "no product loaded")
        exit_code = self._watch(publisher, pipeline, journal)
        self.notifier.stopping("draining in-flight frames")
        drained = pipeline.stop(drain_timeout_s=settings.service.drain_timeout_s)
        self.switcher.close()  # a command still arriving is answered: the switcher is closed
        final = pipeline.snapshot(window_s=settings.logging.summary_interval_s)
        self._observe(final, publisher, stopped=True)  # the last scrape sees every frame of the run
        log.info("stopped; over the whole run: %s", summary_line(final, started))
        if pipeline.failed_stages:
            reason = "; ".join(f"{name} stage failed: {exc}" for name, exc in pipeline.failed_stages)
            self._close_publisher(publisher, reason, timeout_s=settings.service.drain_timeout_s)
            print(f"linewatch: {reason}", file=sys.stderr)
            return EXIT_FAILURE
        reason = "source exhausted" if pipeline.finished and not self.stop_requested.is_set() else "signal"
        self._close_publisher(publisher, reason, timeout_s=max(2.0, settings.service.drain_timeout_s))
        if not drained:
            log.error("some stages did not end in time")
            return EXIT_FAILURE
        return exit_code

    def _watch(self, publisher: MqttPublisher, pipeline: Pipeline, journal: Journal) -> int:
        """The main thread's loop until a stop is requested, the source ends or a stage dies."""
        service = self.settings.service
        summary_s = self.settings.logging.summary_interval_s
        now = time.monotonic()
        next_stats = now + service.stats_interval_s
        next_summary = now + summary_s
        next_watchdog = now
        next_backlog = now + JOURNAL_BACKLOG_INTERVAL_S
        last_stats: PipelineSnapshot | None = pipeline.snapshot()
        last_summary: PipelineSnapshot | None = last_stats
        while not self.stop_requested.wait(TICK_S):
            if pipeline.failed_stages:
                return EXIT_FAILURE
            if pipeline.finished:
                return EXIT_OK
            if self.reload_requested.is_set():
                self.reload_requested.clear()
                self._reload_active_product()
            now = time.monotonic()
            interval = self.notifier.watchdog_interval_s
            if interval is not None and now >= next_watchdog:
                # A stuck stage stops the pings; systemd then restarts the service (WatchdogSec=).
                if pipeline.heartbeats_fresh(service.heartbeat_timeout_s):
                    self.notifier.watchdog()
                    next_watchdog = now + interval
                else:
                    stale = {k: round(v, 1) for k, v in pipeline.snapshot().heartbeat_age_s.items()}
                    log.error("stage heartbeat stale (%s): not pinging the watchdog", stale)
                    next_watchdog = now + interval
            if now >= next_backlog:
                self._refresh_journal_backlog(journal)
                next_backlog = now + JOURNAL_BACKLOG_INTERVAL_S
            snap = pipeline.snapshot(window_s=service.stats_interval_s)
            self._update_status(publisher, snap)
            self._observe(snap, publisher)
            if now >= next_stats:
                drift = None if self.drift is None else self.drift.assess().stats
                publisher.publish_stats(stats_payload(snap, last_stats, drift, self._journal_backlog))
                last_stats = snap
                next_stats = now + service.stats_interval_s
            if now >= next_summary:
                summary = pipeline.snapshot(window_s=summary_s)
                line = summary_line(summary, last_summary)
                log.info("%s", line)
                self.notifier.status(line)
                last_summary = summary
                next_summary = now + summary_s
        return EXIT_OK

    # -- figures -------------------------------------------------------------------------------------------

    def _refresh_journal_backlog(self, journal: Journal) -> None:
        try:
            self._journal_backlog = journal.unpublished_count()
        except LinewatchError as exc:  # a busy or damaged journal: keep the last figure, say so once
            if not self._backlog_error_logged:
                log.warning("cannot count the journal backlog: %s", exc)
                self._backlog_error_logged = True

    def _observe(self, snap: PipelineSnapshot, publisher: MqttPublisher, *, stopped: bool = False) -> None:
        """The one place the periodic figures reach /metrics; ``stats`` is made of the same snapshot (and
        per-verdict counters and latencies come from the publishing stage's observer)."""
        metrics = self.metrics
        if metrics is None:
            return
        metrics.set_frame_totals(acquired=snap.acquisition.frames, dropped=snap.dropped)
        metrics.set_queue_depth(snap.queue_depth)
        metrics.set_camera_state(snap.camera_state)
        if stopped:  # the pipeline has closed its product: no bundle is active any more
            metrics.set_product(None, None, None, snap.product_switches)
        else:
            metrics.set_product(snap.product_id, snap.bundle_id, snap.backend, snap.product_switches)
        metrics.set_broker_connected(publisher.connected)
        if self._journal_backlog is not None:
            metrics.set_journal_backlog(self._journal_backlog)

    def _set_status(
        self, publisher: MqttPublisher, state: StatusState, reason: str | None, **fields: str | None
    ) -> None:
        if self.metrics is not None:
            self.metrics.set_status(state)
        publisher.set_status(state, reason, **fields)

    def _close_publisher(self, publisher: MqttPublisher, reason: str, timeout_s: float) -> None:
        if self.metrics is not None:
            self.metrics.set_status("stopped")
        publisher.close("stopped", reason, timeout_s=timeout_s)

    def _update_status(self, publisher: MqttPublisher, snap: PipelineSnapshot) -> None:
        """status = online, or degraded with the reason (camera away, no product, publishing failing)."""
        state: StatusState = "online"
        reason: str | None = None
        if snap.camera_state == "reconnecting":
            state, reason = "degraded", f"camera reconnecting: {snap.camera_reason}"
        elif snap.product_id is None:
            state, reason = "degraded", "no active product: frames are not inspected"
        elif snap.publish_errors:
            state, reason = "degraded", f"{snap.publish_errors} result(s) could not be journaled/published"
        elif self.drift is not None and (drift := self.drift.assess()).degraded:
            state, reason = "degraded", drift.reason
        previous = self._status
        # A product switch changes the status's product/bundle/backend too: re-publish it then.
        if previous == (state, reason) and self._status_bundle == snap.bundle_id:
            return
        self._status_bundle = snap.bundle_id
        if previous != (state, reason):
            self._status = (state, reason)
            if state == "degraded":
                log.warning("status degraded: %s", reason)
            elif previous is not None:
                log.info("status online again")
        self._set_status(
            publisher,
            state,
            reason,
            product=snap.product_id,
            bundle=snap.bundle_id,
            backend=snap.backend,
            camera=snap.camera_state,
        )


def stats_payload(
    snap: PipelineSnapshot,
    previous: PipelineSnapshot | None,
    drift: DriftStats | None = None,
    journal_backlog: int | None = None,
) -> StatsPayload:
    """The ``stats`` message: rates since ``previous``, latency percentiles over the snapshot's window, counts
    since start (the figures /metrics shows), and the good-part score drift figures."""
    fps_in, fps_out, interval_s = rates(snap, previous)
    total = snap.latency.get("total")
    return StatsPayload(
        interval_s=interval_s,
        fps_in=fps_in,
        fps_out=fps_out,
        frames_in=snap.frames_in,
        frames_out=snap.frames_out,
        dropped=snap.dropped,
        queue_depth=snap.queue_depth,
        latency_p50_ms=None if total is None else total.p50_ms,
        latency_p99_ms=None if total is None else total.p99_ms,
        pass_count=snap.passed,
        fail_count=snap.failed,
        not_inspected_count=snap.not_inspected,
        frames_acquired=snap.acquisition.frames,
        frames_inspected=snap.passed + snap.failed,
        verdicts=cast("dict[str, dict[VerdictName, int]]", snap.verdicts),  # keys are VerdictKind values
        latency_ms={
            stage: StageLatency(p50_ms=summary.p50_ms, p99_ms=summary.p99_ms)
            for stage, summary in snap.latency.items()
        },
        journal_backlog=journal_backlog,
        camera=snap.camera_state,
        product_switches=snap.product_switches,
        product=snap.product_id,
        bundle=snap.bundle_id,
        backend=snap.backend,
        drift=drift,
    )

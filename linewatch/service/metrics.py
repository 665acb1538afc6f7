"""Prometheus endpoint: the daemon's counters, latencies and states on ``http://127.0.0.1:<port>/metrics``.

Every ``Metrics`` owns a private ``CollectorRegistry`` (never the library's global one), so tests and a
process with several pipelines can hold as many as they like. The daemon feeds it from one place, the
pipeline's periodic snapshot (the one ``stats`` is made of: running totals and levels through ``set_*``),
plus every verdict as the publishing stage hands it on (``observe_verdict``: verdict counters and latency
histograms). Nothing here reads a config with secrets, and label values are bounded (known stage names,
product ids, a capped set of camera states), so ``/metrics`` can neither leak a password nor grow without
bound.

Exposed families (all ``linewatch_`` except the standard ``process_`` ones):

    linewatch_frames_acquired_total            frames copied out of the camera
    linewatch_frames_inspected_total           frames that got a pass or fail verdict
    linewatch_frames_not_inspected_total       frames that got a not_inspected result (drops included)
    linewatch_frames_dropped_total             frames removed by the queue's overflow policy
    linewatch_verdicts_total{product,verdict}  results per product and verdict (pass|fail|not_inspected)
    linewatch_stage_latency_seconds{stage}     histogram: queue, inference, scoring, publish, total
    linewatch_queue_depth{queue}               items waiting in a pipeline queue
    linewatch_journal_backlog                  results on disk not yet acknowledged by the broker
    linewatch_broker_connected                 1 while the MQTT connection is up
    linewatch_camera_state{state}              1 for the camera's current state, 0 for states seen before
    linewatch_status{linewatch_status}         the daemon's status (starting|online|degraded|stopped|offline)
    linewatch_product_switches_total           activations of a different product while running
    linewatch_bundle_info{product,bundle,backend}  the active bundle (value 1; empty labels while none is
                                               active: no product loaded, or the daemon has stopped)
    linewatch_build_info{version,station}      this daemon (value 1)
    process_resident_memory_bytes, process_virtual_memory_bytes, process_open_fds, process_max_fds,
    process_threads, process_cpu_seconds_total  read from /proc/self only (works even with ProcSubset=pid)
"""

from __future__ import annotations

import contextlib
import math
import os
import resource
import socket
import threading
from collections.abc import Iterable
from typing import get_args
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Counter, Enum, Gauge, Histogram, Info, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.registry import Collector
from pydantic import BaseModel, ConfigDict, Field

from linewatch import __version__
from linewatch.errors import ConfigError
from linewatch.frames import Verdict, VerdictKind
from linewatch.publish.payloads import StatusState

# Pipeline stages with a latency histogram; the first three and total are the keys the pipeline writes
# into Verdict.latencies_ms. queue: wait for the inference thread; inference: preprocessing + backend;
# scoring: decision, location, heatmap; publish: journal write + hand-over to the MQTT client (measured
# by the caller around publish_result); total: copied out of the camera → handed to the publisher.
STAGES: tuple[str, ...] = ("queue", "inference", "scoring", "publish", "total")

# Seconds. Fine steps from 0.5 ms (a GPU forward pass) to 10 s (a broker outage held in the queue).
LATENCY_BUCKETS_S: tuple[float, ...] = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)

# Camera states are whatever the acquisition stage reports ("streaming", "reconnecting", ...); more
# distinct names than this are folded into "other" so a bug cannot create unbounded series.
MAX_CAMERA_STATES = 16

STATUS_STATES: tuple[str, ...] = get_args(StatusState)


class MetricsConfig(BaseModel):
    """The ``[metrics]`` section: the Prometheus endpoint."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(default=True, description="serve /metrics for Prometheus")
    host: str = Field(
        default="127.0.0.1",
        min_length=1,
        description="address to listen on; loopback by default (scrape through a local agent or an SSH "
        "tunnel). 0.0.0.0 exposes it to the network: protect it with a firewall",
    )
    port: int = Field(
        default=9850,
        ge=1,
        le=65535,
        description="TCP port; give every instance (station) on one host its own port",
    )


class _ProcessCollector(Collector):
    """RSS, fds, threads and CPU time from /proc/self, os.times() and getrlimit.

    prometheus_client's own ProcessCollector needs /proc/stat (boot time) and silently reports nothing
    when it is hidden (ProcSubset=pid, or a container's masked /proc); these files stay visible.
    """

    def collect(self) -> Iterable[Metric]:
        values: dict[str, tuple[str, float]] = {}
        page = resource.getpagesize()
        # A file that cannot be read only leaves its metric out; a scrape never fails because of it.
        with contextlib.suppress(OSError), open("/proc/self/statm", "rb") as statm:
            vm_pages, rss_pages = (int(v) for v in statm.read().split()[:2])
            values["virtual_memory_bytes"] = ("Virtual memory size in bytes.", vm_pages * page)
            values["resident_memory_bytes"] = ("Resident memory size in bytes.", rss_pages * page)
        with contextlib.suppress(OSError):
            values["open_fds"] = ("Number of open file descriptors.", len(os.listdir("/proc/self/fd")))
        soft_limit, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        values["max_fds"] = ("Maximum number of open file descriptors.", soft_limit)
        with contextlib.suppress(OSError, StopIteration), open("/proc/self/status", "rb") as status:
            threads = next(int(line.split()[1]) for line in status if line.startswith(b"Threads:"))
            values["threads"] = ("Number of OS threads (native runtime threads included).", threads)
        families: list[Metric] = [
            GaugeMetricFamily(f"process_{name}", text, value=value) for name, (text, value) in values.items()
        ]
        times = os.times()
        families.append(
            CounterMetricFamily(
                "process_cpu_seconds_total",
                "Total user and system CPU time spent in seconds.",
                value=times.user + times.system,
            )
        )
        return families


class Metrics:
    """The daemon's metrics in one private registry. Every method is thread-safe and cheap (no I/O)."""

    def __init__(self, registry: CollectorRegistry | None = None, *, station: str = "") -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        self._acquired = Counter("linewatch_frames_acquired", "Frames copied out of the camera.", registry=r)
        self._inspected = Counter(
            "linewatch_frames_inspected", "Frames that got a pass or fail verdict.", registry=r
        )
        self._not_inspected = Counter(
            "linewatch_frames_not_inspected",
            "Frames that got a not_inspected result (camera, inference or queue faults; drops included).",
            registry=r,
        )
        self._dropped = Counter(
            "linewatch_frames_dropped", "Frames removed by the queue's overflow policy.", registry=r
        )
        self._verdicts = Counter(
            "linewatch_verdicts",
            "Results per product and verdict (pass, fail, not_inspected).",
            ["product", "verdict"],
            registry=r,
        )
        self._latency = Histogram(
            "linewatch_stage_latency_seconds",
            "Time spent per pipeline stage: acquire, queue, infer, publish; total = acquired to published.",
            ["stage"],
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        for stage in STAGES:  # every stage appears from the first scrape, even before traffic
            self._latency.labels(stage=stage)
        self._queue_depth = Gauge(
            "linewatch_queue_depth", "Items waiting in a pipeline queue.", ["queue"], registry=r
        )
        self._journal_backlog = Gauge(
            "linewatch_journal_backlog",
            "Results on disk (journal) not yet acknowledged by the broker.",
            registry=r,
        )
        self._broker_connected = Gauge(
            "linewatch_broker_connected", "1 while the MQTT connection is up, else 0.", registry=r
        )
        self._camera_state = Gauge(
            "linewatch_camera_state",
            "1 for the camera's current state, 0 for the states it was in before.",
            ["state"],
            registry=r,
        )
        self._camera_states_seen: set[str] = set()
        self._camera_lock = threading.Lock()
        self._status = Enum(
            "linewatch_status", "The daemon's status, as published on MQTT.", states=list(STATUS_STATES),
            registry=r,
        )
        self._switches = Counter(
            "linewatch_product_switches", "Activations of a different product while running.", registry=r
        )
        self._bundle = Info("linewatch_bundle", "The active product bundle.", registry=r)
        self._bundle_labels: dict[str, str] | None = None
        # Totals already counted of what the pipeline reports as running totals (acquired, dropped, switches).
        self._totals: dict[str, int] = {}
        self._totals_lock = threading.Lock()
        Info("linewatch_build", "This linewatch daemon.", registry=r).info(
            {"version": __version__, "station": station}
        )
        r.register(_ProcessCollector())

    # --- frames and verdicts ---

    def set_frame_totals(self, *, acquired: int, dropped: int) -> None:
        """Frames acquired and dropped since start, as the pipeline counts them (its periodic snapshot):
        each counter advances to its total (a counter never goes back)."""
        with self._totals_lock:
            self._advance(self._acquired, "acquired", acquired)
            self._advance(self._dropped, "dropped", dropped)

    def _advance(self, counter: Counter, key: str, total: int) -> None:
        step = total - self._totals.get(key, 0)
        if step > 0:
            counter.inc(step)
            self._totals[key] = total

    def observe_verdict(self, verdict: Verdict) -> None:
        """One result, of any kind: counts it per product and verdict, and observes the stage latencies
        the pipeline recorded in ``verdict.latencies_ms`` (keys outside STAGES are ignored)."""
        for stage, ms in verdict.latencies_ms.items():
            if stage in STAGES and math.isfinite(ms):
                self._latency.labels(stage=stage).observe(ms / 1000.0)
        kind = VerdictKind(verdict.verdict)
        self._verdicts.labels(product=verdict.product_id or "", verdict=kind.value).inc()
        if kind is VerdictKind.NOT_INSPECTED:
            self._not_inspected.inc()
        else:
            self._inspected.inc()

    def observe_stage_latency(self, stage: str, seconds: float) -> None:
        """``stage`` is one of STAGES (a typo is a programming error, not a new series)."""
        if stage not in STAGES:
            raise ValueError(f"unknown pipeline stage {stage!r}; expected one of {', '.join(STAGES)}")
        self._latency.labels(stage=stage).observe(seconds)

    # --- levels and states ---

    def set_queue_depth(self, depth: int, queue: str = "inference") -> None:
        self._queue_depth.labels(queue=queue).set(depth)

    def set_journal_backlog(self, count: int) -> None:
        self._journal_backlog.set(count)

    def set_broker_connected(self, connected: bool) -> None:
        self._broker_connected.set(1 if connected else 0)

    def set_camera_state(self, state: str) -> None:
        with self._camera_lock:
            if state not in self._camera_states_seen and len(self._camera_states_seen) >= MAX_CAMERA_STATES:
                state = "other"
            self._camera_states_seen.add(state)
            for seen in self._camera_states_seen:
                self._camera_state.labels(state=seen).set(1 if seen == state else 0)

    def set_status(self, state: str) -> None:
        """One of starting, online, degraded, stopped, offline (``StatusState``)."""
        self._status.state(state)

    def set_product(
        self, product: str | None, bundle: str | None, backend: str | None, switches: int
    ) -> None:
        """The active product (``None``: none loaded) and the product switches since start (the pipeline's
        count: activations of a different product after the first one)."""
        with self._totals_lock:
            self._advance(self._switches, "switches", switches)
            info = {"product": product or "", "bundle": bundle or "", "backend": backend or ""}
            if info != self._bundle_labels:
                self._bundle.info(info)
                self._bundle_labels = info


class _QuietHandler(WSGIRequestHandler):
    """No access log lines: a scrape every few seconds would flood the journal."""

    def log_message(self, format: str, *args: object) -> None:
        pass


class MetricsServer:
    """The running HTTP endpoint; ``shutdown()`` stops it and joins its thread."""

    def __init__(self, httpd: WSGIServer, thread: threading.Thread) -> None:
        self._httpd = httpd
        self._thread = thread

    @property
    def host(self) -> str:
        return str(self._httpd.server_address[0])

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    def shutdown(self, timeout_s: float = 5.0) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout_s)


def serve(config: MetricsConfig, metrics: Metrics) -> MetricsServer:
    """Listen on ``config.host:config.port`` (port 0: any free port) and serve ``metrics``.

    Raises ConfigError when the address cannot be bound (another instance on the same port, a host name
    that does not resolve), naming the setting to change.
    """
    try:
        family, _, _, _, sockaddr = socket.getaddrinfo(
            config.host, config.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as exc:
        raise ConfigError([("metrics.host", f"cannot resolve {config.host!r}: {exc.strerror}")]) from exc

    class _Server(ThreadingWSGIServer):
        address_family = family

    try:
        app = make_wsgi_app(metrics.registry)
        httpd = make_server(str(sockaddr[0]), config.port, app, _Server, handler_class=_QuietHandler)
    except OSError as exc:
        raise ConfigError(
            [("metrics.port", f"cannot listen on {config.host}:{config.port}: {exc.strerror or exc}")]
        ) from exc
    thread = threading.Thread(target=httpd.serve_forever, name="linewatch-metrics", daemon=True)
    thread.start()
    return MetricsServer(httpd, thread)

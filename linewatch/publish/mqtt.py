"""MqttPublisher: results, rejects, heatmaps, status, stats and product state over MQTT (paho-mqtt 2.x).

The only module that imports paho. Threads (DOCUMENTED CONTRACT):

* paho's network thread (``loop_start``) runs connect/reconnect with back-off and the paho callbacks.
  Callbacks only record state and enqueue work; they never block and never raise.
* The caller's thread (the pipeline's publisher stage) calls ``publish_result`` etc.; it is never
  blocked by the network: a result is appended to the journal's writer queue and handed to paho.
* ``linewatch-mqtt-replay``: re-sends unpublished journal rows (from a previous run, or spilled while the
  broker was away) in order, before new results go straight to paho again.
* ``linewatch-mqtt-commands``: parses commands from product/set, product/prepare and feedback and calls
  the handler given to ``subscribe_commands`` — one command at a time, in arrival order.

Delivery: the journal is the outbox (at-least-once, in order). See ``publish_result``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from linewatch import __version__
from linewatch.frames import Verdict, VerdictKind
from linewatch.publish.journal import Journal
from linewatch.publish.payloads import (
    DEFAULT_MAX_COMMAND_BYTES,
    Command,
    ProductStatePayload,
    PublisherStats,
    StatsPayload,
    StatusPayload,
    StatusState,
)
from linewatch.publish.topics import Topics, validate_prefix


class MqttTlsConfig(BaseModel):
    """TLS to the broker."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(default=False, description="connect with TLS (usually port 8883)")
    ca_file: Path | None = Field(
        default=None,
        description="CA certificate(s) that signed the broker's certificate (PEM); required when enabled "
        "(for a public CA use the system bundle, e.g. /etc/ssl/certs/ca-certificates.crt)",
    )
    cert_file: Path | None = Field(default=None, description="client certificate (PEM) for mutual TLS")
    key_file: Path | None = Field(default=None, description="private key (PEM) of cert_file")
    insecure: bool = Field(
        default=False, description="skip the broker host name check (testing only: allows man-in-the-middle)"
    )

    @model_validator(mode="after")
    def _files_exist(self) -> MqttTlsConfig:
        if not self.enabled:
            return self
        if self.ca_file is None:
            raise ValueError("tls.enabled is true but tls.ca_file is not set: name the broker's CA file")
        for name in ("ca_file", "cert_file", "key_file"):
            path: Path | None = getattr(self, name)
            if path is not None and not path.is_file():
                raise ValueError(f"tls.{name} {str(path)!r} does not exist or is not a file")
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("tls.cert_file and tls.key_file must be given together (mutual TLS)")
        return self


class MqttConfig(BaseModel):
    """The ``[mqtt]`` section."""

    model_config = ConfigDict(extra="forbid")

    host: str = Field(default="localhost", min_length=1, description="broker host name or address")
    port: int = Field(default=1883, ge=1, le=65535, description="broker port (1883 plain, 8883 TLS)")
    protocol: Literal["5", "3.1.1"] = Field(
        default="5", description="MQTT protocol version; on 3.1.1 heatmaps carry their seq in the topic"
    )
    tls: MqttTlsConfig = Field(default_factory=MqttTlsConfig, description="TLS settings")
    username: str | None = Field(default=None, description="user name for the broker")
    password: SecretStr | None = Field(
        default=None, description="password for the broker (prefer $CREDENTIALS_DIRECTORY; never logged)"
    )
    client_id: str | None = Field(
        default=None, max_length=128, description="MQTT client id; default linewatch-<station>"
    )
    qos: Literal[0, 1, 2] = Field(default=1, description="QoS of result, reject, status and product state")
    topic_prefix: str = Field(default="linewatch", description="topics are <topic_prefix>/<station>/...")
    keepalive_s: int = Field(default=30, ge=5, le=3600, description="MQTT keep-alive interval")
    reconnect_min_delay_s: int = Field(
        default=1, ge=1, description="first reconnect delay (doubles each try)"
    )
    reconnect_max_delay_s: int = Field(default=30, ge=1, description="longest reconnect delay")
    heatmap_every_nth_pass: int = Field(
        default=0, ge=0, description="publish the heatmap of every Nth pass (0 = never; every fail always)"
    )
    heatmap_max_per_s: float = Field(
        default=5.0, ge=0, description="rate limit for heatmaps, fails included (0 = no heatmaps at all)"
    )
    heatmap_qos: Literal[0, 1] = Field(default=0, description="QoS of heatmaps (large; usually 0)")
    max_inflight: int = Field(
        default=100,
        ge=1,
        le=65535,
        description="QoS>0 messages on the wire awaiting the broker's acknowledgement",
    )
    max_pending: int = Field(
        default=10000,
        ge=1,
        description="results held in memory awaiting acknowledgement; beyond it they wait on disk only "
        "(journal) and are re-sent in order after reconnect",
    )
    max_command_bytes: int = Field(
        default=DEFAULT_MAX_COMMAND_BYTES,
        ge=64,
        le=1 << 20,
        description="larger commands are refused unparsed",
    )
    command_queue_size: int = Field(
        default=64, ge=1, description="commands waiting for the handler; more are refused"
    )

    @model_validator(mode="after")
    def _check(self) -> MqttConfig:
        validate_prefix(self.topic_prefix)
        if self.reconnect_max_delay_s < self.reconnect_min_delay_s:
            raise ValueError("reconnect_max_delay_s must be >= reconnect_min_delay_s")
        return self


# Called on the linewatch-mqtt-commands thread with a parsed, validated command. Return normally for an
# "ok" answer; raise CommandError(reason) for an error answer (any other exception is answered as an
# internal error and logged). Either way exactly one CommandResponse goes to product/response.
CommandHandler = Callable[[Command], None]


class MqttPublisher:
    """Publishes one station's verdicts and health to an MQTT broker; the journal is its outbox.

    Lifecycle: ``MqttPublisher(config, station, journal)`` → ``start()`` → publish_* … → ``close()``.
    """

    def __init__(self, config: MqttConfig, station: str, journal: Journal, *, version: str = __version__):
        self.config = config
        self.topics = Topics.for_station(config.topic_prefix, station)
        self.journal = journal
        self.station = station
        self.version = version
        raise NotImplementedError("implementation follows")

    def start(self) -> None:
        """Connect in the background (``connect_async`` + ``loop_start``) and return at once.

        The broker not being reachable is not an error: the client retries with back-off and results wait
        in the journal. Unpublished rows from a previous run are queued for sending before any new result.
        """
        raise NotImplementedError

    def close(
        self, state: StatusState = "stopped", reason: str | None = None, timeout_s: float = 5.0
    ) -> None:
        """Publish the final status (retained), wait up to ``timeout_s`` for acknowledgements, disconnect.

        Results not acknowledged by then stay unpublished in the journal and are sent after the next start.
        Does not close the journal (its owner does).
        """
        raise NotImplementedError

    @property
    def connected(self) -> bool:
        raise NotImplementedError

    def set_status(
        self,
        state: StatusState,
        reason: str | None = None,
        *,
        product: str | None = None,
        bundle: str | None = None,
        backend: str | None = None,
        camera: str | None = None,
    ) -> StatusPayload:
        """Publish ``status`` (retained, QoS ``config.qos``) and remember it; it is re-published after every
        reconnect. ``product``/``bundle``/``backend``/``camera`` = None keeps the previous value; ``reason``
        is always replaced. Returns the payload published."""
        raise NotImplementedError

    def publish_result(self, verdict: Verdict, acquired_unix_ns: int | None = None) -> None:
        """Journal the verdict, then publish ``result`` (and ``reject`` if it is not a pass), QoS ``qos``.

        Never blocks on the network and never raises for broker trouble. Order is kept: while replaying
        older unpublished rows (after a reconnect that overflowed ``max_pending``, or from a previous run),
        new results are journaled only and follow the replay. At-least-once: a result may be delivered twice
        after an outage (de-duplicate by ``seq``); none is lost while the journal's disk is intact.
        Call from one thread (the pipeline's publisher stage), in ``seq`` order.
        """
        raise NotImplementedError

    def heatmap_wanted(self, verdict: VerdictKind) -> bool:
        """Ask before rendering: True for every fail and every ``heatmap_every_nth_pass``-th pass, within
        ``heatmap_max_per_s`` and only while connected. A True answer takes a slot of the rate limit,
        so call ``publish_heatmap`` for it. ``not_inspected`` has no heatmap."""
        raise NotImplementedError

    def publish_heatmap(self, seq: int, png: bytes) -> None:
        """Publish a PNG on ``heatmap`` (MQTT 5: content type image/png, user property seq) or
        ``heatmap/<seq>`` (MQTT 3.1.1). Not journaled; dropped (counted) while disconnected."""
        raise NotImplementedError

    def publish_stats(self, payload: StatsPayload) -> None:
        """Publish ``stats`` (QoS 0, not retained); fills ``payload.publisher`` with this publisher's
        counters when it is None."""
        raise NotImplementedError

    def publish_product_state(self, payload: ProductStatePayload) -> None:
        """Publish ``product`` (retained, QoS ``qos``); re-published after every reconnect."""
        raise NotImplementedError

    def subscribe_commands(self, handler: CommandHandler) -> None:
        """Subscribe product/set, product/prepare and feedback (renewed after every reconnect) and call
        ``handler`` for each valid command on the ``linewatch-mqtt-commands`` thread.

        Oversized, non-JSON, wrongly typed or unknown commands are answered with an error on
        product/response without calling the handler. Call before or after ``start``.
        """
        raise NotImplementedError

    def stats(self) -> PublisherStats:
        """A snapshot of the publisher's counters."""
        raise NotImplementedError

    def flush(self, timeout_s: float = 5.0) -> bool:
        """Wait until every journaled result has been acknowledged by the broker; True if it happened in
        time. For tests and orderly shutdown."""
        raise NotImplementedError

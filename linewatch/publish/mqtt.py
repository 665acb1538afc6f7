"""MqttPublisher: results, rejects, heatmaps, status, stats and product state over MQTT (paho-mqtt 2.x).

The only module that imports paho. Threads (DOCUMENTED CONTRACT):

* paho's network thread (``loop_start``) runs connect/reconnect with back-off and the paho callbacks.
  Callbacks only record state and enqueue work; they never block and never raise.
* The caller's thread (the pipeline's publishing stage) calls ``publish_result`` etc.; it is never
  blocked by the network: a result is appended to the journal's writer queue and, while connected and
  caught up, handed to paho (``client.publish`` only queues; the network thread writes).
* ``linewatch-mqtt-replay``: once connected, sends the journal's unpublished rows (from a previous run, or
  journaled while the broker was away) oldest first, before new results go straight to paho again.
* ``linewatch-mqtt-commands``: parses commands from product/set, product/prepare and feedback and calls
  the handler given to ``subscribe_commands`` — one command at a time, in arrival order.

Delivery: the journal is the outbox (at-least-once, in order). See ``publish_result``.
"""

from __future__ import annotations

import logging
import queue
import ssl
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from linewatch import __version__
from linewatch.errors import CommandError, PublishError
from linewatch.frames import Verdict, VerdictKind
from linewatch.publish.journal import Journal
from linewatch.publish.payloads import (
    DEFAULT_MAX_COMMAND_BYTES,
    Command,
    CommandName,
    CommandResponse,
    FeedbackPayload,
    ProductCommand,
    ProductStatePayload,
    PublisherStats,
    RejectPayload,
    ResultPayload,
    StatsPayload,
    StatusPayload,
    StatusState,
    parse_command,
    request_id_of,
)
from linewatch.publish.topics import Topics, validate_prefix

log = logging.getLogger(__name__)


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
        le=30000,  # two MQTT packet ids per reject; ids are 16 bit
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

_UNTRACKED = -1  # mid of a message that is not a journal record (status, heatmap, stats, ...)
_SENDING = 0  # placeholder mid (paho's are 1..65535) while a record's messages are being handed over
_REPLAY_BATCH = 500


def publish_error(rc: MQTTErrorCode | ReasonCode | int, what: str) -> PublishError:
    """The one translation of a paho error code / MQTT 5 reason code into linewatch's error tree."""
    if isinstance(rc, ReasonCode):
        text = f"reason code {rc.value} ({rc.getName()})"
    else:
        text = f"{paho.error_string(rc)} (rc={int(rc)})"
    return PublishError(f"{what}: {text}")


def _apply_credentials(client: paho.Client, cfg: MqttConfig) -> None:
    """User name/password and TLS of ``cfg`` on a paho client (the daemon's and the command client's)."""
    if cfg.username is not None:
        password = None if cfg.password is None else cfg.password.get_secret_value()
        client.username_pw_set(cfg.username, password)
    if cfg.tls.enabled:
        try:
            client.tls_set(
                ca_certs=str(cfg.tls.ca_file),
                certfile=None if cfg.tls.cert_file is None else str(cfg.tls.cert_file),
                keyfile=None if cfg.tls.key_file is None else str(cfg.tls.key_file),
                cert_reqs=ssl.CERT_REQUIRED,
            )
            client.tls_insecure_set(cfg.tls.insecure)
        except (ssl.SSLError, OSError, ValueError) as exc:
            raise PublishError(f"mqtt.tls: cannot use the TLS files: {exc}") from exc


def _publish_properties() -> Properties:
    return Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]


class _RateLimit:
    """Token bucket: ``rate_per_s`` tokens per second, a burst of up to max(1, rate_per_s)."""

    def __init__(self, rate_per_s: float) -> None:
        self.rate = rate_per_s
        self.capacity = max(1.0, rate_per_s)
        self.tokens = self.capacity
        self.stamp = time.monotonic()

    def take(self) -> bool:
        if self.rate <= 0:
            return False
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class MqttPublisher:
    """Publishes one station's verdicts and health to an MQTT broker; the journal is its outbox.

    Lifecycle: ``MqttPublisher(config, station, journal)`` → ``start()`` → publish_* … → ``close()``.

    Ordering rule: a result goes straight to paho ("live") only while connected and when nothing older is
    waiting on disk. Otherwise ("backlog": disconnected, rows of a previous run, ``max_pending``
    unacknowledged results already in paho) it waits in the journal, and the replay thread, once
    connected, sends the journal's unpublished rows oldest first and switches back to live when it has
    caught up. After a disconnect the replay starts again at the oldest unacknowledged result, so what paho
    re-sends by itself and what the replay sends are two ascending runs from the same start: a subscriber
    that keeps the first copy of each ``seq`` sees them in order, whatever their interleaving.
    """

    def __init__(self, config: MqttConfig, station: str, journal: Journal, *, version: str = __version__):
        self.config = config
        self.topics = Topics.for_station(config.topic_prefix, station)
        self.journal = journal
        self.station = station
        self.version = version
        self._mqtt5 = config.protocol == "5"
        self._status = StatusPayload(state="online", station=station, version=version)
        self._product_state: ProductStatePayload | None = None
        self._connected = False
        self._connack_refused = False
        self._stopping = False
        self._started = False
        self._handler: CommandHandler | None = None
        self._commands: queue.Queue[paho.MQTTMessage | None] = queue.Queue(maxsize=config.command_queue_size)
        self._command_thread: threading.Thread | None = None
        self._commands_closed = False  # set by close(): later commands are refused, not queued
        self._commands_lock = threading.Lock()
        self._heatmap_rate = _RateLimit(config.heatmap_max_per_s)
        self._passes_seen = 0
        # Ordering of results handed to paho (caller thread vs replay thread). Held while calling
        # client.publish; never taken inside a paho callback.
        self._order_lock = threading.Lock()
        self._last_appended = 0  # record id of the newest journaled result
        self._replay_after: int | None = 0  # None = live; else records > this id wait on disk
        # Acknowledgement bookkeeping, touched by paho callbacks: never held while calling paho.
        self._ack_lock = threading.Condition(threading.Lock())
        self._mids: dict[int, int] = {}  # mid -> record id (or _UNTRACKED)
        self._early: set[int] = set()  # mids acknowledged before publish() returned
        self._remaining: dict[int, set[int]] = {}  # record id -> its mids not yet acknowledged
        self._refused: set[int] = set()  # record ids the broker refused (stay unpublished)
        self._wake = threading.Event()
        self._resync = threading.Event()  # set on disconnect: re-send from the oldest unacknowledged
        self._replay_thread: threading.Thread | None = None
        self._counts = dict.fromkeys(
            (
                "connects", "connect_failures", "results_journaled", "results_published", "spilled",
                "heatmaps_sent", "heatmaps_skipped", "commands_received", "commands_refused",
                "publish_errors",
            ),
            0,
        )  # fmt: skip
        self._client = self._make_client(station)

    # ---- setup -------------------------------------------------------------------------------------------

    def _make_client(self, station: str) -> paho.Client:
        cfg = self.config
        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=cfg.client_id or f"linewatch-{station}",
            protocol=MQTTProtocolVersion.MQTTv5 if self._mqtt5 else MQTTProtocolVersion.MQTTv311,
            clean_session=None if self._mqtt5 else True,
        )
        # A bug in a callback must not kill paho's network thread (callbacks also catch everything).
        client.suppress_exceptions = True
        _apply_credentials(client, cfg)
        will = StatusPayload(
            state="offline", reason="connection lost (last will)", station=station, version=self.version
        )
        client.will_set(self.topics.status, will.to_json(), qos=cfg.qos, retain=True)
        client.reconnect_delay_set(cfg.reconnect_min_delay_s, cfg.reconnect_max_delay_s)
        client.max_inflight_messages_set(cfg.max_inflight)
        client.max_queued_messages_set(0)  # unbounded in paho; max_pending bounds it here
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        return client

    def start(self) -> None:
        """Connect in the background (``connect_async`` + ``loop_start``) and return at once.

        The broker not being reachable is not an error: the client retries with back-off and results wait
        in the journal. Unpublished rows from a previous run are queued for sending before any new result.
        """
        if self._started:
            raise PublishError("MqttPublisher.start() called twice")
        self._started = True
        backlog = self.journal.unpublished_count()
        with self._order_lock:
            self._last_appended = self.journal.last_record_id()
            # Whatever is unpublished on disk goes first; with nothing there, go straight to live.
            self._replay_after = 0 if backlog else None
        if backlog:
            log.info("%d unpublished results from a previous run are sent first", backlog)
        cfg = self.config
        try:
            self._client.connect_async(cfg.host, cfg.port, keepalive=cfg.keepalive_s)
        except (OSError, ValueError) as exc:
            raise PublishError(f"cannot connect to mqtt://{cfg.host}:{cfg.port}: {exc}") from exc
        rc = self._client.loop_start()
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise publish_error(rc, "cannot start the MQTT network thread")
        self._replay_thread = threading.Thread(
            target=self._replay_loop, name="linewatch-mqtt-replay", daemon=True
        )
        self._replay_thread.start()
        log.info("MQTT publisher for %s started (broker %s:%d, MQTT %s, TLS %s)", self.topics.base,
                 cfg.host, cfg.port, cfg.protocol, "on" if cfg.tls.enabled else "off")  # fmt: skip

    def close(
        self, state: StatusState = "stopped", reason: str | None = None, timeout_s: float = 5.0
    ) -> None:
        """Publish the final status (retained), wait up to ``timeout_s`` for acknowledgements, disconnect.

        Results not acknowledged by then stay unpublished in the journal and are sent after the next start.
        Does not close the journal (its owner does).
        """
        if not self._started or self._stopping:
            return
        deadline = time.monotonic() + timeout_s
        # Commands received so far are carried out and answered while the connection is still up (their
        # answers go out before the final status); one arriving later is refused at once (_on_message).
        with self._commands_lock:
            self._commands_closed = True
            if self._command_thread is not None:
                self._commands.put(None)
        if self._command_thread is not None:
            self._command_thread.join(timeout=max(0.1, deadline - time.monotonic()))
        if self._connected:
            self.flush(timeout_s=max(0.0, deadline - time.monotonic()))
        self._stopping = True
        self._wake.set()
        self._status = self._status.model_copy(update={"state": state, "reason": reason})
        if self._connected:
            info = self._publish_untracked(self.topics.status, self._status.to_json(), self.config.qos, True)
            if info is not None:
                try:
                    info.wait_for_publish(timeout=max(0.1, deadline - time.monotonic()))
                except (RuntimeError, ValueError) as exc:
                    log.warning("final status %r not acknowledged: %s", state, exc)
        self._client.disconnect()
        self._client.loop_stop()
        if self._replay_thread is not None:
            self._replay_thread.join(timeout=5.0)
        self._connected = False
        self.journal.flush()  # commit the last acknowledgements
        log.info("MQTT publisher closed: %s", self.stats().model_dump_json())

    @property
    def connected(self) -> bool:
        return self._connected

    # ---- paho callbacks (network thread: record, enqueue, never block, never raise) ------------------------

    def _on_connect(
        self,
        client: paho.Client,
        userdata: Any,
        flags: paho.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        try:
            if reason_code.is_failure:
                self._connack_refused = True  # reported here; the disconnect that follows is not news
                self._counts["connect_failures"] += 1
                if self._counts["connect_failures"] in (1, 10) or self._counts["connect_failures"] % 100 == 0:
                    log.error("%s", publish_error(reason_code, "the broker refused the connection"))
                return
            self._connected = True
            self._counts["connects"] += 1
            log.info("connected to MQTT broker %s:%d (connection %d)", self.config.host, self.config.port,
                     self._counts["connects"])  # fmt: skip
            # Frigate's pattern: (re-)announce availability on every connect; the will says offline.
            self._publish_untracked(self.topics.status, self._status.to_json(), self.config.qos, True)
            if self._product_state is not None:
                self._publish_untracked(
                    self.topics.product, self._product_state.to_json(), self.config.qos, True
                )
            if self._handler is not None:
                self._subscribe()
            self._wake.set()
        except Exception:
            log.exception("error in MQTT on_connect")

    def _on_connect_fail(self, client: paho.Client, userdata: Any) -> None:
        self._counts["connect_failures"] += 1
        n = self._counts["connect_failures"]
        if n in (1, 10) or n % 100 == 0:
            # paho calls this inside its ``except OSError``: the error says why (refused, TLS verification).
            exc = sys.exc_info()[1]
            why = f": {exc}" if exc is not None else ""
            log.warning("cannot reach MQTT broker %s:%d%s (%d attempts so far); retrying with back-off",
                        self.config.host, self.config.port, why, n)  # fmt: skip

    def _on_disconnect(
        self,
        client: paho.Client,
        userdata: Any,
        flags: paho.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        was = self._connected
        self._connected = False
        self._resync.set()
        self._wake.set()
        refused, self._connack_refused = self._connack_refused, False
        if was and not self._stopping:
            log.warning("disconnected from MQTT broker (%s); results wait in the journal", reason_code)
        elif not refused and not self._stopping:  # closed before any CONNACK: e.g. client cert refused
            self._counts["connect_failures"] += 1
            n = self._counts["connect_failures"]
            if n in (1, 10) or n % 100 == 0:
                log.warning("MQTT broker %s:%d closed the connection before accepting it (%s; %d attempts so "
                            "far): check mqtt.tls (client certificate) and the broker's log",
                            self.config.host, self.config.port, reason_code, n)  # fmt: skip

    def _on_publish(
        self, client: paho.Client, userdata: Any, mid: int, reason_code: ReasonCode, properties: Properties
    ) -> None:
        try:
            if reason_code.is_failure:
                self._counts["publish_errors"] += 1
                n = self._counts["publish_errors"]
                if n in (1, 10) or n % 1000 == 0:
                    log.error("%s", publish_error(reason_code, f"the broker refused message {mid}"))
            self._ack(mid, refused=reason_code.is_failure, early_ok=True)
        except Exception:
            log.exception("error in MQTT on_publish")

    def _ack(self, mid: int, refused: bool, early_ok: bool) -> None:
        """Book the broker's acknowledgement of ``mid``."""
        with self._ack_lock:
            rid = self._mids.pop(mid, None)
            if rid is None:
                if early_ok:  # publish() has not returned yet; _register books it
                    self._early.add(mid)
                return
            if refused and rid in self._remaining:
                self._refused.add(rid)
        if rid == _UNTRACKED:
            with self._ack_lock:
                self._ack_lock.notify_all()
        else:
            self._settle(rid, mid)

    def _settle(self, rid: int, mid: int) -> None:
        """``mid`` of record ``rid`` is done. The record is marked published in the journal once none of
        its messages (result, reject, re-sent copies) is outstanding and none was refused."""
        done = False
        with self._ack_lock:
            outstanding = self._remaining.get(rid)
            if outstanding is not None:  # None: a stale copy of a record already settled
                outstanding.discard(mid)
                if not outstanding:
                    del self._remaining[rid]
                    if rid in self._refused:
                        self._refused.discard(rid)  # stays unpublished: re-sent after restart
                    else:
                        done = True
                        self._counts["results_published"] += 1
            self._ack_lock.notify_all()
        if done:
            self.journal.mark_published([rid])

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        try:
            refusal = None
            with self._commands_lock:
                if self._commands_closed:
                    refusal = "linewatch is stopping: the command was not carried out"
                else:
                    try:
                        self._commands.put_nowait(message)
                    except queue.Full:
                        refusal = (f"busy: {self.config.command_queue_size} commands are already waiting; "
                                   "try again")
            if refusal is not None:  # answered here, on paho's thread: the command thread never sees it
                name, _, request_id = self._receive(message)
                self._answer(name, request_id, None, refusal, message.properties)
        except Exception:
            log.exception("error in MQTT on_message")

    # ---- publishing --------------------------------------------------------------------------------------

    def _register(self, mid: int, rid: int) -> None:
        """Remember what a mid is for; handles acknowledgements that raced ahead of publish()."""
        with self._ack_lock:
            self._mids[mid] = rid
            if rid != _UNTRACKED:
                self._remaining.setdefault(rid, set()).add(mid)
            early = mid in self._early
            self._early.discard(mid)
        if early:  # book it now (a refusal was already counted when it arrived; rare enough to ignore)
            self._ack(mid, refused=False, early_ok=False)

    def _publish_untracked(
        self, topic: str, payload: bytes, qos: int, retain: bool, properties: Properties | None = None
    ) -> paho.MQTTMessageInfo | None:
        try:
            info = self._client.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        except ValueError as exc:
            self._counts["publish_errors"] += 1
            log.error("%s", PublishError(f"cannot publish on {topic}: {exc}"))
            return None
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            self._counts["publish_errors"] += 1
            log.error("%s", publish_error(info.rc, f"cannot publish on {topic}"))
            return None
        self._register(info.mid, _UNTRACKED)
        return info

    def _send(self, rid: int, result: ResultPayload) -> bool:
        """Hand one result (and its reject) to paho. Caller holds ``_order_lock``."""
        messages = [(self.topics.result, result.to_json())]
        if result.is_reject:
            messages.append((self.topics.reject, RejectPayload.from_result(result).to_json()))
        # The placeholder keeps the record open until all its messages are handed over, so a fast
        # acknowledgement of the result cannot settle it before its reject is even sent.
        with self._ack_lock:
            self._remaining.setdefault(rid, set()).add(_SENDING)
        ok = True
        for topic, payload in messages:
            try:
                info = self._client.publish(topic, payload, qos=self.config.qos, retain=False)
                rc = info.rc
            except ValueError as exc:
                rc = MQTTErrorCode.MQTT_ERR_INVAL
                log.error("cannot publish seq %d on %s: %s", result.seq, topic, exc)
            # NO_CONN: paho keeps the message and sends it after reconnecting (and so does the replay).
            if rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
                self._counts["publish_errors"] += 1
                if self._counts["publish_errors"] in (1, 10) or self._counts["publish_errors"] % 1000 == 0:
                    log.error(
                        "%s; results wait in the journal",
                        publish_error(rc, f"cannot publish seq {result.seq}"),
                    )
                ok = False
                break
            self._register(info.mid, rid)
        if not ok:
            with self._ack_lock:
                self._refused.add(rid)  # not marked published; the replay or the next run re-sends it
        self._settle(rid, _SENDING)
        return ok

    def _pending(self) -> int:
        with self._ack_lock:
            return len(self._remaining)

    def publish_result(self, verdict: Verdict, acquired_unix_ns: int | None = None) -> None:
        """Journal the verdict, then publish ``result`` (and ``reject`` if it is not a pass), QoS ``qos``.

        Never blocks on the network and never raises for broker trouble. Order is kept: while disconnected,
        while older unpublished rows are being re-sent (after an outage, or from a previous run) or while
        ``max_pending`` results await acknowledgement, new results are journaled only and follow in order.
        At-least-once: a result may be delivered twice after an outage (keep the first copy of each
        ``seq``); none is lost while the journal's disk is intact. Call from one thread (the pipeline's
        publishing stage), in ``seq`` order.
        """
        self.publish_payload(ResultPayload.from_verdict(verdict, acquired_unix_ns))

    def publish_payload(self, result: ResultPayload) -> None:
        """``publish_result`` for a result already in wire form."""
        with self._order_lock:
            rid = self.journal.append(result)
            self._last_appended = rid
            self._counts["results_journaled"] += 1
            if self._replay_after is None:
                if self._connected and self._pending() < self.config.max_pending and self._send(rid, result):
                    return
                self._enter_backlog(rid)
            self._counts["spilled"] += 1
        self._wake.set()

    def _enter_backlog(self, first_unsent: int) -> None:
        """From here on results wait on disk; the replay re-sends from the oldest unacknowledged one
        (or ``first_unsent``). Caller holds ``_order_lock``."""
        with self._ack_lock:
            oldest = min(self._remaining, default=first_unsent)
        start = min(oldest, first_unsent) - 1
        self._replay_after = start if self._replay_after is None else min(self._replay_after, start)

    def _replay_loop(self) -> None:
        """Send the journal's unpublished rows oldest first until caught up, then switch to live."""
        while not self._stopping:
            self._wake.wait(timeout=0.5)
            self._wake.clear()
            try:
                while not self._stopping and self._replay_once():
                    pass
            except Exception:
                # The journal is unreadable or paho refused: rows stay on disk; try again shortly.
                log.exception("replaying unpublished results failed; retrying")
                time.sleep(1.0)

    def _replay_once(self) -> bool:
        """One batch of the backlog. True when more work is waiting right now."""
        if self._resync.is_set():
            self._resync.clear()
            with self._order_lock:
                self._enter_backlog(self._last_appended + 1)
        if not self._connected:
            return False  # on_connect wakes us
        with self._order_lock:
            if self._replay_after is None:
                return False
            target = self._last_appended
            after = self._replay_after
        room = self.config.max_pending - self._pending()
        if room <= 0:
            with self._ack_lock:
                self._ack_lock.wait(timeout=0.5)
            return True
        self.journal.flush()
        limit = min(_REPLAY_BATCH, room)
        rows = self.journal.unpublished(after_record_id=after, limit=limit)
        with self._order_lock:
            for record in rows:
                if not self._send(record.record_id, record.result):
                    break
                self._replay_after = record.record_id
            else:
                if len(rows) < limit:  # everything committed up to `target` has been handed over
                    self._replay_after = max(self._replay_after or 0, target)
                if self._replay_after is not None and self._replay_after >= self._last_appended:
                    self._replay_after = None  # caught up: new results go straight to paho again
                    return False
                return True
        time.sleep(0.2)  # paho refused (errors are counted and logged); the rows stay on disk
        return False

    def flush(self, timeout_s: float = 5.0) -> bool:
        """Wait until every journaled result has been acknowledged by the broker; True if it happened in
        time. For tests and orderly shutdown."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._order_lock:
                live = self._replay_after is None
            if live:
                with self._ack_lock:
                    while self._remaining and time.monotonic() < deadline:
                        self._ack_lock.wait(timeout=max(0.0, min(0.2, deadline - time.monotonic())))
                    done = not self._remaining
                if done:
                    with self._order_lock:
                        if self._replay_after is None:
                            return True
            else:
                self._wake.set()
                time.sleep(0.02)
        return False

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
        update: dict[str, Any] = {"state": state, "reason": reason, "timestamp_unix_ns": time.time_ns()}
        for key, value in (
            ("product", product),
            ("bundle", bundle),
            ("backend", backend),
            ("camera", camera),
        ):
            if value is not None:
                update[key] = value
        self._status = self._status.model_copy(update=update)
        # While disconnected, on_connect publishes the latest status; queueing stale ones in paho would
        # let them overwrite it after the reconnect.
        if self._connected:
            self._publish_untracked(self.topics.status, self._status.to_json(), self.config.qos, True)
        return self._status

    @property
    def status(self) -> StatusPayload:
        return self._status

    def heatmap_wanted(self, verdict: VerdictKind) -> bool:
        """Ask before rendering: True for every fail and every ``heatmap_every_nth_pass``-th pass, within
        ``heatmap_max_per_s`` and only while connected. A True answer takes a slot of the rate limit,
        so call ``publish_heatmap`` for it. ``not_inspected`` has no heatmap."""
        if verdict is VerdictKind.NOT_INSPECTED:
            return False
        if verdict is VerdictKind.PASS:
            n = self.config.heatmap_every_nth_pass
            self._passes_seen += 1
            if n == 0 or self._passes_seen % n != 0:
                return False
        if self._connected and self._heatmap_rate.take():
            return True
        self._counts["heatmaps_skipped"] += 1
        return False

    def publish_heatmap(self, seq: int, png: bytes) -> None:
        """Publish a PNG on ``heatmap`` (MQTT 5: content type image/png, user property seq) or
        ``heatmap/<seq>`` (MQTT 3.1.1). Not journaled; dropped (counted) while disconnected."""
        if not self._connected:
            self._counts["heatmaps_skipped"] += 1
            return
        if self._mqtt5:
            props = _publish_properties()
            props.ContentType = "image/png"
            props.UserProperty = [("seq", str(seq))]
            info = self._publish_untracked(self.topics.heatmap, png, self.config.heatmap_qos, False, props)
        else:
            info = self._publish_untracked(
                self.topics.heatmap_with_seq(seq), png, self.config.heatmap_qos, False
            )
        if info is not None:
            self._counts["heatmaps_sent"] += 1

    def publish_stats(self, payload: StatsPayload) -> None:
        """Publish ``stats`` (QoS 0, not retained); fills ``payload.publisher`` with this publisher's
        counters when it is None. Skipped while disconnected (stale stats are worthless)."""
        if payload.publisher is None:
            payload = payload.model_copy(update={"publisher": self.stats()})
        if self._connected:
            self._publish_untracked(self.topics.stats, payload.to_json(), 0, False)

    def publish_product_state(self, payload: ProductStatePayload) -> None:
        """Publish ``product`` (retained, QoS ``qos``); re-published after every reconnect."""
        self._product_state = payload
        if self._connected:
            self._publish_untracked(self.topics.product, payload.to_json(), self.config.qos, True)

    # ---- commands ----------------------------------------------------------------------------------------

    def subscribe_commands(self, handler: CommandHandler) -> None:
        """Subscribe product/set, product/prepare and feedback (renewed after every reconnect) and call
        ``handler`` for each valid command on the ``linewatch-mqtt-commands`` thread, one at a time in
        arrival order (a slow handler delays later commands, never the network or the results).

        Oversized, non-JSON, wrongly typed or unknown commands are answered with an error on
        product/response without calling the handler. Call before or after ``start``.
        """
        self._handler = handler
        if self._command_thread is None:
            self._command_thread = threading.Thread(
                target=self._command_loop, name="linewatch-mqtt-commands", daemon=True
            )
            self._command_thread.start()
        if self._connected:
            self._subscribe()

    def _subscribe(self) -> None:
        qos: int = max(1, self.config.qos)
        rc, _mid = self._client.subscribe([(topic, qos) for topic in self.topics.commands])
        if rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            log.error("%s", publish_error(rc, "cannot subscribe to the command topics"))

    def _command_name(self, topic: str) -> CommandName:
        if topic == self.topics.product_set:
            return "set"
        if topic == self.topics.product_prepare:
            return "prepare"
        return "feedback"

    def _command_loop(self) -> None:
        while True:
            message = self._commands.get()
            if message is None:
                return
            try:
                self._handle_command(message)
            except Exception:
                log.exception("error while answering a command on %s", message.topic)

    def _receive(self, message: paho.MQTTMessage) -> tuple[CommandName, bytes, str | None]:
        """Count a command; its name, payload and request_id (never read from inside an oversized payload)."""
        self._counts["commands_received"] += 1
        payload = bytes(message.payload)
        request_id = request_id_of(payload) if len(payload) <= self.config.max_command_bytes else None
        return self._command_name(message.topic), payload, request_id

    def _handle_command(self, message: paho.MQTTMessage) -> None:
        name, payload, request_id = self._receive(message)
        props = message.properties
        try:
            command = parse_command(name, payload, self.config.max_command_bytes)
        except CommandError as exc:
            self._answer(name, request_id, None, str(exc), props)
            return
        product_id = command.product_id if isinstance(command, ProductCommand) else None
        handler = self._handler
        if handler is None:
            self._answer(name, request_id, product_id, "commands are not accepted now", props)
            return
        try:
            handler(command)
        except CommandError as exc:
            self._answer(name, request_id, product_id, str(exc) or type(exc).__name__, props)
            return
        except Exception as exc:
            log.exception("command handler failed on %s", message.topic)
            self._answer(name, request_id, product_id, f"internal error: {type(exc).__name__}: {exc}", props)
            return
        self._answer(name, request_id, product_id, None, props)

    def _answer(
        self,
        name: CommandName,
        request_id: str | None,
        product_id: str | None,
        error: str | None,
        request_props: Properties | None,
    ) -> None:
        if error is not None:
            self._counts["commands_refused"] += 1
        response = CommandResponse(
            request_id=request_id, command=name, product_id=product_id, ok=error is None, error=error
        )
        props = None
        correlation = getattr(request_props, "CorrelationData", None) if self._mqtt5 else None
        if correlation is not None:
            props = _publish_properties()
            props.CorrelationData = correlation
        self._publish_untracked(self.topics.product_response, response.to_json(), max(1, self.config.qos),
                                False, props)  # fmt: skip

    # ---- counters ----------------------------------------------------------------------------------------

    @property
    def commands_waiting(self) -> int:
        """Commands received and queued for the command thread, not yet taken up by it."""
        return self._commands.qsize()

    def stats(self) -> PublisherStats:
        """A snapshot of the publisher's counters."""
        c = self._counts
        with self._order_lock:
            backlog = 0 if self._replay_after is None else max(0, self._last_appended - self._replay_after)
        return PublisherStats(
            connected=self._connected,
            reconnects=max(0, c["connects"] - 1),
            results_journaled=c["results_journaled"],
            results_published=c["results_published"],
            pending=self._pending(),
            backlog=backlog,
            spilled=c["spilled"],
            heatmaps_sent=c["heatmaps_sent"],
            heatmaps_skipped=c["heatmaps_skipped"],
            commands_received=c["commands_received"],
            commands_refused=c["commands_refused"],
            publish_errors=c["publish_errors"],
        )


# ---- the command client (``linewatch product set``) ------------------------------------------------------


def send_command(
    config: MqttConfig,
    station: str,
    name: CommandName,
    command: ProductCommand | FeedbackPayload,
    *,
    timeout_s: float = 60.0,
) -> CommandResponse:
    """Send one command to a running daemon and return its answer: what ``linewatch product set ID`` does.

    Connects with ``config`` (host, port, protocol, credentials, TLS) under a client id of its own,
    subscribes to ``product/response``, publishes the command (QoS 1; on MQTT 5 with CorrelationData) and
    waits for the answer carrying the command's ``request_id`` (one is made up when it has none). Raises
    PublishError when the broker cannot be reached or no answer arrives within ``timeout_s`` (the message
    says which).
    """
    topics = Topics.for_station(config.topic_prefix, station)
    request_id = command.request_id or f"cli-{uuid.uuid4().hex}"
    payload = command.model_copy(update={"request_id": request_id}).to_json()
    mqtt5 = config.protocol == "5"
    client = paho.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"linewatch-cli-{uuid.uuid4().hex[:12]}",
        protocol=MQTTProtocolVersion.MQTTv5 if mqtt5 else MQTTProtocolVersion.MQTTv311,
        clean_session=None if mqtt5 else True,
    )
    client.suppress_exceptions = True
    _apply_credentials(client, config)
    subscribed = threading.Event()
    answered = threading.Event()
    refused: list[str] = []
    answers: list[CommandResponse] = []

    def on_connect(c: paho.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Any) -> None:
        if reason.is_failure:
            refused.append(f"reason code {reason.value} ({reason.getName()})")
            subscribed.set()
            return
        c.subscribe(topics.product_response, qos=1)

    def on_subscribe(c: paho.Client, userdata: Any, mid: int, reasons: Any, props: Any) -> None:
        subscribed.set()

    def on_message(c: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        try:
            answer = CommandResponse.model_validate_json(message.payload)
        except ValueError:
            return  # not an answer this client can read; keep waiting for its own
        if answer.request_id == request_id:
            answers.append(answer)
            answered.set()

    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    where = f"mqtt://{config.host}:{config.port}"
    deadline = time.monotonic() + timeout_s
    try:
        client.connect_async(config.host, config.port, keepalive=max(5, min(config.keepalive_s, 60)))
    except (OSError, ValueError) as exc:
        raise PublishError(f"cannot connect to {where}: {exc}") from exc
    client.loop_start()
    try:
        if not subscribed.wait(max(0.0, deadline - time.monotonic())):
            raise PublishError(f"cannot reach the MQTT broker at {where} within {timeout_s:g} s")
        if refused:
            raise PublishError(f"the broker at {where} refused the connection: {refused[0]}")
        props = None
        if mqtt5:
            props = _publish_properties()
            props.CorrelationData = request_id.encode()
            props.ResponseTopic = topics.product_response
        topic = {"set": topics.product_set, "prepare": topics.product_prepare}.get(name, topics.feedback)
        client.publish(topic, payload, qos=1, properties=props)
        if not answered.wait(max(0.0, deadline - time.monotonic())):
            raise PublishError(
                f"no answer on {topics.product_response} within {timeout_s:g} s: is linewatch running for "
                f"station {station!r} on {where}?"
            )
        return answers[0]
    finally:
        client.disconnect()
        client.loop_stop()
